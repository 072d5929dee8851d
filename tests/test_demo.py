"""`sdg demo` (scaled down) on the session broker: every topic gets its records, bad ones reach the DLQ."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from infra.broker import BrokerConfig
from sdg.demo import POISON, DemoPlan, run_demo
from sdg.settings import Settings
from streams.catalog import CATALOG
from tests.conftest import broker_config

pytestmark = pytest.mark.integration  # the broker, Delta tables or Spark


def test_demo_reports_what_went_where(run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On its own embedded broker, secured as by default: every processor runs as its own principal."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(broker=broker_config(security=BrokerConfig().security), run_id=run_id,
                        state_dir=tmp_path / "state")
    assert settings.embedded and settings.broker.security == "sasl_ssl"
    out = io.StringIO()
    tiny = DemoPlan(per_class=2, gan_steps=20, diffusion_steps=5, extractor_steps=30, labeler_steps=30, pump_failure_at_s=5, edge_steps=20, eval_seeds=(0,))
    result = run_demo(settings, records_per_topic=20, console=Console(file=out, width=200), plan=tiny)
    growth = result.growth
    bad = len(POISON) + 1  # plus one record of the wrong type
    for name in CATALOG:
        expected = 20 + (bad if name in ("sdg.samples.raw", "sdg.dlq") else 0)
        assert growth[name] == expected, name
    assert growth["sdg.replay.demo"] == 20
    text = out.getvalue()
    assert "what went where" in text and "20 relayed to sdg.replay.demo, 3 to sdg.dlq" in text
    assert text.count("dead letter from sdg.samples.raw") == bad
    assert result.generated == {"gan": 20, "diffusion": 20, "procedural": 20, "procedural/scene": 10}
    assert "samples arrived" in text and set(result.grids) == {"gan", "diffusion", "procedural"}
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in result.grids.values())
    # every sample was labeled and gated, once
    assert {g: sum(c.values()) for g, c in result.decisions.items()} == result.generated
    assert "quality gate decisions" in text and "latest sliding window per generator" in text
    assert {w.generator for w in result.windows} == {"gan", "diffusion", "procedural"}
    assert all(w.gate_state == "warming_up" for w in result.windows)  # 20 samples each: below min_window
    # and recorded in the Delta tables, with chains that verify
    assert f"generated {sum(result.generated.values())}" in text and "sdg verify: lineage version" in text
    assert "verifies" in text
    # the plant and the thermal processor ran beside the generators: the scripted pump failure was seen
    assert f"thermal: {settings.worker.node_id} through a pump failure" in text
    assert "critical flow_loss" in text and (tmp_path / "runs" / run_id / "thermal.png").exists()
    # every planned sample is in the lineage table exactly once with a decision
    from sdg.history import query

    decided = query(settings.delta_tables(), "SELECT sample_id, count(*) AS n FROM lineage WHERE run_id = ? AND "
                    "stage IN ('accepted', 'review', 'rejected') GROUP BY sample_id", params=[run_id]).to_pylist()
    assert len(decided) == sum(result.generated.values()) and {r["n"] for r in decided} == {1}
    # the proof: an edge model from the accepted samples, the label-cost experiment and its report
    assert "label cost on the real test split" in text and "labels_per_class_to_match_real_full" in result.evaluation
    assert result.report is not None and result.report.exists() and result.report.with_suffix(".html").exists()
    assert "real data: sklearn-digits, 1797 images of 8×8×1, 10 classes" in text
    import json

    trained = json.loads((tmp_path / "runs" / run_id / "training.json").read_text())
    assert {"extractor", "labeler", "gan", "diffusion"} <= set(trained) and min(trained.values()) > 0  # edge: if any
    report = result.report.read_text()
    assert "## accuracy against real labels" in report and "## thermal: the demo's pump failure" in report
    assert {a["arm"] for a in result.evaluation["arms"]} >= {"real-full", "real-few", "few+pseudo"}
    assert "best arm without a generator" in text  # the headline, in words that claim only what the seeds allow



def test_demo_detection_labels_gates_records_and_exports_scenes(run_id: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`sdg demo --task detection` (scaled down, plaintext): procedural scenes labeled by a detector, gated,
    recorded with their boxes and masks, edge detectors scored with COCO mAP on real scenes, pictures drawn."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(broker=broker_config(), run_id=run_id, state_dir=tmp_path / "state", task="detection")
    out = io.StringIO()
    tiny = DemoPlan(per_class=4, extractor_steps=30, labeler_steps=30, pump_failure_at_s=5, detector_steps=150)
    result = run_demo(settings, records_per_topic=5, console=Console(file=out, width=200), plan=tiny)
    text = out.getvalue()
    assert result.generated == {"procedural/scene": 20}
    assert {g: sum(c.values()) for g, c in result.decisions.items()} == result.generated
    assert "detector labeler: 30 real labels" in text and "procedural scenes with every object's box" in text
    run = tmp_path / "runs" / run_id
    for picture in ("samples_scenes.png", "detection.png"):
        assert (run / picture).read_bytes().startswith(b"\x89PNG")
    assert set(result.evaluation["arms"]) >= {"real-few"} and "edge detectors on 200 real test scenes" in text
    assert all(0 <= a["map50"] <= 1 for a in result.evaluation["arms"].values())
    assert result.report is not None and "![real test scenes, detected](detection.png)" in result.report.read_text()
    # the scenes' boxes and masks are in the samples table, and the labels the detector gave are recorded
    import json

    from sdg.history import query

    rows = query(settings.delta_tables(), "SELECT objects_json FROM samples WHERE run_id = ?",
                 params=[run_id]).to_pylist()
    objects = [o for r in rows for o in json.loads(r["objects_json"])]
    assert len(rows) == 20 and objects and all("segmentation" in o for o in objects)
    labels = query(settings.delta_tables(), "SELECT DISTINCT labeler_version FROM lineage WHERE run_id = ? AND "
                   "stage = 'labeled'", params=[run_id]).to_pylist()
    assert labels == [{"labeler_version": settings.labeler().model.version}]  # the task's labeler: the detector
    assert settings.labeler().stride is not None
