"""Real reference data, its fixed seeded splits, and label accounting.

Sources: ``sklearn.datasets.load_digits()`` (1,797 real scanned 8×8 digits, the default), an
image folder (``root/<class>/*.png|jpg``), or a Parquet table of (image bytes, label).

Label accounting: the only way to get real labels for training is ``Splits.labeled(...)``,
which returns them together with a ``LabelBudget`` (how many, which ones, from which split).
Every model records the budgets it consumed; the test split hands out no training data at all.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from schemas.errors import SdgError


class LabelAccountingError(SdgError):
    """Test labels used for training, overlapping splits, or more labels than declared."""


@dataclass(frozen=True)
class ReferenceSet:
    """Real images (N, H, W) as floats in [0, 1] (ink bright, like load_digits) and integer labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def content_hash(self) -> str:
        return _hash(self.images, self.labels)


def _hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def load_digits_reference() -> ReferenceSet:
    """The default real set: scikit-learn's 1,797 scanned digits (8×8, 17 grey levels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return ReferenceSet("sklearn-digits", (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64), 10)


def _to_gray(data: bytes | Path, size: int | None) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("L")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def load_folder(root: Path, *, size: int = 8, invert: bool = False) -> ReferenceSet:
    """Images under ``root/<class>/`` (classes sorted by name), grey, resized to ``size``×``size``.

    Args:
        invert: Set for dark ink on a light background (the platform's images have bright ink).
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                images.append(_to_gray(path, size))
                labels.append(label)
    if not images:
        raise SdgError(f"no .png/.jpg images under {root}/<class>/")
    array = np.stack(images)
    return ReferenceSet(f"folder:{root.name}", 1.0 - array if invert else array, np.array(labels), len(classes))


def load_table(path: Path, *, image_column: str = "image", label_column: str = "label", size: int = 8) -> ReferenceSet:
    """A Parquet file or folder of (encoded image bytes, integer label) rows."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[image_column, label_column])
    images = np.stack([_to_gray(b, size) for b in table.column(image_column).to_pylist()])
    labels = np.asarray(table.column(label_column).to_pylist(), dtype=np.int64)
    return ReferenceSet(f"table:{Path(path).name}", images, labels, int(labels.max()) + 1)


@dataclass(frozen=True)
class LabelBudget:
    """Real labels a model consumed: how many, which split, and a hash of exactly which ones."""

    split: str
    n_labels: int
    labels_per_class: int | None
    indices_hash: str
    reference_hash: str
    indices: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return {"split": self.split, "n_labels": self.n_labels, "labels_per_class": self.labels_per_class,
                "indices_hash": self.indices_hash, "reference_hash": self.reference_hash,
                "indices": list(self.indices)}


@dataclass(frozen=True)
class LabeledData:
    images: np.ndarray
    labels: np.ndarray
    budget: LabelBudget


@dataclass(frozen=True)
class Splits:
    """Fixed, seeded, stratified splits of a reference set.

    ``train`` and ``test`` are disjoint; ``few`` holds ``labels_per_class`` labeled images per class
    from ``train``; the rest of ``train`` is ``unlabeled``.
    """

    reference: ReferenceSet
    train: np.ndarray
    test: np.ndarray
    few: np.ndarray
    labels_per_class: int
    seed: int
    hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        overlap = np.intersect1d(self.train, self.test)
        if overlap.size:
            raise LabelAccountingError(f"train and test splits overlap in {overlap.size} images")
        if not np.isin(self.few, self.train).all():
            raise LabelAccountingError("the few-labels subset must come from the train split")
        for name in ("train", "test", "few"):
            indices = getattr(self, name)
            self.hashes[name] = _hash(np.sort(indices), self.reference.images[indices])

    @property
    def unlabeled(self) -> np.ndarray:
        return np.setdiff1d(self.train, self.few)

    def labeled(self, which: Literal["few", "train"]) -> LabeledData:
        """Images with their real labels, and the budget they cost (the only door to training labels)."""
        if which not in ("few", "train"):
            raise LabelAccountingError(f"training labels come from 'few' or 'train', not {which!r}")
        indices = self.few if which == "few" else self.train
        budget = LabelBudget(which, int(indices.size), self.labels_per_class if which == "few" else None,
                             self.hashes[which], self.reference.content_hash, tuple(int(i) for i in indices))
        return LabeledData(self.reference.images[indices], self.reference.labels[indices], budget)

    def unlabeled_images(self) -> np.ndarray:
        """Train images outside the few-labels subset, without labels (they cost nothing)."""
        return self.reference.images[self.unlabeled]

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out real test split: for evaluation only, never for training."""
        return self.reference.images[self.test], self.reference.labels[self.test]


def make_splits(reference: ReferenceSet, *, test_fraction: float = 0.25, labels_per_class: int = 10,
                seed: int = 0) -> Splits:
    """Stratified split; the same arguments always give the same split (and the same hashes)."""
    rng = np.random.default_rng(seed)
    train, test, few = [], [], []
    for label in range(reference.num_classes):
        members = rng.permutation(np.flatnonzero(reference.labels == label))
        n_test = int(round(members.size * test_fraction))
        test.append(members[:n_test])
        rest = members[n_test:]
        if rest.size < labels_per_class:
            raise LabelAccountingError(f"class {label} has {rest.size} train images, fewer than {labels_per_class}")
        train.append(rest)
        few.append(rest[:labels_per_class])
    return Splits(reference, np.sort(np.concatenate(train)), np.sort(np.concatenate(test)),
                  np.sort(np.concatenate(few)), labels_per_class, seed)


def distinct_labels(budgets: list[dict[str, Any]]) -> int:
    """Distinct real labels across budgets (``LabelBudget.as_dict()`` form), per reference set: a label two
    models used counts once."""
    return len({(b["reference_hash"], i) for b in budgets for i in b["indices"]})


def check_budget(budgets: list[LabelBudget], *, declared_labels: int) -> int:
    """Distinct real labels across ``budgets`` (per reference set); raises when they exceed what was declared."""
    total = distinct_labels([b.as_dict() for b in budgets])
    if total > declared_labels:
        raise LabelAccountingError(f"{total} real labels used, {declared_labels} declared")
    return total
