"""The image codec: uint8 images in and out of records (raw pixels or PNG), and sample grids.

Images are (H, W) grey or (H, W, 3) RGB; batches (N, H, W) or (N, H, W, C). A record carries small images as
raw pixels (``image_format = "raw"``: no codec cost, ~0.5 µs a sample against 25–65 µs for a PNG encode or decode)
and larger ones as PNG, which shrinks them where size matters; both are deterministic, so an image's bytes and
their hash are the same on every machine.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    from schemas.records import GeneratedSample

ImageFormat = Literal["auto", "png", "raw"]
RAW_MAX_BYTES = 16 * 1024  # "auto": raw pixels up to 128×128 grey or 73×73 RGB, PNG above


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


def encode_image(image: np.ndarray, image_format: ImageFormat = "auto") -> tuple[bytes, Literal["png", "raw"]]:
    """A uint8 image's record bytes and their format: raw pixels (row-major, channels last) or PNG; ``auto``
    takes raw up to ``RAW_MAX_BYTES``."""
    if image_format == "raw" or (image_format == "auto" and image.size <= RAW_MAX_BYTES):
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes(), "raw"
    return png_bytes(image), "png"


def _convert(image: np.ndarray, channels: int) -> np.ndarray:
    """Grey ↔ RGB the way a PNG is converted (PIL's modes), so both formats give the same pixels."""
    from PIL import Image

    have = 1 if image.ndim == 2 else image.shape[2]
    if have == channels:
        return image
    if channels not in (1, 3):
        raise ValueError(f"images have 1 or 3 channels, not {channels}")
    return np.asarray(Image.fromarray(image).convert("L" if channels == 1 else "RGB"))


def sample_image(sample: GeneratedSample, channels: int | None = None) -> np.ndarray:
    """A sample's image as uint8 (H, W) or (H, W, 3), converted to ``channels`` (default: its own).

    Raises:
        ValueError: the bytes are not an image of the sample's size and channels.
    """
    shape = (sample.height, sample.width)
    if sample.image_format == "raw":
        if len(sample.image) != sample.height * sample.width * sample.channels:
            raise ValueError(f"{len(sample.image):,} bytes of raw pixels for a {sample.width}×{sample.height}×"
                             f"{sample.channels} image")
        pixels = np.frombuffer(sample.image, np.uint8).reshape(
            shape if sample.channels == 1 else (*shape, sample.channels))
        return _convert(pixels, channels or sample.channels)
    return decode_png(sample.image, shape=shape, channels=channels or sample.channels)


def sample_images(samples: Sequence[GeneratedSample], channels: int | None = None) -> np.ndarray:
    """The images of samples of one size as a batch: raw pixels of one shape and channel count in one copy,
    anything else image by image.

    Raises:
        ValueError: an image is not of its sample's size and channels, or the samples differ in size.
    """
    first = samples[0] if samples else None
    if first is not None and all(s.image_format == "raw" and s.height == first.height and s.width == first.width
                                 and s.channels == first.channels == (channels or first.channels)
                                 and len(s.image) == s.height * s.width * s.channels for s in samples):
        shape = (len(samples), first.height, first.width)
        return np.frombuffer(b"".join(s.image for s in samples), np.uint8).reshape(
            shape if first.channels == 1 else (*shape, first.channels))
    return np.stack([sample_image(s, channels) for s in samples])


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
