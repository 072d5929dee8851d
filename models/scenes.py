"""Real test scenes for detection and segmentation, and COCO mAP on them.

``real_scenes`` composes scenes only from real images of a data source: objects cut from held-out real
images (their ink, so the instance mask is the object's own pixels) placed without overlap on a plain
background, with their true class, box and mask. No model and no generator touches them, so a detector
trained on anything else is measured on real objects. ``coco_map`` scores detections with pycocotools
(COCO mAP@0.5 and mAP@0.5:0.95, boxes or masks); ``coco_dataset`` writes the scenes' ground truth as
COCO with RLE masks.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from models.generator import Annotated, Generator, GeneratorOutput, bounds


@dataclass(frozen=True)
class Scenes:
    images: np.ndarray  # (N, S, S) or (N, S, S, C), uint8
    objects: list[list[Annotated]]
    sources: list[list[int]]  # per scene, the index of each object's real image


def real_scenes(images: np.ndarray, labels: np.ndarray, *, count: int, size: int = 64,
                objects: tuple[int, int] = (2, 4), seed: int = 0, dark_ink: bool = False,
                ink_threshold: float = 0.25) -> Scenes:
    """``count`` scenes of ``size``×``size`` pixels, each with ``objects`` real objects placed without overlap.

    Args:
        images: Real images (N, H, W[, C]) in [0, 1]: take them from a split no model trains on.
        labels: Their classes.
        dark_ink: The source draws dark objects on a light background (the mask is where it is darker).
        ink_threshold: How far from the background a pixel must be to belong to the object.
    """
    rng = np.random.default_rng(seed)
    h, w = images.shape[1:3]
    if h > size or w > size:
        raise ValueError(f"objects of {h}×{w} do not fit scenes of {size}×{size}")
    colour = images.shape[3:]
    canvas_value = 1.0 if dark_ink else 0.0
    out = np.full((count, size, size, *colour), canvas_value, dtype=np.float32)
    scenes: list[list[Annotated]] = []
    sources: list[list[int]] = []
    for n in range(count):
        placed: list[Annotated] = []
        used: list[int] = []
        taken = np.zeros((size, size), dtype=bool)
        for index in rng.choice(len(images), size=int(rng.integers(objects[0], objects[1] + 1)), replace=False):
            image = images[index].astype(np.float32)
            mask = ink(image[None], dark_ink=dark_ink, threshold=ink_threshold)[0]
            spot = free_spot(rng, taken, h, w) if mask.any() else None
            if spot is None:  # no ink, or no free spot: the object is left out
                continue
            top, left = spot
            full = np.zeros((size, size), dtype=bool)
            full[top:top + h, left:left + w] = mask
            region = out[n, top:top + h, left:left + w]
            region[mask] = image[mask]
            placed.append(Annotated(int(labels[index]), bounds(full), full))
            used.append(int(index))
        scenes.append(placed)
        sources.append(used)
    return Scenes(np.round(out * 255).astype(np.uint8), scenes, sources)


def ink(images: np.ndarray, *, dark_ink: bool, threshold: float) -> np.ndarray:
    """Where images (N, H, W[, C]) in [0, 1] differ from their background by more than ``threshold``."""
    value = (1.0 - images) if dark_ink else images
    return (value.mean(axis=-1) if value.ndim == 4 else value) > threshold


def free_spot(rng: np.random.Generator, taken: np.ndarray, h: int, w: int, tries: int = 20) -> tuple[int, int] | None:
    """A random ``h``×``w`` spot of ``taken`` that holds nothing yet (marked taken), or None after ``tries`` draws."""
    for _ in range(tries):
        top, left = int(rng.integers(0, taken.shape[0] - h + 1)), int(rng.integers(0, taken.shape[1] - w + 1))
        if not taken[top:top + h, left:left + w].any():
            taken[top:top + h, left:left + w] = True
            return top, left
    return None


def scene_size(image_size: int) -> int:
    """The side of a scene that holds two to four objects of ``image_size``: the procedural renderer's 48 up to
    16×16 objects, about 2.3 objects' sides above (28×28: 72)."""
    return 48 if image_size <= 16 else 8 * math.ceil(2.3 * image_size / 8)


