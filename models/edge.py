"""The edge model: a small CNN trained on real and synthetic digits, deployed as static INT8 ONNX.

``train_edge`` trains on labeled images (real few, real full, synthetic, or a mix) and, when given
unlabeled real images, semi-supervised in the FixMatch manner: a weakly augmented view is
pseudo-labeled by the model itself when it is confident (≥ ``threshold``), and a strongly augmented
view of the same image is trained toward that label. ``evaluate_deployed`` checks the INT8 model
against its fp32 export: accuracy, size, batch-1 latency and batch-256 throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.features import SmallCnn, as_tensor, augment, shift
from models.runtime import OnnxModel, OnnxSpec

EDGE_WIDTH = 16  # ~80k parameters: ~90 KB as INT8


@dataclass(frozen=True)
class EdgeConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    width: int = EDGE_WIDTH
    seed: int = 0
    synthetic_fraction: float = 0.5  # of each labeled batch, when synthetic images are given
    threshold: float = 0.95  # FixMatch confidence for a pseudo-label
    unlabeled_batch: int = 256
    unlabeled_weight: float = 1.0
    label_smoothing: float = 0.05  # without unlabeled images only: it caps confidence below ``threshold``
    num_classes: int = 10


def _strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Two rounds of the contrastive augmentations and a random square cutout (3×3 at 8×8, a third of the side
    on larger images)."""
    x = augment(augment(x, generator), generator)
    n, (h, w) = len(x), x.shape[2:]
    cut = max(3, min(h, w) // 3)
    top = torch.randint(0, h - cut + 1, (n,), generator=generator)
    left = torch.randint(0, w - cut + 1, (n,), generator=generator)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside = (((rows >= top[:, None]) & (rows < top[:, None] + cut))[:, :, None]
              & ((cols >= left[:, None]) & (cols < left[:, None] + cut))[:, None, :])
    return x.masked_fill(inside[:, None], 0.0)


def train_edge(images: np.ndarray, labels: np.ndarray, config: EdgeConfig = EdgeConfig(), *,
               synthetic: tuple[np.ndarray, np.ndarray] | None = None, unlabeled: np.ndarray | None = None,
               init: torch.nn.Module | None = None, progress: Callable[[int], None] | None = None) -> SmallCnn:
    """Train the edge classifier.

    Args:
        images, labels: Real labeled images (N, H, W) in [0, 1] and their labels (may be empty with ``synthetic``).
        synthetic: Labeled synthetic images; they fill ``synthetic_fraction`` of each labeled batch.
        unlabeled: Real images without labels, for FixMatch-style pseudo-labels.
        init: A ``SmallCnn`` of the same width whose trunk the model starts from.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pools = []
    if len(images):
        pools.append((as_tensor(images), torch.as_tensor(labels, dtype=torch.long)))
    if synthetic is not None and len(synthetic[0]):
        pools.append((as_tensor(synthetic[0]), torch.as_tensor(synthetic[1], dtype=torch.long)))
    shape = pools[0][0].shape
    model = SmallCnn(config.num_classes, width=config.width, image_size=(shape[2], shape[3]), channels=shape[1])
    if init is not None:  # a trunk of the same shape, e.g. the contrastive extractor's
        model.trunk.load_state_dict(init.trunk.state_dict())  # type: ignore[union-attr]
    shares = [1.0] if len(pools) == 1 else [1 - config.synthetic_fraction, config.synthetic_fraction]
    counts = [max(1, round(config.batch_size * s)) for s in shares]
    pool_u = as_tensor(unlabeled) if unlabeled is not None and len(unlabeled) else None
    smoothing = config.label_smoothing if pool_u is None else 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    for _ in range(config.steps):
        xs, ys = [], []
        for (x_pool, y_pool), count in zip(pools, counts):
            index = torch.randint(0, len(x_pool), (count,), generator=generator)
            xs.append(x_pool[index])
            ys.append(y_pool[index])
        loss = F.cross_entropy(model(augment(torch.cat(xs), generator)), torch.cat(ys), label_smoothing=smoothing)
        if pool_u is not None:
            batch = pool_u[torch.randint(0, len(pool_u), (config.unlabeled_batch,), generator=generator)]
            with torch.no_grad():
                confidence, pseudo = F.softmax(model(shift(batch, generator)), dim=1).max(dim=1)
            mask = (confidence >= config.threshold).float()
            per_sample = F.cross_entropy(model(_strong(batch, generator)), pseudo, reduction="none")
            loss = loss + config.unlabeled_weight * (per_sample * mask).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(1)
    return model.eval()


def probabilities(model: SmallCnn, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) for images (N, H, W[, C]) in [0, 1]."""
    with torch.no_grad():
        return np.concatenate([F.softmax(model(as_tensor(images[i:i + 1024])), dim=1).numpy()
                               for i in range(0, len(images), 1024)] or [np.zeros((0, model.head.out_features))])


def accuracy(model: SmallCnn, images: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities(model, images).argmax(1) == labels).mean())


def edge_spec(image_size: int = 8, channels: int = 1, num_classes: int = 10) -> OnnxSpec:
    return OnnxSpec(name="sdg-edge-classifier", kind="classifier", output="logits", output_is="logits",
                    image_size=image_size, channels=channels, classes=tuple(range(num_classes)))


@dataclass(frozen=True)
class EdgeMetrics:
    """An edge model's exports measured on the real test split."""

    fp32_accuracy: float
    fp32_bytes: int
    int8_accuracy: float
    int8_bytes: int
    int8_b1_p50_ms: float
    int8_b1_p99_ms: float
    int8_b256_images_per_s: float

    @property
    def accuracy_drop_pt(self) -> float:
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @property
    def checks(self) -> dict[str, bool]:
        """Size under 2 MB, INT8 accuracy at most 0.5 points below fp32."""
        return {"size_under_2mb": self.int8_bytes < 2 * 1024 * 1024, "int8_drop_at_most_0.5pt": self.accuracy_drop_pt <= 0.5}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_drop_pt": self.accuracy_drop_pt, "checks": self.checks}


def evaluate_deployed(fp32: Path, int8: Path, spec: OnnxSpec, images: np.ndarray, labels: np.ndarray, *,
                      threads: int = 1) -> EdgeMetrics:
    """Accuracy of both exports on a real test split (images in [0, 1] or uint8), the INT8 file's size, its
    batch-1 latency (p50/p99 ms) and batch-256 throughput."""
    out: dict[str, Any] = {}
    if images.dtype != np.uint8:  # ONNX models in the platform take uint8 pixels
        images = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    for name, path in (("fp32", fp32), ("int8", int8)):
        model = OnnxModel(path, spec, threads=threads)
        out[f"{name}_accuracy"] = float((model.run(images).argmax(1) == labels).mean())
        out[f"{name}_bytes"] = path.stat().st_size
    model = OnnxModel(int8, spec, threads=threads)
    single = []
    for image in images[:300]:
        start = time.perf_counter()
        model.run(image[None])
        single.append((time.perf_counter() - start) * 1000)
    batch = np.resize(images, (256, *images.shape[1:]))
    model.run(batch)
    start, rounds = time.perf_counter(), 20
    for _ in range(rounds):
        model.run(batch)
    return EdgeMetrics(**out, int8_b1_p50_ms=float(np.percentile(single, 50)),
                       int8_b1_p99_ms=float(np.percentile(single, 99)),
                       int8_b256_images_per_s=256 * rounds / (time.perf_counter() - start))
