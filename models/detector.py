"""A small anchor-free detector (CenterNet-style) with a foreground head: boxes and instance masks.

The network maps an image to one map at ``stride`` with ``num_classes + 4 + stride²`` channels: per class the
probability that an object's centre is in that cell, the object's width and height (in cells), the centre's
sub-cell offset, and for each pixel of the cell the probability that it is object (foreground, full resolution
by depth-to-space). ``decode`` turns the map into objects: the local peaks of the class maps above a score,
their boxes, and as mask the foreground inside the box. It runs the same on the torch module and on its ONNX
export (fp32 or INT8), so the labeler, the gate and the edge detector share it.

Training composes scenes from a pool of objects (``composer``: crops with their masks, placed without overlap
on a plain canvas, the box and mask known by construction), fresh scenes every step: a few labelled real
objects, generated ones, or both (``procedural``: rendered objects and whole rendered scenes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.nn import functional as F

from models.features import as_tensor
from models.generator import Annotated
from models.render import RenderConfig
from models.runtime import OnnxSpec
from models.scenes import Detection, Scenes, coco_dataset, real_scenes, scene_size


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int = 10
    scene_size: int = 32
    channels: int = 1
    width: int = 32
    stride: int = 2
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    objects: tuple[int, int] = (2, 4)  # objects per composed training scene
    dark_ink: bool = False

    @classmethod
    def for_data(cls, image_size: int, channels: int, num_classes: int, *, dark_ink: bool = False,
                 **overrides: object) -> DetectorConfig:
        """Scenes that hold two to four objects of the data's size (``models.scenes.scene_size``): stride 2 up to
        48×48, stride 4 above."""
        scene = scene_size(image_size)
        return cls(**{"num_classes": num_classes, "channels": channels, "dark_ink": dark_ink, "scene_size": scene,
                      "stride": 2 if scene <= 48 else 4, **overrides})  # type: ignore[arg-type]


class CenterNet(nn.Module):
    """A plain convolutional body down to ``stride``, dilated convolutions for context, one 1×1 head."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        w = config.width
        layers: list[nn.Module] = [nn.Conv2d(config.channels, w, 3, padding=1), nn.ReLU()]
        for _ in range(int(math.log2(config.stride))):
            layers += [nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
                   nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2), nn.ReLU(),
                   nn.Conv2d(2 * w, 2 * w, 3, padding=4, dilation=4), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(2 * w, config.num_classes + 4 + config.stride**2, 1)
        self.num_classes = config.num_classes
        assert self.head.bias is not None
        with torch.no_grad():  # centres are rare: start the class maps near 0.1 (CenterNet's prior)
            self.head.bias[:config.num_classes].fill_(-2.19)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        c = self.num_classes
        return torch.cat([torch.sigmoid(out[:, :c]), out[:, c:c + 4], torch.sigmoid(out[:, c + 4:])], dim=1)


def detector_spec(config: DetectorConfig, name: str = "sdg-detector") -> OnnxSpec:
    """The ONNX description of a detector (``models.labeler.deploy`` exports fp32 and INT8 with it)."""
    return OnnxSpec(name=name, kind="detector", image_size=config.scene_size, channels=config.channels,
                    output_is="probabilities", classes=tuple(range(config.num_classes)), stride=config.stride)


def targets(objects: Sequence[Sequence[Annotated]], config: DetectorConfig) -> dict[str, torch.Tensor]:
    """Training targets of scenes: Gaussian centre heat per class, size and offset at centres, foreground."""
    n, c, s = len(objects), config.num_classes, config.stride
    side = config.scene_size // s
    heat = np.zeros((n, c, side, side), dtype=np.float32)
    box = np.zeros((n, 4, side, side), dtype=np.float32)
    at = np.zeros((n, side, side), dtype=np.float32)
    fg = np.zeros((n, s * s, side, side), dtype=np.float32)
    ys, xs = np.mgrid[0:side, 0:side]
    for i, scene in enumerate(objects):
        for obj in scene:
            x, y, w, h = (v / s for v in obj.bbox)
            cx, cy = x + w / 2, y + h / 2
            ix, iy = min(int(cx), side - 1), min(int(cy), side - 1)
            sigma = max(0.5, (2 * max(0, int(0.3 * min(w, h))) + 1) / 6)
            heat[i, obj.class_label] = np.maximum(
                heat[i, obj.class_label], np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2)))
            box[i, :, iy, ix] = (w, h, cx - ix, cy - iy)
            at[i, iy, ix] = 1.0
            fg[i] = np.maximum(fg[i], obj.mask.reshape(side, s, side, s).transpose(1, 3, 0, 2).reshape(s * s, side, side))
    return {"heat": torch.from_numpy(heat), "box": torch.from_numpy(box), "at": torch.from_numpy(at),
            "fg": torch.from_numpy(fg)}


