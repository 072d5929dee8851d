"""The ``sdg train-*`` commands: the quality extractor and the labeler, the generators, the edge model.

Each trains on the configured real data (``settings.splits()``, label accounting included), with progress bars,
and saves into the one model registry (``settings.registry()``): generator checkpoints, and sealed fp32 and
INT8 ONNX folders for the labeler, the extractor and the edge model. A user's own ONNX model replaces the
labeler or the extractor through ``SDG_QUALITY__LABELER`` / ``SDG_QUALITY__EXTRACTOR``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.catalog import TRAINABLE, trainer
from models.edge import EdgeMetrics
from models.generator import GeneratorError
from models.image import sample_grid
from models.reference import LabelBudget, LabeledData, ReferenceSet, Splits, distinct_labels, human_budget
from models.runtime import OnnxModel, OnnxSpec
from schemas.records import SampleDecision
from sdg.settings import Settings


@dataclass(frozen=True)
class Trained:
    version: str
    labels_used: int
    grid: Path


def pseudo_labeled(splits: Splits, *, threshold: float = 0.9, steps: int = 1500,
                   teacher: Callable[[np.ndarray], np.ndarray] | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[LabeledData, int]:
    """The few labels plus unlabeled train images labeled by a teacher trained on those few labels.

    The teacher (unless one is given: images in [0, 1] → class probabilities, e.g. the labeler, trained on the
    same few labels) is the edge model trained semi-supervised (FixMatch) on the few labels and the unlabeled
    images: ~96% right on the unlabeled images at 10 labels per class, where a logistic regression on
    pixels is ~89% right. Its confident (≥ ``threshold``) labels are kept. The budget stays the few
    labels' budget: pseudo-labels cost no real labels.
    """
    from models.edge import EdgeConfig, probabilities, train_edge

    few, unlabeled = splits.labeled("few"), splits.unlabeled_images()
    if teacher is None:
        config = EdgeConfig(steps=steps, seed=splits.seed, num_classes=splits.reference.num_classes)
        model = train_edge(few.images, few.labels, config, unlabeled=unlabeled, progress=progress)
        teacher = partial(probabilities, model)
    p = teacher(unlabeled)
    keep = p.max(axis=1) >= threshold
    images = np.concatenate([few.images, unlabeled[keep]])
    labels = np.concatenate([few.labels, p[keep].argmax(axis=1)])
    return LabeledData(images, labels, few.budget), int(keep.sum())


def train_generator(settings: Settings, kind: str, *, labels_per_class: int | None, pseudo_labels: bool,
                    steps: int | None, seed: int, console: Console) -> Trained:
    if kind not in TRAINABLE:
        raise GeneratorError(f"trainable generators: {', '.join(TRAINABLE)} (procedural needs no training), "
                             f"not {kind!r}")
    if pseudo_labels and labels_per_class is None:
        raise GeneratorError("--pseudo-labels needs --labels-per-class")
    splits = settings.splits(labels_per_class=labels_per_class or 10, seed=seed)
    reference = splits.reference
    pseudo = 0
    if labels_per_class is None:
        data = splits.labeled("train")
    elif pseudo_labels:
        data, pseudo = pseudo_labeled(splits)
    else:
        data = splits.labeled("few")
    train, config = trainer(kind, reference.image_size, reference.channels, reference.num_classes,
                            dark_ink=reference.dark_ink, seed=seed,
                            **({} if steps is None else {"steps": steps}))
    columns = (TextColumn(f"training {kind}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(kind, total=config.steps)
        model = train(data, config, progress=lambda n: progress.advance(task, n))
    labels = [c for c in range(reference.num_classes) for _ in range(10)]
    scenes = {"mode": "scene"} if getattr(model, "draws_scenes", False) else {}
    grid = sample_grid(model(list(range(len(labels))), labels, **scenes).images, labels)
    checkpoint = model.checkpoint_config()
    checkpoint["training"] = {"images": int(len(data.images)), "pseudo_labeled": pseudo,
                              "reference_splits": splits.hashes}
    version = settings.registry().save(kind, model.weights(), checkpoint, grid)
    return Trained(version, data.budget.n_labels, settings.models_dir / kind / version / "samples.png")


@dataclass(frozen=True)
class TrainingSet:
    """What an edge model was trained on: the accepted single-object samples, by class and by generator."""

    samples: int
    sample_ids_sha256: str
    per_class: dict[str, int]
    per_generator: dict[str, int]


@dataclass(frozen=True)
class EdgeTrained:
    version: str
    folder: Path
    metrics: EdgeMetrics
    dataset: TrainingSet
    real_labels: int


def accepted_dataset(records: Sequence[SampleDecision], channels: int = 1) -> tuple[np.ndarray, np.ndarray, TrainingSet]:
    """Images (N, H, W[, C]) in [0, 1] and the pipeline's own labels of accepted single-object samples, and what
    they are."""
    import hashlib
    from collections import Counter

    from models.image import sample_images

    kept = [r for r in records if not r.sample.objects]
    images = sample_images([r.sample for r in kept], channels).astype(np.float32) / 255.0
    labels = np.array([r.label.label for r in kept])
    ids = sorted(r.sample.sample_id for r in kept)
    dataset = TrainingSet(len(kept), hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                          {str(k): v for k, v in sorted(Counter(labels.tolist()).items())},
                          dict(Counter(f"{r.sample.generator}@{r.sample.generator_version}" for r in kept)))
    return images, labels, dataset


def train_edge_model(settings: Settings, records: Sequence[SampleDecision], *, console: Console) -> EdgeTrained:
    """Train the edge classifier on accepted samples (plus the few real labels and, FixMatch-style, the unlabeled
    real images), deploy fp32 and INT8 ONNX, check it on the real test split and record it in the models table."""
    import json
    import time

    from models.edge import EdgeConfig, edge_spec, evaluate_deployed, train_edge
    from models.labeler import Deployed, deploy
    from models.runtime import verify_sealed
    from schemas.tables import MODELS

    steps, real_few, pseudo = settings.train.steps, settings.train.real_few, settings.train.pseudo
    splits = settings.splits()
    reference = splits.reference
    images, labels, dataset = accepted_dataset(records, reference.channels)
    few, unlabeled = splits.labeled("few"), splits.unlabeled_images()
    registry = settings.registry()
    budgets = stream_budgets(settings, dataset.per_generator,
                             [r.sample.sample_id for r in records if r.label_source == "human"])
    if real_few:
        budgets.append(few.budget)
    config = EdgeConfig(steps=steps, num_classes=reference.num_classes)
    spec = edge_spec(reference.image_size, reference.channels, reference.num_classes)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task(f"edge model on {len(labels)} accepted samples", total=steps)
        model = train_edge(few.images if real_few else few.images[:0], few.labels if real_few else few.labels[:0], config,
                           synthetic=(images, labels), unlabeled=unlabeled if pseudo else None,
                           progress=lambda n: progress.advance(task, n))
    dataset_json, budgets_json = asdict(dataset), [b.as_dict() for b in budgets]
    staging = registry.staging("edge")
    deploy(model, staging, spec, calibration=unlabeled,
           config={"kind": "edge", "config": config.__dict__, "dataset": dataset_json, "label_budgets": budgets_json})
    folder = registry.publish(staging, "edge")  # named by its content hash, checked on every load
    version = verify_sealed(folder)
    deployed = Deployed(folder, folder / "fp32.onnx", folder / "int8.onnx")
    test_x, test_y = splits.test_set()
    metrics = evaluate_deployed(deployed.fp32, deployed.int8, spec, test_x, test_y)
    real_labels = distinct_labels(budgets)
    metrics_json = metrics.as_dict()
    (folder / "metrics.json").write_text(json.dumps(metrics_json, indent=2))
    report = Path("runs") / settings.run_id / f"edge-{version}.json"  # the run's record of this model
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"version": version, "path": str(folder), "dataset": dataset_json, "metrics": metrics_json,
                                  "real_labels": real_labels, "label_budgets": [
                                      {k: v for k, v in b.items() if k != "indices"} for b in budgets_json]}, indent=2))
    tables = settings.delta_tables()
    samples = tables.open("samples")
    now = int(time.time() * 1000)
    row = {"run_id": settings.run_id, "date": time.strftime("%Y-%m-%d", time.gmtime(now / 1000)), "created_ms": now,
           "kind": "edge", "version": version, "path": str(folder), "dataset_json": json.dumps(dataset_json),
           "samples_version": samples.version() if samples is not None else None,
           "metrics_json": json.dumps(metrics_json), "label_budgets_json": json.dumps(budgets_json),
           "real_labels": real_labels}
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(tables.path("models"), pa.Table.from_pylist([row], schema=MODELS), mode="append",
                    partition_by=["run_id", "date"])
    return EdgeTrained(version, folder, metrics, dataset, real_labels)


def extractor_spec(image_size: int = 8, channels: int = 1) -> OnnxSpec:
    return OnnxSpec(name="sdg-contrastive", kind="features", output="features", image_size=image_size,
                    channels=channels)


@dataclass(frozen=True)
class QualityModels:
    labeler: Path
    extractor: Path
    labels_used: int
    test_accuracy: dict[str, float]
    train_s: dict[str, float]


def train_quality_models(settings: Settings, *, splits: Splits | None = None, extractor_steps: int = 800,
                         labeler_steps: int = 1500, answers: LabeledData | None = None,
                         console: Console) -> QualityModels:
    """Train the contrastive extractor (unlabeled train images) and the labeler (the few labels, plus ``answers``:
    people's labels from the review queue, and the unlabeled train images FixMatch-style); deploy both."""
    import numpy as np
    import torch

    from models.features import ExtractorConfig, as_tensor, extractor_config, train_extractor
    from models.labeler import LabelerConfig, deploy, labeler_config, labeler_spec, train_labeler

    splits = splits or settings.splits()
    size, channels = splits.reference.image_size, splits.reference.channels
    unlabeled = splits.reference.images[splits.train]  # images only: no label of the train split is read
    registry = settings.registry()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bars:
        def bar(name: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(name, total=total)
            return lambda n: bars.advance(task, n)

        started = time.monotonic()
        e_config = ExtractorConfig(steps=extractor_steps)
        extractor = train_extractor(unlabeled, e_config, progress=bar("extractor (contrastive, no labels)",
                                                                      extractor_steps))
        calibration = splits.unlabeled_images()[:512]
        staging = registry.staging("extractor")
        deploy(extractor.net, staging, extractor_spec(size, channels), calibration=calibration,
               config=extractor_config(e_config, splits.hashes["train"]))
        extractor_dir = registry.publish(staging, "extractor")
        train_s = {"extractor": round(time.monotonic() - started, 1)}
        started = time.monotonic()

        few = splits.labeled("few")
        extra = [answers.budget] if answers is not None and len(answers.labels) else []
        labels_used = few.budget.n_labels + sum(b.n_labels for b in extra)
        if extra:
            assert answers is not None
            few = LabeledData(np.concatenate([few.images, answers.images]), np.concatenate([few.labels, answers.labels]),
                              few.budget)
        l_config = replace(LabelerConfig(), steps=labeler_steps, num_classes=splits.reference.num_classes)
        labeler = train_labeler(few, l_config, init=extractor, unlabeled=splits.unlabeled_images(), progress=bar(
            f"labeler ({labels_used} labels, unlabeled images)", labeler_steps))
        train_s["labeler"] = round(time.monotonic() - started, 1)
    staging = registry.staging("labeler")
    deployed = deploy(labeler, staging, labeler_spec(l_config, size, channels), calibration=calibration,
                      config=labeler_config(l_config, few, extractor_dir.name, *extra))
    images, labels = splits.test_set()
    u8 = np.floor(images * 255 + 0.5).astype(np.uint8)
    accuracy = {p.stem: float((OnnxModel(p).run(u8).argmax(1) == labels).mean()) for p in (deployed.fp32, deployed.int8)}
    with torch.no_grad():
        accuracy["torch"] = float((labeler(as_tensor(images)).argmax(1).numpy() == labels).mean())
    labeler_dir = registry.publish(staging, "labeler")
    return QualityModels(labeler_dir, extractor_dir, labels_used, accuracy, train_s)


@dataclass(frozen=True)
class DetectorModel:
    folder: Path
    labels_used: int
    test_map: dict[str, dict[str, float]]  # fp32 / int8 → COCO mAP on real test scenes
    train_s: float


def train_detector_model(settings: Settings, *, labels_per_class: int = 3, steps: int = 1500,
                         test_scenes: int = 200, console: Console) -> DetectorModel:
    """The detection task's labeler: a detector trained on scenes composed from ``labels_per_class`` real
    labelled objects per class, procedurally rendered objects composed the same way, and whole procedural
    scenes (no further labels); deployed fp32 and INT8 to the registry (kind ``detector``) and scored with COCO
    mAP on real test scenes composed from held-out images."""
    from models.detector import DetectorConfig, composer, decode, detector_spec, procedural, real_test, train_detector
    from models.labeler import deploy
    from models.render import RenderConfig
    from models.scenes import coco_map

    splits = settings.splits(labels_per_class=labels_per_class)
    r = splits.reference
    config = DetectorConfig.for_data(r.image_size, r.channels, r.num_classes, dark_ink=r.dark_ink, steps=steps)
    objects, scenes = procedural(RenderConfig(image_size=r.image_size, channels=r.channels, dark_ink=r.dark_ink,
                                              scene_size=config.scene_size), config)
    few = splits.labeled("few")
    real = composer(few.images, few.labels, config)
    started = time.monotonic()
    with Progress(console=console) as progress:
        model = train_detector([real, objects, scenes], config,
                               progress=progress, description=f"detector ({few.budget.n_labels} real labels, "
                                                              "procedural objects and scenes)")
    train_s = round(time.monotonic() - started, 1)
    registry = settings.registry()
    staging = registry.staging("detector")
    deployed = deploy(model, staging, detector_spec(config), calibration=real(256, 10**6).images / 255.0, config={
        "kind": "detector", "config": asdict(config), "label_budgets": [few.budget.as_dict()],
        "trained_on": ["few real objects, composed", "procedural objects, composed", "procedural scenes"]})
    test, truth = real_test(*splits.test_set(), config, count=test_scenes)
    scores = {p.stem: coco_map(truth, decode(OnnxModel(p).run(test.images), stride=config.stride,
                                             num_classes=r.num_classes)) for p in (deployed.fp32, deployed.int8)}
    return DetectorModel(registry.publish(staging, "detector"), few.budget.n_labels, scores, train_s)


def stream_budgets(settings: Settings, generators: Iterable[str], answered: Sequence[str]) -> list[LabelBudget]:
    """The real labels behind samples the pipeline accepted: its labeler's, those of each trained generator
    (``kind@version``) among them, and one per sample a person ``answered`` in the review queue."""
    registry = settings.registry()
    budgets = labeler_budgets(settings)
    for name in generators:
        kind, version = name.split("@")
        if kind in TRAINABLE:
            budgets += [LabelBudget.from_dict(b) for b in registry.load_files(kind, version)[2].get("label_budgets", [])]
    if answered:
        budgets.append(human_budget(answered))
    return budgets


def decided_samples(settings: Settings, reference: ReferenceSet, where: str, params: Sequence[object] = ()) -> tuple[
        list[dict[str, object]], np.ndarray, np.ndarray]:
    """Single-object samples whose last decision ``d`` (``sdg.history.LAST_DECISION``) meets ``where``: their rows,
    and their images at the reference's size and channels in [0, 1] with the label they were decided with."""
    from models.image import sample_image
    from models.runtime import fit_image
    from sdg.history import LAST_DECISION, query, to_sample

    tables = settings.delta_tables()
    if tables.open("lineage") is None or tables.open("samples") is None:
        return [], reference.images[:0], reference.labels[:0]
    rows = [r for r in query(tables, f"SELECT s.*, d.label AS answer, d.stage AS decided_by FROM samples s JOIN "
                                     f"{LAST_DECISION} d ON d.sample_id = s.sample_id WHERE {where} ORDER BY s.sample_id",
                             params=list(params)).to_pylist() if not json.loads(r["objects_json"] or "[]")]
    if not rows:
        return [], reference.images[:0], reference.labels[:0]
    size, channels = reference.image_size, reference.channels
    images = np.stack([fit_image(sample_image(to_sample(r)), size, channels) for r in rows]).astype(np.float32) / 255.0
    return rows, images, np.array([r["answer"] for r in rows])


def human_answers(settings: Settings, reference: ReferenceSet) -> LabeledData | None:
    """The samples people labeled in the review queue (their last decision: accepted by a person), as labeled
    images of the reference's size and channels, with their label budget; None when there are none."""
    rows, images, labels = decided_samples(settings, reference, "d.stage = 'human' AND d.decision = 'accepted'")
    return LabeledData(images, labels, human_budget([str(r["sample_id"]) for r in rows])) if rows else None


def labeler_budgets(settings: Settings) -> list[LabelBudget]:
    """The real labels behind the labeler the pipeline uses (its ``config.json``), for label accounting."""
    q = settings.quality
    config = settings.model_file("labeler", q.labeler, q.labeler_precision).parent / "config.json"
    if not config.exists():
        raise GeneratorError(f"{config} is missing: the labeler's label budgets are needed for label accounting")
    return [LabelBudget.from_dict(b) for b in json.loads(config.read_text())["label_budgets"]]
