"""A layout-conditioned diffusion model: whole scenes drawn into a layout of boxes, one per object.

The layout is one map per class, 1 inside the boxes of that class's objects; the UNet (diffusers'
``UNet2DModel``, the class-conditional model's) takes it concatenated to the noised scene, so where an
object is and what it is are the model's input, and its box and mask are known by construction. It is
trained on scenes composed of labelled objects: the few real labels and, to see more than a few shapes,
unlabelled real objects pseudo-labelled by a teacher trained on those few (``sdg.training.pseudo_labeled``);
their boxes are the objects' ink. To draw a scene, a seed places two to four boxes of sizes the training
objects had (a bank of (class, width, height) kept with the weights) without overlap, the first of the
class asked for; DDIM paints them (deterministic, eta = 0). Each object's mask is the ink the model drew
inside its box, and its box that ink's bounds: the labeler's IoU check catches a box left empty or drawn wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.diffusion import DiffusionConfig, _scheduler, _unet, fit
from models.generator import Annotated, GeneratorError, GeneratorOutput, bounds, check_request, seeded_normal
from models.image import to_uint8
from models.reference import LabelBudget, LabeledData
from models.scenes import free_spot, ink, real_scenes, scene_size

KIND = "layout-diffusion"
BOXES = "layout.boxes"  # the weights' entry holding the box bank: (class, width, height) rows


@dataclass(frozen=True)
class LayoutConfig:
    """``diffusion``: the UNet and its training at the scene's side (``num_classes``: the layout's maps);
    ``object_size``: the data's image size, the cell each object is drawn in."""

    diffusion: DiffusionConfig
    object_size: int = 8
    objects: tuple[int, int] = (2, 4)
    dark_ink: bool = False
    ink_threshold: float = 0.25

    @classmethod
    def for_data(cls, image_size: int, image_channels: int, num_classes: int, *, scene: int | None = None,
                 dark_ink: bool = False, **overrides: Any) -> LayoutConfig:
        """Scenes of ``scene`` pixels (default ``models.scenes.scene_size``) with the UNet the class-conditional
        model would have at that size (``DiffusionConfig.for_data``: it predicts the clean scene)."""
        side = scene or scene_size(image_size)
        return cls(DiffusionConfig.for_data(side, image_channels, num_classes, **overrides), image_size,
                   dark_ink=dark_ink)

    @property
    def steps(self) -> int:
        return self.diffusion.steps

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LayoutConfig:
        d = dict(values["diffusion"])
        d["channels"] = tuple(d["channels"])
        return cls(**{**values, "diffusion": DiffusionConfig(**d), "objects": tuple(values["objects"])})


def layout_maps(objects: Sequence[Sequence[Annotated]], num_classes: int, size: int) -> torch.Tensor:
    """The layout of each scene: (N, num_classes, size, size), 1 inside the box of each object of a class."""
    maps = np.zeros((len(objects), num_classes, size, size), dtype=np.float32)
    for i, scene in enumerate(objects):
        for obj in scene:
            x, y, w, h = (int(round(v)) for v in obj.bbox)
            maps[i, obj.class_label, y:y + h, x:x + w] = 1.0
    return torch.from_numpy(maps)


def drawn_objects(images: np.ndarray, layouts: Sequence[Sequence[Annotated]], *, dark_ink: bool,
                  threshold: float) -> list[list[Annotated]]:
    """The objects drawn into each layout: an object's mask is the ink (``ink``) inside its box, its box that
    mask's bounds; a box left without ink holds no object."""
    drawn = ink(images.astype(np.float32) / 255, dark_ink=dark_ink, threshold=threshold)
    objects = []
    for n, layout in enumerate(layouts):
        scene = []
        for obj in layout:
            mask = drawn[n] & obj.mask
            if mask.any():
                scene.append(Annotated(obj.class_label, bounds(mask), mask))
        objects.append(scene)
    return objects


