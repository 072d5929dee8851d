"""What every generator shares: its output type, its errors and the request checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from models.reference import LabelBudget
from schemas.errors import SdgError


class GeneratorError(SdgError):
    """A generator that cannot be found, loaded or asked for what it cannot make."""


@dataclass(frozen=True)
class Annotated:
    """One object of a multi-object sample: class, box (x, y, w, h) and instance mask."""

    class_label: int
    bbox: tuple[float, float, float, float]
    mask: np.ndarray


def bounds(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The box (x, y, w, h) of a non-empty mask's pixels."""
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


@dataclass(frozen=True)
class GeneratorOutput:
    """Images as uint8, (N, H, W) grey or (N, H, W, C) colour; per-sample objects for multi-object samples."""

    images: np.ndarray
    objects: list[list[Annotated]] = field(default_factory=list)
    scheduler: str | None = None
    steps: int | None = None


class Generator(Protocol):
    """A class-conditional generator: each sample is a pure function of (version, seed, class)."""

    name: str
    version: str
    image_size: int
    channels: int
    num_classes: int
    label_budgets: list[LabelBudget]

    def __call__(self, seeds: Sequence[int], classes: Sequence[int], **params: str) -> GeneratorOutput: ...


class TrainedGenerator(Generator, Protocol):
    """A generator with learned weights: what the model registry saves and loads."""

    def weights(self) -> bytes: ...

    def checkpoint_config(self) -> dict[str, Any]: ...


def check_request(model: Generator, seeds: Sequence[int], classes: Sequence[int]) -> None:
    """Refuse mismatched seeds and classes, and classes the model does not know, before any heavy work."""
    if len(seeds) != len(classes):
        raise GeneratorError(f"{len(seeds)} seeds for {len(classes)} classes")
    bad = sorted({c for c in classes if not 0 <= c < model.num_classes})
    if bad:
        raise GeneratorError(f"{model.name} knows classes 0..{model.num_classes - 1}, not {bad}")


def seeded_normal(seeds: Sequence[int], *shape: int) -> Any:
    """One standard-normal tensor per seed, each from its own torch.Generator: a sample's noise does
    not depend on the batch it is generated in."""
    import torch

    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
