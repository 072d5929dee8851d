"""The image codec: uint8 images in and out of PNG (the only format records carry), and sample grids.

Images are (H, W) grey or (H, W, 3) RGB; batches (N, H, W) or (N, H, W, C).
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np


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