class LayoutDiffusion:
    """Sampler over a trained layout UNet: a seed's layout and initial noise, DDIM with eta = 0."""

    name = KIND
    draws_scenes = True  # its samples are scenes: the generate processor does not compose them

    def __init__(self, config: LayoutConfig, unet: Any, boxes: np.ndarray, *, version: str = "unsaved",
                 label_budgets: list[LabelBudget] | None = None) -> None:
        self.config = config
        self.unet = unet.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 3)
        self.version = version
        self.image_size = config.object_size
        self.channels = config.diffusion.image_channels
        self.num_classes = config.diffusion.num_classes
        self.label_budgets = label_budgets or []

    def layout(self, seed: int, first: int) -> list[Annotated]:
        """The boxes of seed ``seed``'s scene: the first of class ``first``, the others' classes, sizes and places
        from the seed; each box lies in an object cell of its own, placed like ``real_scenes`` places objects."""
        c, cell, side = self.config, self.config.object_size, self.config.diffusion.image_size
        rng = np.random.default_rng([int(seed), 11])
        n = int(rng.integers(c.objects[0], c.objects[1] + 1))
        taken = np.zeros((side, side), dtype=bool)
        boxes = []
        for k in [int(first), *(int(k) for k in rng.integers(self.num_classes, size=n - 1))]:
            sizes = self.boxes[self.boxes[:, 0] == k, 1:]
            w, h = (int(v) for v in sizes[rng.integers(len(sizes))]) if len(sizes) else (cell, cell)
            spot = free_spot(rng, taken, cell, cell)
            if spot is None:  # no free cell: the object is left out
                continue
            top, left = spot
            y, x = top + int(rng.integers(0, cell - h + 1)), left + int(rng.integers(0, cell - w + 1))
            mask = np.zeros((side, side), dtype=bool)
            mask[y:y + h, x:x + w] = True
            boxes.append(Annotated(k, (float(x), float(y), float(w), float(h)), mask))
        return boxes

    @torch.inference_mode()
    def __call__(self, seeds: Sequence[int], classes: Sequence[int], **params: str) -> GeneratorOutput:
        check_request(self, seeds, classes)
        if params.get("mode") != "scene" or set(params) - {"mode", "steps"}:  # the label step takes scenes asked for
            raise GeneratorError(f"{KIND} draws scenes: plan it with mode=scene (and optionally steps), got {params}")
        d = self.config.diffusion
        steps = int(params.get("steps", d.sample_steps))
        if not 1 <= steps <= d.train_timesteps:
            raise GeneratorError(f"steps must be 1..{d.train_timesteps}, not {steps}")
        layouts = [self.layout(s, c) for s, c in zip(seeds, classes)]
        condition = layout_maps(layouts, self.num_classes, d.image_size)
        scheduler = DDIMScheduler.from_config(_scheduler(d).config)
        scheduler.set_timesteps(steps)
        x = seeded_normal(seeds, self.channels, d.image_size, d.image_size)
        for t in scheduler.timesteps:
            x = scheduler.step(self.unet(torch.cat([x, condition], dim=1), t).sample, t, x, eta=0.0).prev_sample
        images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        images = to_uint8(images[..., 0] if self.channels == 1 else images)
        return GeneratorOutput(images, objects=drawn_objects(images, layouts, dark_ink=self.config.dark_ink,
                                                             threshold=self.config.ink_threshold),
                               scheduler="DDIM", steps=steps)

    def weights(self) -> bytes:
        state = {k: v.contiguous() for k, v in self.unet.state_dict().items()}
        return save_safetensors({**state, BOXES: torch.as_tensor(self.boxes)})

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": KIND, "config": self.config.as_dict(), "label_budgets": [b.as_dict() for b in self.label_budgets]}

    @classmethod
    def from_checkpoint(cls, version: str, weights: bytes, config: dict[str, Any]) -> LayoutDiffusion:
        c = LayoutConfig.from_dict(config["config"])
        state = load_safetensors(weights)
        boxes = state.pop(BOXES).numpy()
        unet = _unet(c.diffusion, layout_channels=c.diffusion.num_classes)
        unet.load_state_dict(state)
        return cls(c, unet, boxes, version=version,
                   label_budgets=[LabelBudget.from_dict(b) for b in config.get("label_budgets", [])])


def box_bank(data: LabeledData, config: LayoutConfig) -> np.ndarray:
    """(class, width, height) of the ink of every training object: the sizes a layout's boxes take."""
    drawn = ink(data.images, dark_ink=config.dark_ink, threshold=config.ink_threshold)
    rows = []
    for mask, label in zip(drawn, data.labels):
        if mask.any():
            _, _, w, h = bounds(mask)
            rows.append((int(label), int(w), int(h)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def train_layout(data: LabeledData, config: LayoutConfig, *, progress: Any = None) -> LayoutDiffusion:
    """Train the UNet to predict the clean scene (or its noise, by ``config.diffusion.prediction``) from the noised
    scene and its layout, on scenes composed afresh every step from ``data``'s objects (their ink boxes)."""
    from models.features import as_tensor

    d = config.diffusion
    if data.images.shape[1] != config.object_size or (data.images.shape[3] if data.images.ndim == 4 else 1) != d.image_channels:
        raise GeneratorError(f"{KIND} configured for {d.image_channels}×{config.object_size}² objects, "
                             f"given {data.images.shape[1:]}")
    torch.manual_seed(d.seed)

    def batch(step: int) -> tuple[torch.Tensor, None, torch.Tensor]:
        scenes = real_scenes(data.images, data.labels, count=d.batch_size, size=d.image_size, objects=config.objects,
                             seed=d.seed * 1_000_003 + step, dark_ink=config.dark_ink,
                             ink_threshold=config.ink_threshold)
        return (as_tensor(scenes.images.astype(np.float32) / 255) * 2 - 1, None,
                layout_maps(scenes.objects, d.num_classes, d.image_size))

    unet = _unet(d, layout_channels=d.num_classes)
    fit(unet, d, batch, progress=progress)
    return LayoutDiffusion(config, unet, box_bank(data, config), label_budgets=[data.budget])

