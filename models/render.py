"""A procedural renderer: digit glyphs from the fonts matplotlib ships, under randomized physics.

Uses no real labels at all. Domain randomization per sample: font and weight (stroke width),
pose (rotation, scale, shear, perspective jitter), material reflectance (ink and paper albedo),
a texture on the paper, a directional light (direction and intensity), lens blur and sensor
noise. ``mode="crop"`` renders one centred digit at the reference size (the classification
task); ``mode="scene"`` renders several digits and distractors on a larger canvas with exact
boxes and instance masks (meter or house-number reading).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from models.generator import Annotated, GeneratorError, GeneratorOutput, bounds, check_request
from models.image import to_uint8
from models.reference import LabelBudget
from models.registry import content_version

KIND = "procedural"
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
)
CANVAS = 32  # glyphs are drawn on at least this many pixels (a multiple of the output size), then filtered down


@dataclass(frozen=True)
class RenderConfig:
    image_size: int = 8
    scene_size: int = 48
    num_classes: int = 10
    max_rotation_deg: float = 12.0
    zoom_range: tuple[float, float] = (1.15, 1.4)
    max_shear: float = 0.25
    stroke_range: tuple[int, int] = (0, 1)
    blur_range: tuple[float, float] = (0.0, 0.45)  # sigma, in output pixels
    noise_range: tuple[float, float] = (0.0, 0.06)
    light_range: tuple[float, float] = (0.7, 1.0)
    scene_objects: tuple[int, int] = (2, 4)
    channels: int = 1  # 3: coloured digits on coloured, textured paper
    dark_ink: bool = False  # dark digits on light paper (found from the reference data)


ADDED = {"channels": 1, "dark_ink": False}  # left out of the version at these values: old versions stay valid


def _font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


class ProceduralRenderer:
    """Deterministic: each sample is a function of (renderer version, seed, class, mode)."""

    name = KIND
    label_budgets: list[LabelBudget] = []  # no real labels, ever
    draws_scenes = True  # mode=scene: its own scenes (other generators' are composed of their objects)

    def __init__(self, config: RenderConfig = RenderConfig()) -> None:
        self.config = config
        if config.channels not in (1, 3):
            raise GeneratorError(f"procedural draws 1 or 3 channels, not {config.channels}")
        self.image_size = config.image_size
        self.channels = config.channels
        self.num_classes = config.num_classes
        fonts = b"".join(hashlib.sha256(open(os.path.join(_font_dir(), f), "rb").read()).digest() for f in FONT_FILES)
        described = {k: v for k, v in asdict(config).items() if ADDED.get(k, object()) != v}
        self.version = content_version(fonts, {"kind": KIND, "config": described, "code": 1})
        self.canvas = config.image_size * -(-CANVAS // config.image_size)  # 8 → 32, 28 → 56, 32 → 32

    @cached_property
    def _fonts(self) -> list[Any]:
        from PIL import ImageFont

        size = round(26 * self.canvas / CANVAS)
        return [ImageFont.truetype(os.path.join(_font_dir(), f), size=size) for f in FONT_FILES]

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": KIND, "config": asdict(self.config), "label_budgets": []}

    def __call__(self, seeds: Sequence[int], classes: Sequence[int], **params: str) -> GeneratorOutput:
        check_request(self, seeds, classes)
        mode = params.get("mode", "crop")
        if mode not in ("crop", "scene") or set(params) - {"mode"}:
            raise GeneratorError(f"procedural takes mode=crop|scene, got {params}")
        if mode == "crop":
            images = np.stack([self._crop(np.random.default_rng(int(s)), int(c)) for s, c in zip(seeds, classes)])
            return GeneratorOutput(to_uint8(images))
        scenes = [self._scene(np.random.default_rng(int(s)), int(c)) for s, c in zip(seeds, classes)]
        return GeneratorOutput(to_uint8(np.stack([s[0] for s in scenes])), objects=[s[1] for s in scenes])

    def _glyph(self, rng: np.random.Generator, digit: int) -> np.ndarray:
        """Ink coverage in [0, 1] on a canvas×canvas grid: font, stroke and pose randomized."""
        from PIL import Image, ImageDraw

        c, canvas = self.config, self.canvas
        font = self._fonts[rng.integers(len(self._fonts))]
        image = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(image)
        stroke = int(rng.integers(c.stroke_range[0], c.stroke_range[1] + 1)) * canvas // CANVAS
        box = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
        x = (canvas - (box[2] - box[0])) / 2 - box[0]
        y = (canvas - (box[3] - box[1])) / 2 - box[1]
        draw.text((x, y), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        angle = np.deg2rad(rng.uniform(-c.max_rotation_deg, c.max_rotation_deg))
        zoom = rng.uniform(*c.zoom_range)  # the glyph fills most of the frame, like the scans
        shear = rng.uniform(-c.max_shear, c.max_shear)
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        cx = cy = canvas / 2
        a, b, d, e = cos, -sin + shear, sin, cos
        jitter = rng.normal(0, 0.6, 2) * canvas / CANVAS
        matrix = (a, b, cx - a * cx - b * cy + jitter[0], d, e, cy - d * cx - e * cy + jitter[1])
        warped = image.transform((canvas, canvas), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
        return np.asarray(warped, dtype=np.float32) / 255.0

    def _shade(self, rng: np.random.Generator, ink: np.ndarray, out_size: int) -> np.ndarray:
        """Materials, light, texture and lens blur at full resolution; returns radiance, (H, W) or (H, W, 3)."""
        from scipy.ndimage import gaussian_filter  # ships with scikit-learn

        c = self.config
        h, w = ink.shape
        ink_albedo = rng.uniform(0.75, 1.0)
        paper_albedo = rng.uniform(0.0, 0.12)
        texture = gaussian_filter(rng.normal(0, 1, (h, w)), sigma=rng.uniform(1, 3)) * rng.uniform(0, 0.05)
        direction = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w) - 0.5
        light = rng.uniform(*c.light_range) * (1 + 0.3 * (np.cos(direction) * xx + np.sin(direction) * yy))
        if c.channels == 1:
            surface = (paper_albedo + texture) * (1 - ink) + ink_albedo * ink
            return gaussian_filter(surface * light, sigma=rng.uniform(*c.blur_range) * h / out_size)
        paper, ink_colour = self._colours(rng)
        grain = gaussian_filter(rng.normal(0, 1, (h, w, 3)), sigma=(rng.uniform(1, 4),) * 2 + (0,))
        surface = (paper + grain * rng.uniform(0.02, 0.12)) * (1 - ink[..., None]) + ink_colour * ink[..., None]
        sigma = rng.uniform(*c.blur_range) * h / out_size
        return gaussian_filter(surface * light[..., None], sigma=(sigma, sigma, 0))

    def _colours(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A paper and an ink colour at least 0.35 apart in luminance (paper light when the data's ink is dark)."""
        luma = np.array([0.299, 0.587, 0.114])
        while True:
            paper, ink = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            gap = float((paper - ink) @ luma) * (1 if self.config.dark_ink else -1)
            if gap >= 0.35:
                return paper, ink

    def _sensor(self, rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
        """Pixel integration (box filter), auto exposure to a random white level, read noise."""
        factor = image.shape[0] // size
        cut = image[: size * factor, : size * factor]
        small = cut.reshape(size, factor, size, factor, *image.shape[2:]).mean(axis=(1, 3))
        small = small / max(float(small.max()), 1e-3) * rng.uniform(0.8, 1.0)
        small = small + rng.normal(0, rng.uniform(*self.config.noise_range), small.shape)
        small = np.clip(small, 0, 1)
        return 1 - small if self.config.dark_ink and self.config.channels == 1 else small

    def _crop(self, rng: np.random.Generator, digit: int) -> np.ndarray:
        size = self.config.image_size
        return self._sensor(rng, self._shade(rng, self._glyph(rng, digit), size), size)

    def _scene(self, rng: np.random.Generator, first: int) -> tuple[np.ndarray, list[Annotated]]:
        """Several digits (the first one is the conditioned class) and line distractors, with exact labels."""
        c = self.config
        size = c.scene_size * 2  # drawn at 2×, filtered down
        ink = np.zeros((size, size), dtype=np.float32)
        count = int(rng.integers(c.scene_objects[0], c.scene_objects[1] + 1))
        cell = size // count
        objects = []
        for k in range(count):
            digit = first if k == 0 else int(rng.integers(c.num_classes))
            glyph = self._glyph(rng, digit)
            glyph_size = int(rng.integers(int(cell * 0.6), cell))
            from PIL import Image

            resized = np.asarray(Image.fromarray((glyph * 255).astype(np.uint8)).resize(
                (glyph_size, glyph_size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
            x0 = k * cell + int(rng.integers(0, cell - glyph_size + 1))
            y0 = int(rng.integers(0, size - glyph_size + 1))
            ink[y0:y0 + glyph_size, x0:x0 + glyph_size] = np.maximum(ink[y0:y0 + glyph_size, x0:x0 + glyph_size], resized)
            mask = np.zeros((c.scene_size, c.scene_size), dtype=bool)
            full = np.zeros((size, size), dtype=np.float32)
            full[y0:y0 + glyph_size, x0:x0 + glyph_size] = resized
            mask = full.reshape(c.scene_size, 2, c.scene_size, 2).mean(axis=(1, 3)) > 0.25
            if mask.any():
                objects.append(Annotated(digit, bounds(mask), mask))
        for _ in range(int(rng.integers(0, 3))):  # distractors: thin strokes that are not digits
            y = int(rng.integers(0, size))
            ink[y:y + 2, int(rng.integers(0, size // 2)):int(rng.integers(size // 2, size))] = rng.uniform(0.3, 0.8)
        return self._sensor(rng, self._shade(rng, ink, c.scene_size), c.scene_size), objects
