"""The edge model and the label-cost experiment: real training (tiny), real ONNX Runtime, real Delta tables."""

from __future__ import annotations

import json
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
from sdg.evaluate import Arm, EvaluationPlan, _summarize, run_evaluation
from sdg.settings import Settings, TrainConfig
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
    plan = EvaluationPlan(ks=(5,), seeds=(0, 1), steps=20, synthetic_per_class=5, generators=("procedural",))
    evaluation = run_evaluation(settings, plan, tmp_path / "run", console=Console(quiet=True))
    arms = {(a["arm"], a["k"]): a for a in evaluation["arms"]}
    assert set(arms) == {("real-full", None), ("synthetic-only", None), ("real-few", 5), ("few+pseudo", 5),
                         ("few+synthetic", 5), ("few+synthetic+pseudo", 5)}
    assert arms[("real-full", None)]["real_labels"] == len(SPLITS.train)
    assert arms[("real-few", 5)]["real_labels"] == 50
    # the synthetic samples were filtered by the labeler: its 100 labels count (they include the 50 few ones)
    assert arms[("synthetic-only", None)]["real_labels"] == 100 == arms[("few+synthetic", 5)]["real_labels"]
    assert all(len(a["accuracies"]) == 2 for a in evaluation["arms"])
    assert "labels_per_class_to_match_real_full" in json.loads((tmp_path / "run" / "evaluation.json").read_text())
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| few+pseudo | 5 |" in report and "accuracy_vs_labels.png" in report
    assert "<table>" in (tmp_path / "run" / "report.html").read_text()
    assert (tmp_path / "run" / "accuracy_vs_labels.png").read_bytes().startswith(b"\x89PNG")


def test_headline_compares_at_the_same_label_count_against_the_best_arm_without_a_generator() -> None:
    arms = [Arm("real-full", None, None, [0.993, 0.993], 1347),
            Arm("real-few", 10, None, [0.97, 0.97], 100), Arm("few+pseudo", 10, None, [0.96, 0.96], 100),
            Arm("few+synthetic", 10, "diffusion@a", [0.965, 0.965], 100),  # beats FixMatch, not the plain labels
            Arm("real-few", 20, None, [0.99, 0.99], 200), Arm("few+pseudo", 20, None, [0.98, 0.98], 200),
            Arm("few+synthetic", 20, "diffusion@b", [0.985, 0.985], 1347)]  # an all-labels generator: not at 200
    headline = _summarize(arms, EvaluationPlan(ks=(10, 20)), [], 1.0)["headline"]
    versus = headline["synthetic_vs_no_generator_baseline"]
    assert versus["10"]["no_generator"]["arm"] == "real-few" and not versus["10"]["synthetic_beats_baseline"]
    assert "20" not in versus  # no generator arm costs 200 labels
    assert headline["labels_per_class_to_match_real_full"] == 20 and headline["matching_arm"]["arm"] == "real-few"
