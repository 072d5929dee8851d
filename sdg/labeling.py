"""The labeler and the quality extractor: ``sdg train-labeler`` trains both; the processors load them.

Layout in the model registry: ``<models>/<kind>/<version>/{fp32,int8}.onnx`` (+ ``.json`` descriptions,
``config.json`` with the label budget, ``MANIFEST.json`` with every file's SHA-256) and ``<models>/<kind>/LATEST``,
for kind ``labeler``, ``extractor`` and ``edge``. The version is the manifest's hash: a folder whose files no
longer match it is refused on load. A user's own ONNX model replaces the labeler or the extractor through
``SDG_QUALITY__LABELER`` / ``SDG_QUALITY__EXTRACTOR``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.generator import GeneratorError
from models.reference import Splits
from models.runtime import OnnxModel, OnnxSpec
from processors.label import Labeler
from processors.quality import QualityJudge
from schemas.records import GeneratedSample, Label
from sdg.settings import Settings


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
                         labeler_steps: int = 1500, console: Console) -> QualityModels:
    """Train the contrastive extractor (unlabeled train images) and the labeler (the few labels, and the unlabeled
    train images FixMatch-style); deploy both."""
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
        l_config = replace(LabelerConfig(), steps=labeler_steps, num_classes=splits.reference.num_classes)
        labeler = train_labeler(few, l_config, init=extractor, unlabeled=splits.unlabeled_images(), progress=bar(
            f"labeler ({few.budget.n_labels} labels, unlabeled images)", labeler_steps))
        train_s["labeler"] = round(time.monotonic() - started, 1)
    staging = registry.staging("labeler")
    deployed = deploy(labeler, staging, labeler_spec(l_config, size, channels), calibration=calibration,
                      config=labeler_config(l_config, few, extractor_dir.name))
    images, labels = splits.test_set()
    u8 = np.floor(images * 255 + 0.5).astype(np.uint8)
    accuracy = {p.stem: float((OnnxModel(p).run(u8).argmax(1) == labels).mean()) for p in (deployed.fp32, deployed.int8)}
    with torch.no_grad():
        accuracy["torch"] = float((labeler(as_tensor(images)).argmax(1).numpy() == labels).mean())
    labeler_dir = registry.publish(staging, "labeler")
    return QualityModels(labeler_dir, extractor_dir, few.budget.n_labels, accuracy, train_s)


def _model_path(settings: Settings, kind: str, given: Path | None, precision: str) -> Path:
    """The user's own model file, or the registry's latest ``kind`` after checking it against its content hash."""
    return given if given is not None else settings.registry().onnx(kind, precision)


def load_labeler(settings: Settings) -> Labeler:
    q = settings.quality
    model = OnnxModel(_model_path(settings, "labeler", q.labeler, q.labeler_precision), threads=q.threads)
    if model.spec.kind != "classifier":
        raise GeneratorError(f"{model.path} is described as {model.spec.kind}, not a classifier")
    classes = model.spec.classes or tuple(range(int(model.session.get_outputs()[0].shape[1])))
    return Labeler(name=model.spec.name, model=model, classes=classes, image_size=model.spec.image_size,
                   channels=model.spec.channels)


def labeler_budgets(settings: Settings) -> list[dict[str, object]]:
    """The real labels behind the labeler the pipeline uses (its ``config.json``), for label accounting."""
    q = settings.quality
    config = _model_path(settings, "labeler", q.labeler, q.labeler_precision).parent / "config.json"
    if not config.exists():
        raise GeneratorError(f"{config} is missing: the labeler's label budgets are needed for label accounting")
    return json.loads(config.read_text())["label_budgets"]


def load_judge(settings: Settings, splits: Splits | None = None) -> QualityJudge:
    """The quality judge over the configured real data (``SDG_DATA__SOURCE``, fixed splits), re-checking every
    label with the labeler the pipeline is configured with."""
    from models.quality import Reference
    from processors.label import label

    q = settings.quality
    extractor = OnnxModel(_model_path(settings, "extractor", q.extractor, "fp32"), threads=q.threads)
    reference = Reference.build(splits or settings.splits(), extractor.run,
                                extractor=extractor.spec.name, extractor_hash=extractor.version, k=q.k)
    labeler = load_labeler(settings)

    def relabel(samples: list[GeneratedSample]) -> list[Label | Exception]:
        return [r if isinstance(r, Exception) else r.label for r in label(samples, labeler=labeler)]

    return QualityJudge(reference, extractor, q, relabel=relabel)
