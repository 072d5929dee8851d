"""What every generator shares: its output type, PNG encoding, versions and the checkpoint registry."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from schemas.errors import SdgError


class GeneratorError(SdgError):
    """A generator that cannot be found, loaded or asked for what it cannot make."""


@dataclass(frozen=True)
class Annotated:
    """One object of a multi-object sample: class, box (x, y, w, h) and instance mask."""

    class_label: int
    bbox: tuple[float, float, float, float]
    mask: np.ndarray


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
    label_budgets: list[dict[str, object]]

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


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → uint8, rounding half up (the same on every machine)."""
    return np.floor(np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def channels_of(images: np.ndarray) -> int:
    """Channels of a batch of images (N, H, W) grey or (N, H, W, C) colour."""
    return 1 if images.ndim == 3 else int(images.shape[3])


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 image, (H, W) grey or (H, W, 3) RGB, as PNG bytes in its own mode (deterministic: no timestamps
    or text chunks)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(
        buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 1 << 24  # 4096 × 4096: a small PNG can unpack into a huge image


def decode_png(data: bytes, *, shape: tuple[int, int] | None = None, channels: int = 1) -> np.ndarray:
    """A uint8 image from PNG bytes, (H, W) with one channel, (H, W, 3) with three (PNG only: JPEG, GIF, BMP and
    the like are refused).

    Args:
        shape: The (height, width) the image must have (a record's own ``height`` and ``width``).
        channels: 1 (grey) or 3 (RGB): a record's own ``channels``; the PNG is converted to it.

    Raises:
        ValueError: the bytes are not a PNG, or not of ``shape``, or unpack into more than ``MAX_PIXELS``.
    """
    from PIL import Image

    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"image is not a PNG (it starts with {data[:8].hex() or 'nothing'})")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except Exception as e:  # PIL raises several unrelated types for bad bytes
        raise ValueError(f"image is not a readable PNG: {e}") from e
    if width * height > MAX_PIXELS:
        raise ValueError(f"a {width}×{height} PNG is over {MAX_PIXELS:,} pixels")
    if shape is not None and (height, width) != tuple(shape):
        raise ValueError(f"a {width}×{height} PNG in a record that says {shape[1]}×{shape[0]}")
    try:
        if channels not in (1, 3):
            raise ValueError(f"images have 1 or 3 channels, not {channels}")
        return np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"image is not a readable PNG: {e}") from e


def content_version(weights: bytes, config: dict[str, Any]) -> str:
    """The version of a model: a content hash of its weights and its config."""
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def sample_grid(images: np.ndarray, labels: Sequence[int], *, per_class: int = 10, scale: int = 4) -> bytes:
    """A PNG grid, one row per class, of uint8 images (grey or colour)."""
    from PIL import Image

    classes = sorted(set(labels))
    h, w = images.shape[1:3]
    grid = np.zeros((len(classes) * (h + 1), per_class * (w + 1), *images.shape[3:]), dtype=np.uint8)
    for row, label in enumerate(classes):
        picks = [i for i, lab in enumerate(labels) if lab == label][:per_class]
        for col, index in enumerate(picks):
            grid[row * (h + 1):row * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = images[index]
    buf = io.BytesIO()
    image = Image.fromarray(grid)
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class ModelRegistry:
    """Versioned checkpoints in ``root/<kind>/<version>/``: weights, config (with label budgets), sample grid."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, kind: str, weights: bytes, config: dict[str, Any], grid_png: bytes | None = None) -> str:
        version = content_version(weights, config)
        folder = self.root / kind / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.safetensors").write_bytes(weights)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if grid_png is not None:
            (folder / "samples.png").write_bytes(grid_png)
        (self.root / kind / "LATEST").write_text(version)
        return version

    def versions(self, kind: str) -> list[str]:
        folder = self.root / kind
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []

    def resolve(self, kind: str, version: str | None = None) -> Path:
        """The checkpoint folder of ``kind`` at ``version`` (default: the latest saved)."""
        if version is None:
            latest = self.root / kind / "LATEST"
            if not latest.exists():
                raise GeneratorError(f"no {kind} model in {self.root}; train one with `sdg train-generator {kind}`")
            version = latest.read_text().strip()
        folder = self.root / kind / version
        if not (folder / "config.json").exists():
            raise GeneratorError(f"unknown {kind} version {version!r}; known: {self.versions(kind)}")
        return folder

    def load_files(self, kind: str, version: str | None = None) -> tuple[str, bytes, dict[str, Any]]:
        folder = self.resolve(kind, version)
        weights = (folder / "weights.safetensors").read_bytes()
        config = json.loads((folder / "config.json").read_text())
        actual = content_version(weights, config)
        if actual != folder.name:
            raise GeneratorError(f"{kind} checkpoint {folder.name} was modified: its content hashes to {actual}")
        return folder.name, weights, config