def loss(logits: torch.Tensor, target: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
    """CenterNet's focal loss on the centre heat, L1 on size and offset at centres, BCE on foreground."""
    heat = logits[:, :num_classes]
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    t = target["heat"]
    positive = t.eq(1).float()
    focal = -(positive * (1 - p) ** 2 * torch.log(p) + (1 - positive) * (1 - t) ** 4 * p**2 * torch.log(1 - p))
    count = positive.sum().clamp(min=1)
    at = target["at"][:, None]
    l1 = (F.l1_loss(logits[:, num_classes:num_classes + 4], target["box"], reduction="none") * at).sum() / count
    fg = F.binary_cross_entropy_with_logits(logits[:, num_classes + 4:], target["fg"])
    return focal.sum() / count + 0.1 * l1 + fg


SceneSource = Callable[[int, int], Scenes]  # (count, seed) → scenes with their objects


def composer(images: np.ndarray, labels: np.ndarray, config: DetectorConfig) -> SceneSource:
    """Scenes composed from a pool of objects (crops in [0, 1] and their classes), box and mask known by
    construction: a few labelled real objects, or generated ones."""
    def scenes(count: int, seed: int) -> Scenes:
        return real_scenes(images, labels, count=count, size=config.scene_size, objects=config.objects, seed=seed,
                           dark_ink=config.dark_ink)
    return scenes


def procedural(render: RenderConfig, config: DetectorConfig, *, per_class: int = 200,
               seed: int = 0) -> tuple[SceneSource, SceneSource]:
    """Synthetic scenes without labels: ``per_class`` procedurally rendered objects per class composed like real
    ones, and whole procedural scenes (the renderer's scene mode at ``render.scene_size``)."""
    from models.render import ProceduralRenderer

    renderer = ProceduralRenderer(render)
    classes = [c for c in range(config.num_classes) for _ in range(per_class)]
    crops = renderer([seed * 10**6 + i for i in range(len(classes))], classes).images.astype(np.float32) / 255

    def scenes(count: int, step: int) -> Scenes:
        seeds = [step * 1000 + i for i in range(count)]
        out = renderer(seeds, [s % config.num_classes for s in seeds], mode="scene")
        return Scenes(out.images, out.objects, [])
    return composer(crops, np.asarray(classes), config), scenes


def train_detector(sources: Sequence[SceneSource], config: DetectorConfig = DetectorConfig(), *,
                   progress: Progress | None = None, description: str = "detector") -> CenterNet:
    """Train on fresh scenes every step, from each source in turn (e.g. the few real objects composed, then
    generated objects composed, then rendered scenes)."""
    torch.manual_seed(config.seed)
    model = CenterNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    task = progress.add_task(description, total=config.steps) if progress is not None else None
    model.train()
    for step in range(config.steps):
        scenes = sources[step % len(sources)](config.batch_size, config.seed * 1_000_003 + step)
        x = as_input(scenes.images)
        value = loss(model.logits(x), targets(scenes.objects, config), config.num_classes)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        schedule.step()
        if progress is not None and task is not None:
            progress.advance(task)
    return model.eval()


def as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 scenes (N, S, S) or (N, S, S, C) → float (N, C, S, S) in [0, 1]."""
    return as_tensor(images.astype(np.float32) / 255.0)


def real_test(images: np.ndarray, labels: np.ndarray, config: DetectorConfig, *,
              count: int) -> tuple[Scenes, dict[str, Any]]:
    """``count`` real test scenes at the detector's size, composed from held-out real images (the test split:
    never trained on), and their ground truth as COCO."""
    test = real_scenes(images, labels, count=count, size=config.scene_size, seed=10_000, dark_ink=config.dark_ink)
    return test, coco_dataset(test.objects, (config.scene_size, config.scene_size), config.num_classes)


def predict(model: CenterNet, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(as_input(images)).numpy()


def decode(output: np.ndarray, *, stride: int, num_classes: int, max_objects: int = 20,
           min_score: float = 0.05, first_scene: int = 0) -> list[Detection]:
    """Objects from the detector's output (N, num_classes + 4 + stride², H, W): the 3×3 local peaks of the class
    maps above ``min_score``, best first, with their boxes and masks (foreground inside the box)."""
    heat = output[:, :num_classes]
    padded = np.pad(heat, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    h, w = heat.shape[2:]
    peak = np.max([padded[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    found: list[Detection] = []
    for n in range(len(output)):
        scores = np.where(heat[n] == peak[n], heat[n], 0.0).ravel()
        best = np.argsort(-scores)[:max_objects]
        fg = output[n, num_classes + 4:].reshape(stride, stride, h, w).transpose(2, 0, 3, 1).reshape(h * stride, -1) > 0.5
        for index in best[scores[best] >= min_score]:
            c, y, x = np.unravel_index(index, heat.shape[1:])
            bw, bh, dx, dy = output[n, num_classes:num_classes + 4, y, x]
            cx, cy, bw, bh = (x + dx) * stride, (y + dy) * stride, max(bw, 0.1) * stride, max(bh, 0.1) * stride
            x0, y0 = max(0.0, cx - bw / 2), max(0.0, cy - bh / 2)
            x1, y1 = min(float(fg.shape[1]), cx + bw / 2), min(float(fg.shape[0]), cy + bh / 2)
            mask = np.zeros_like(fg)
            mask[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))] = True
            found.append(Detection(first_scene + n, int(c), (x0, y0, x1 - x0, y1 - y0), float(scores[index]),
                                   mask & fg))
    return found


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


__all__ = ["CenterNet", "DetectorConfig", "SceneSource", "composer", "decode", "detector_spec", "iou", "predict",
           "procedural", "real_test", "train_detector"]
