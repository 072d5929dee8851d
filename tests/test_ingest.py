"""``sdg ingest``: real unlabeled images through the real broker, the labeler, the quality gate and Delta lineage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from models.reference import load_digits_reference, make_splits
from processors.quality import QualityConfig
from sdg.evaluate import EvaluationPlan, run_evaluation
from sdg.history import query, select_samples
from sdg.ingest import read_source, real_samples
from sdg.settings import Settings
from sdg.workers import processor
from streams import admin
from streams.catalog import LINEAGE_TOPICS
from streams.config import KafkaConfig, RunnerConfig
from tests.conftest import REPO, sdg_command


def _folder(root: Path, n: int) -> dict[str, bytes]:
    """``n`` real test-split digits as PNG and JPEG files, some in a subfolder, and one file that is no image."""
    splits = make_splits(load_digits_reference())
    images, _ = splits.test_set()
    files = {}
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.round(images[i] * 255).astype(np.uint8)).save(buffer, format="JPEG" if i % 5 == 0 else "PNG")
        name = f"{'cam-b/' if i % 2 else ''}{i:03d}.{'jpg' if i % 5 == 0 else 'png'}"
        files[name] = buffer.getvalue()
    files["cam-b/broken.png"] = b"\x89PNG but cut short"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_ingested_images_are_samples_without_a_class_with_their_provenance(tmp_path: Path) -> None:
    files = _folder(tmp_path, 6)
    found = real_samples(read_source(tmp_path), size=8, channels=1, run_id="r", node_id="n")
    assert [u.split(":")[0] for u in found.unreadable] == ["cam-b/broken.png"]
    assert len(found.samples) == 6 and {s.generator for s in found.samples} == {"real"}
    assert all(s.conditioning.class_label is None for s in found.samples)
    by_path = {s.conditioning.params["path"]: s for s in found.samples}
    assert by_path["000.jpg"].conditioning.params["original_sha256"] == hashlib.sha256(files["000.jpg"]).hexdigest()
    again = real_samples(read_source(tmp_path), size=8, channels=1, run_id="other", node_id="n")
    assert [s.sample_id for s in again.samples] == [s.sample_id for s in found.samples]  # the same image, the same id


def test_sdg_ingest_puts_every_image_through_label_quality_and_lineage_once(kafka: KafkaConfig, run_id: str,
                                                                          quality_state: Path, tmp_path: Path) -> None:
    files = _folder(tmp_path / "unlabeled", 24)
    settings = Settings(kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers), state_dir=quality_state,
                        tables_dir=tmp_path / "tables", run_id=run_id, runner=RunnerConfig(batch_size=16),
                        quality=QualityConfig(window_size=10, min_window=5, max_window_s=0.5))
    groups = {"label": ["sdg.samples.raw"], "quality": ["sdg.samples.labeled"], "lineage": list(LINEAGE_TOPICS)}
    for name, topics in groups.items():
        admin.start_group_at_end(kafka, f"{name}-{run_id}", topics)
    env = {**os.environ, "SDG_STATE_DIR": str(quality_state), "SDG_RUN_ID": run_id,
           "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    done = subprocess.run(sdg_command("ingest", str(tmp_path / "unlabeled")), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ingested 24 real images" in done.stdout and "1 unreadable" in done.stdout
    for name in groups:  # each stage in turn, until it has nothing left to do
        with processor(name, settings, group=f"{name}-{run_id}") as runner:
            runner.run(max_idle_s=3)

    tables = settings.delta_tables()
    rows = query(tables, "SELECT sample_id, stage, generator, class_label FROM lineage WHERE run_id = ?",
                 params=[run_id]).to_pylist()
    samples = query(tables, "SELECT * FROM samples WHERE run_id = ?", params=[run_id]).to_pylist()
    assert len(samples) == 24 and {r["generator"] for r in rows} == {"real"} and {r["class_label"] for r in rows} == {-1}
    stages = Counter((r["sample_id"], r["stage"]) for r in rows)
    assert set(stages.values()) == {1}  # exactly once per stage
    for sample in samples:
        mine = {stage for (sample_id, stage) in stages if sample_id == sample["sample_id"]}
        assert mine - {"accepted", "review", "rejected"} == {"generated", "labeled", "scored"}, mine
        assert len(mine & {"accepted", "review", "rejected"}) == 1, mine
        params = json.loads(sample["params_json"])
        assert params["source"] == str((tmp_path / "unlabeled").resolve())
        assert params["original_sha256"] == hashlib.sha256(files[params["path"]]).hexdigest()
    # the gate decided on them as on any sample, and exports carry the labeler's label as their class
    decided = Counter(stage for (_, stage) in stages if stage in ("accepted", "review", "rejected"))
    assert decided["accepted"] > 0, decided
    accepted = select_samples(tables, run=run_id, decision="accepted")
    assert len(accepted) == decided["accepted"] and all(0 <= r["class_label"] <= 9 for r in accepted)
    # and the label-cost experiment learns from the accepted stream; the labeler's 100 labels are its cost
    plan = EvaluationPlan(ks=(10,), seeds=(0,), steps=10, dpt=(), stream_run=run_id, extractor_steps=10, extend=False)
    evaluation = run_evaluation(settings, plan, tmp_path / "report", console=Console(quiet=True))
    (stream,) = [s for s in evaluation["synthetic"] if s["kind"] == "stream"]
    assert stream["accepted"] == decided["accepted"] and stream["real_labels"] == 100
    assert {(a["arm"], a["real_labels"]) for a in evaluation["arms"] if a["k"] == 10} == {
        ("real-few", 100), ("few+pseudo", 100), ("few+pseudo+stream", 100)}
