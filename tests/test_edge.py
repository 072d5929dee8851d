"""The edge model and the label-cost experiment: real training (tiny), real ONNX Runtime, real Delta tables."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from rich.console import Console

from models.catalog import GeneratorCatalog
from models.edge import EdgeConfig, accuracy, edge_spec, evaluate_deployed, train_edge
from models.labeler import deploy
from models.reference import load_digits_reference, make_splits
from processors.generate import GenerateConfig, generate, plan_jobs
from schemas.examples import example
from schemas.records import GeneratedSample, SampleDecision
from sdg.evaluate import Arm, EvaluationPlan, headline_sentences, run_evaluation, summarize
from sdg.settings import Settings, TrainConfig
from sdg.stats import paired
from sdg.training import pseudo_labeled, train_edge_model

SPLITS = make_splits(load_digits_reference(), labels_per_class=5)


def test_semi_supervised_training_uses_the_unlabeled_images() -> None:
    few = SPLITS.labeled("few")
    test_x, test_y = SPLITS.test_set()
    plain = train_edge(few.images, few.labels, EdgeConfig(steps=150, threshold=0.8))
    fixmatch = train_edge(few.images, few.labels, EdgeConfig(steps=150, threshold=0.8),
                          unlabeled=SPLITS.unlabeled_images())
    assert accuracy(plain, test_x, test_y) > 0.5  # it learned from 50 labels
    assert not np.allclose(plain.head.weight.detach().numpy(), fixmatch.head.weight.detach().numpy())


def test_generator_training_data_costs_only_the_few_labels_and_is_mostly_right() -> None:
    data, pseudo = pseudo_labeled(SPLITS, steps=150, threshold=0.8)
    few = SPLITS.labeled("few")
    assert data.budget == few.budget and data.budget.n_labels == 50
    assert len(data.images) == 50 + pseudo and 0 < pseudo <= len(SPLITS.unlabeled)
    truth = {image.tobytes(): label for image, label in zip(SPLITS.reference.images, SPLITS.reference.labels)}
    right = np.mean([truth[image.tobytes()] == label for image, label in zip(data.images[50:], data.labels[50:])])
    assert right > 0.8  # the teacher's confident labels, checked against the real ones it never saw


def test_deployed_int8_edge_model_is_checked_against_fp32(tmp_path: Path) -> None:
    train = SPLITS.labeled("train")
    model = train_edge(train.images, train.labels, EdgeConfig(steps=200))
    deployed = deploy(model, tmp_path, edge_spec(), calibration=SPLITS.unlabeled_images()[:128], config={})
    metrics = evaluate_deployed(deployed.fp32, deployed.int8, edge_spec(), *SPLITS.test_set())
    assert metrics.fp32_accuracy > 0.85 and abs(metrics.accuracy_drop_pt) < 5
    assert metrics.checks["size_under_2mb"] and metrics.int8_bytes < metrics.fp32_bytes
    assert metrics.int8_b1_p50_ms > 0 and metrics.int8_b256_images_per_s > 0


def _accepted(state: Path, run_id: str) -> list[SampleDecision]:
    jobs = plan_jobs("procedural", classes=list(range(10)), per_class=6, seed=0, run_id=run_id, job_size=60)
    catalog = GeneratorCatalog(state / "models")
    samples = [r for job in jobs for r in generate(job, generators=catalog, config=GenerateConfig(node_id="n"))
               if isinstance(r, GeneratedSample)]
    template = example(SampleDecision, 0, run_id)
    return [template.model_copy(update={"sample": s, "label": template.label.model_copy(
        update={"label": s.conditioning.class_label})}) for s in samples]


@pytest.mark.integration  # writes the Delta tables
def test_edge_model_from_accepted_samples_is_recorded_with_its_labels(quality_state: Path, run_id: str,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the run report goes to runs/<run-id>/
    settings = Settings(state_dir=quality_state, tables_dir=tmp_path / "tables", run_id=run_id,
                        train=TrainConfig(steps=30))
    trained = train_edge_model(settings, _accepted(quality_state, run_id), console=Console(quiet=True))
    assert (trained.folder / "int8.onnx").exists() and trained.dataset.samples == 60
    assert trained.dataset.per_class == {str(c): 6 for c in range(10)}
    # the labeler's 100 labels and the same 100 few labels again: counted once; procedural costs none
    assert trained.real_labels == 100
    rows = DeltaTable(str(tmp_path / "tables" / "models")).to_pyarrow_table().to_pylist()
    assert [(r["version"], r["real_labels"]) for r in rows] == [(trained.version, 100)]
    assert json.loads(rows[0]["metrics_json"])["checks"]["size_under_2mb"]
    report = json.loads((tmp_path / "runs" / run_id / f"edge-{trained.version}.json").read_text())
    assert report["real_labels"] == 100 and report["dataset"]["samples"] == 60


def test_evaluation_counts_every_label_and_writes_its_report(quality_state: Path, run_id: str,
                                                            tmp_path: Path) -> None:
    settings = Settings(state_dir=quality_state, tables_dir=tmp_path / "tables", run_id=run_id)
    plan = EvaluationPlan(ks=(5,), seeds=(0, 1), steps=20, synthetic_per_class=12, dpt=("gan",), generator_steps=10,
                          generators=("procedural",), extractor_steps=10, extend=False)
    evaluation = run_evaluation(settings, plan, tmp_path / "run", console=Console(quiet=True))
    arms = {(a["arm"], a["k"]): a for a in evaluation["arms"]}
    assert set(arms) == {("real-full", None), ("real-few", 5), ("few+pseudo", 5), ("few+pseudo+gan", 5),
                         ("few+pseudo+procedural", 5), ("few+gan", 5), ("few+procedural", 5)}
    assert arms[("real-full", None)]["real_labels"] == len(SPLITS.train)
    # DPT: the GAN learned from every unlabeled image, labeled by the teacher, and the teacher gated the samples:
    # the arm costs only the 50 labels behind the teacher
    assert {a["real_labels"] for (name, _), a in arms.items() if name != "real-full"} == {50}
    dpt = next(s for s in evaluation["synthetic"] if s["kind"] == "gan")
    gan = json.loads(next((tmp_path / "run" / "models" / "gan").glob("*/config.json")).read_text())
    assert [b["n_labels"] for b in gan["label_budgets"]] == [50] and dpt["real_labels"] == 50
    assert all(len(a["accuracies"]) == 2 and a["ci95"][0] <= a["mean"] <= a["ci95"][1] for a in evaluation["arms"])
    # two seeds: no claim either way
    assert {c["verdict"] for c in evaluation["comparisons"]} == {"too few seeds"}
    assert {(c["arm"], c["baseline"]) for c in evaluation["comparisons"]} == {
        ("few+pseudo+gan", "few+pseudo"), ("few+pseudo+procedural", "few+pseudo"), ("few+gan", "real-few"),
        ("few+procedural", "real-few")}
    saved = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert set(saved["labels_per_class_to_match_real_full"]) == {"with_generator", "without_generator"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| few+pseudo | 5 |" in report and "accuracy_vs_labels.png" in report and "too few seeds" in report
    assert "<table>" in (tmp_path / "run" / "report.html").read_text()
    assert (tmp_path / "run" / "accuracy_vs_labels.png").read_bytes().startswith(b"\x89PNG")


def test_claims_need_an_interval_that_excludes_zero() -> None:
    baseline = [0.950, 0.962, 0.941, 0.958, 0.947]
    noisy = [0.957, 0.955, 0.950, 0.951, 0.949]  # a higher mean, inside the seeds' noise
    assert statistics.fmean(noisy) > statistics.fmean(baseline)
    assert paired(noisy, baseline).verdict == "within noise"
    assert "within noise" in paired(noisy, baseline).sentence("few+pseudo+diffusion", "few+pseudo")
    better = [b + 0.01 + 0.002 * i for i, b in enumerate(baseline)]
    assert paired(better, baseline).verdict == "beats" and paired(baseline, better).verdict == "worse than"
    assert paired(better[:3], baseline[:3]).verdict == "too few seeds"
    with pytest.raises(ValueError):
        paired(better, baseline[:4])
    # and the report says so
    arms = [Arm("real-full", None, None, [0.993] * 5, 1347), Arm("few+pseudo", 10, None, baseline, 100),
            Arm("few+pseudo+diffusion", 10, "diffusion@a", noisy, 100),
            Arm("few+pseudo+gan", 10, "gan@b", better, 100)]
    sentences = "\n".join(headline_sentences(summarize(arms, EvaluationPlan(ks=(10,)), [], 1.0)))
    assert "few+pseudo+diffusion and few+pseudo are within noise" in sentences
    assert "few+pseudo+gan beats few+pseudo" in sentences


def test_labels_to_match_is_the_fewest_labels_within_half_a_point_of_real_full() -> None:
    full = [0.993] * 5
    arms = [Arm("real-full", None, None, full, 1347),
            *(Arm("real-few", k, None, [acc] * 5, 10 * k) for k, acc in ((5, 0.9), (10, 0.95), (20, 0.97), (80, 0.99))),
            *(Arm("few+pseudo", k, None, [acc] * 5, 10 * k) for k, acc in ((5, 0.96), (10, 0.985), (20, 0.99))),
            *(Arm("few+pseudo+diffusion", k, f"diffusion@{k}", [acc] * 5, 10 * k) for k, acc in ((5, 0.98), (10, 0.99)))]
    headline = summarize(arms, EvaluationPlan(ks=(5, 10, 20)), [], 1.0)["headline"]
    matches = {f: m and m["labels_per_class"] for f, m in headline["labels_per_class_to_match_real_full"].items()}
    assert matches == {"real-few": 80, "few+pseudo": 20, "few+pseudo+diffusion": 10}
    assert headline["best_with_generator"]["arm"] == "few+pseudo+diffusion"
    assert headline["best_with_generator"]["label_saving_factor"] == pytest.approx(13.47)
    assert headline["best_without_generator"]["labels_per_class"] == 20
    assert headline["generator_needs_fewer_labels"]["against"] == "few+pseudo"


def test_an_arm_with_every_train_label_leaves_nothing_unlabeled_and_still_runs(tmp_path: Path) -> None:
    from PIL import Image

    from models.reference import DataConfig

    reference = load_digits_reference()
    for c in range(10):  # 16 images per class: 12 train, 4 test; k = 12 labels every train image
        (tmp_path / "data" / str(c)).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(reference.labels == c)[:16]):
            Image.fromarray((reference.images[index] * 255).astype(np.uint8)).save(tmp_path / "data" / str(c) / f"{i}.png")
    settings = Settings(state_dir=tmp_path / "state", tables_dir=tmp_path / "tables",
                        data=DataConfig(source=str(tmp_path / "data")))
    plan = EvaluationPlan(ks=(12,), seeds=(0,), steps=5, synthetic_per_class=2, dpt=("gan",), generator_steps=2,
                          extractor_steps=2, extend=False)
    evaluation = run_evaluation(settings, plan, tmp_path / "run", console=Console(quiet=True))
    assert {(a["arm"], a["real_labels"]) for a in evaluation["arms"]} == {
        ("real-full", 120), ("real-few", 120), ("few+pseudo", 120), ("few+pseudo+gan", 120), ("few+gan", 120)}
    assert evaluation["complete"]
