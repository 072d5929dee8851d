"""``sdg train-generator``: train on the real reference set with a progress bar, save a versioned checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.generator import GeneratorError, ModelRegistry, sample_grid
from models.reference import LabelBudget, LabeledData, Splits, load_digits_reference, make_splits
from sdg.settings import Settings


@dataclass(frozen=True)
class Trained:
    version: str
    labels_used: int
    grid: Path


def pseudo_labeled(splits: Splits, *, threshold: float = 0.9) -> tuple[LabeledData, int]:
    """The few labels plus unlabeled train images labeled by a teacher trained on those few labels.

    The budget stays the few labels' budget: pseudo-labels cost no real labels.
    """
    from sklearn.linear_model import LogisticRegression

    few = splits.labeled("few")
    teacher = LogisticRegression(max_iter=2000, C=1.0).fit(few.images.reshape(len(few.images), -1), few.labels)
    unlabeled = splits.unlabeled_images()
    probabilities = teacher.predict_proba(unlabeled.reshape(len(unlabeled), -1))
    keep = probabilities.max(axis=1) >= threshold
    images = np.concatenate([few.images, unlabeled[keep]])
    labels = np.concatenate([few.labels, teacher.classes_[probabilities[keep].argmax(axis=1)]])
    budget: LabelBudget = few.budget
    return LabeledData(images, labels, budget), int(keep.sum())


def train_generator(settings: Settings, kind: str, *, labels_per_class: int | None, pseudo_labels: bool,
                    steps: int | None, seed: int, console: Console) -> Trained:
    if kind not in ("gan", "diffusion"):
        raise GeneratorError(f"trainable generators: gan, diffusion (procedural needs no training), not {kind!r}")
    if pseudo_labels and labels_per_class is None:
        raise GeneratorError("--pseudo-labels needs --labels-per-class")
    splits = make_splits(load_digits_reference(), labels_per_class=labels_per_class or 10, seed=seed)
    pseudo = 0
    if labels_per_class is None:
        data = splits.labeled("train")
    elif pseudo_labels:
        data, pseudo = pseudo_labeled(splits)
    else:
        data = splits.labeled("few")
    if kind == "gan":
        from models.gan import GanConfig, train_gan as train

        config = GanConfig(seed=seed)
    else:
        from models.diffusion import DiffusionConfig, train_diffusion as train  # type: ignore[assignment]

        config = DiffusionConfig(seed=seed)  # type: ignore[assignment]
    if steps is not None:
        config = replace(config, steps=steps)
    columns = (TextColumn(f"training {kind}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(kind, total=config.steps)
        model = train(data, config, progress=lambda n: progress.advance(task, n))  # type: ignore[arg-type]
    labels = [c for c in range(10) for _ in range(10)]
    grid = sample_grid(model(list(range(len(labels))), labels).images, labels)
    checkpoint = model.checkpoint_config()
    checkpoint["training"] = {"images": int(len(data.images)), "pseudo_labeled": pseudo,
                              "reference_splits": splits.hashes}
    version = ModelRegistry(settings.models_dir).save(kind, model.weights(), checkpoint, grid)
    return Trained(version, data.budget.n_labels, settings.models_dir / kind / version / "samples.png")