def compose_generated(model: Generator, seeds: Sequence[int], classes: Sequence[int], *, size: int = 48,
                      objects: tuple[int, int] = (2, 4), params: dict[str, str] | None = None) -> GeneratorOutput:
    """Scenes composed from a generator's objects (GAN or diffusion crops), each a function of its seed and class:
    the first object is of the class asked for, the others' classes, the crops' seeds and the placement come
    from the seed. Every object is pasted with its mask (its ink: bright on dark, or dark on light when the
    crops' borders are light), so box and mask are known by construction."""
    counts, crop_seeds, crop_classes = [], [], []
    for seed, first in zip(seeds, classes):
        rng = np.random.default_rng([int(seed), 7])
        n = int(rng.integers(objects[0], objects[1] + 1))
        counts.append(n)
        crop_seeds += [int(seed) * 8 + j for j in range(n)]
        crop_classes += [int(first), *(int(c) for c in rng.integers(model.num_classes, size=n - 1))]
    crops = model(crop_seeds, crop_classes, **(params or {})).images.astype(np.float32) / 255.0  # one batch for all
    dark_ink = float(np.concatenate([crops[:, 0], crops[:, -1], crops[:, :, 0], crops[:, :, -1]]).mean()) > 0.5
    images, placed, start = [], [], 0
    for seed, n in zip(seeds, counts):
        scene = real_scenes(crops[start:start + n], np.asarray(crop_classes[start:start + n]), count=1, size=size,
                            objects=(n, n), seed=int(seed), dark_ink=dark_ink)
        images.append(scene.images[0])
        placed.append(scene.objects[0])
        start += n
    return GeneratorOutput(np.stack(images), objects=placed)


def rle(mask: np.ndarray) -> dict[str, Any]:
    """A boolean mask as COCO run-length encoding (counts as text, as in COCO json)."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


def unrle(encoded: dict[str, Any]) -> np.ndarray:
    """A COCO RLE (``rle``'s output) back to a boolean mask."""
    from pycocotools import mask as coco_mask

    return np.asarray(coco_mask.decode({"size": encoded["size"], "counts": encoded["counts"].encode()}), dtype=bool)


def polygon(mask: np.ndarray) -> list[tuple[float, float]]:
    """The outline of a mask's largest part as (x, y) points on pixel edges (by contourpy, matplotlib's
    contouring): what YOLO's segment format and COCO polygons hold."""
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    if not lines:
        return []
    outline = np.asarray(max(lines, key=len))  # type: ignore[arg-type]
    return [(float(x) - 0.5, float(y) - 0.5) for x, y in outline]  # back to the unpadded mask's coordinates


def coco_dataset(objects: Sequence[Sequence[Annotated]], size: tuple[int, int], num_classes: int) -> dict[str, Any]:
    """Ground truth as a COCO dict: an image per scene, an annotation per object (box, RLE mask, area)."""
    height, width = size
    images = [{"id": i + 1, "width": width, "height": height, "file_name": f"{i:06d}.png"} for i in range(len(objects))]
    annotations: list[dict[str, Any]] = []
    for i, scene in enumerate(objects):
        for obj in scene:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": obj.class_label,
                                "bbox": list(obj.bbox), "area": float(obj.mask.sum()), "iscrowd": 0,
                                "segmentation": rle(obj.mask)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in range(num_classes)]}


@dataclass(frozen=True)
class Detection:
    """One predicted object of scene ``scene`` (0-based): class, box (x, y, w, h), score, optional mask."""

    scene: int
    class_label: int
    bbox: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


def coco_map(truth: dict[str, Any], detections: Sequence[Detection], *,
             kind: Literal["bbox", "segm"] = "bbox") -> dict[str, float]:
    """COCO mAP@0.5 and mAP@0.5:0.95 of ``detections`` against ``truth`` (``coco_dataset``), by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        results = [{"image_id": d.scene + 1, "category_id": d.class_label, "bbox": list(d.bbox), "score": d.score,
                    **({"segmentation": rle(d.mask)} if kind == "segm" and d.mask is not None else {})}
                   for d in detections]
        if not results:
            return {"map50": 0.0, "map50_95": 0.0}
        evaluation = COCOeval(gt, gt.loadRes(results), kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats  # [0]: AP@[.5:.95], [1]: AP@.5; -1 where there is nothing to score
    return {"map50": max(0.0, float(stats[1])), "map50_95": max(0.0, float(stats[0]))}


def coco_scores(truth: dict[str, Any], detections: Sequence[Detection]) -> dict[str, float]:
    """Box and mask COCO mAP: ``map50``, ``map50_95``, ``mask_map50``, ``mask_map50_95``."""
    boxes, masks = coco_map(truth, detections), coco_map(truth, detections, kind="segm")
    return {**boxes, "mask_map50": masks["map50"], "mask_map50_95": masks["map50_95"]}


def scene_grid(images: np.ndarray, objects: Sequence[Sequence[Annotated | Detection]], path: Path, *, title: str,
               min_score: float = 0.3, columns: int = 6) -> Path:
    """A picture of scenes with their objects drawn: box, class (and score for detections) and mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows + 0.4), squeeze=False)
    for n, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if n >= len(images):
            continue
        ax.imshow(images[n], cmap="gray", vmin=0, vmax=255)
        overlay = np.zeros((*images[n].shape[:2], 4))
        for obj in objects[n]:
            score = getattr(obj, "score", None)
            if score is not None and score < min_score:
                continue
            if obj.mask is not None:
                overlay[obj.mask] = (0.1, 0.8, 0.3, 0.35)
            x, y, w, h = obj.bbox
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="lime", lw=1))
            ax.text(x, y - 1, f"{obj.class_label}" + (f" {score:.2f}" if score is not None else ""), color="yellow",
                    fontsize=6)
        ax.imshow(overlay)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
