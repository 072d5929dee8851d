"""The domain feature extractor: a small CNN trained contrastively on the real train images, without labels.

No hub weights exist here, so quality metrics need an extractor trained on the reference data. It is
trained SimCLR-style (two augmented views of each image, NT-Xent loss): it uses the train split's
images but none of their labels, so it costs no labels and leaks none into what the gate selects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FEATURE_DIM = 64


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """Images (N, H, W) grey or (N, H, W, C) colour, in [0, 1] → a float32 (N, C, H, W) tensor."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


class SmallCnn(nn.Module):
    """A small CNN over (N, C, H, W) images: the labeler's, extractor's and edge model's trunk.

    Images larger than 8×8 first pass one stride-2 3×3 convolution per halving, down to at most 8×8 (28×28 and
    32×32: two; 5× cheaper than convolving and pooling at full resolution); then three 3×3 convolutions with one
    pooling and two linear layers. At 8×8 with one channel it is the original digits network, layer for layer.
    """

    def __init__(self, out_dim: int, *, width: int = 32, image_size: int | tuple[int, int] = 8,
                 channels: int = 1) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        stem: list[nn.Module] = []
        c_in = channels
        while max(h, w) > 8:
            stem += [nn.Conv2d(c_in, width, 3, stride=2, padding=1), nn.ReLU()]
            c_in, h, w = width, (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.trunk = nn.Sequential(
            *stem,
            nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(2 * width * (h // 2) * (w // 2), 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of (N, C, H, W) images by up to 1 px per 8 px of side (±1 px at 8×8, ±3 px at 28×28)."""
    n, (h, w) = len(x), x.shape[2:]
    p = max(1, min(h, w) // 8)
    views = F.pad(x, (p, p, p, p)).unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, H, W): every shift
    dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=generator)
    return views[torch.arange(n), :, dy, dx]


def warp(x: torch.Tensor, generator: torch.Generator, *, degrees: float = 12.0, scale: float = 0.1,
         shear: float = 0.15) -> torch.Tensor:
    """Random rotation, scale and shear of (N, C, H, W) images (bilinear, zero fill)."""
    n = len(x)
    angle = torch.deg2rad((2 * torch.rand(n, generator=generator) - 1) * degrees)
    zoom = 1 + (2 * torch.rand(n, generator=generator) - 1) * scale
    skew = (2 * torch.rand(n, generator=generator) - 1) * shear
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + skew, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def recolour(x: torch.Tensor, generator: torch.Generator, *, grey: float = 0.2) -> torch.Tensor:
    """Random channel order and, with probability ``grey``, grey, of (N, 3, H, W) images: without it a contrastive
    extractor learns each image's colours, which tell two views apart best, rather than its shapes."""
    n = len(x)
    order = torch.argsort(torch.rand(n, 3, generator=generator), dim=1)
    x = x[torch.arange(n)[:, None], order]
    to_grey = (torch.rand(n, generator=generator) < grey)[:, None, None, None]
    return torch.where(to_grey, x.mean(dim=1, keepdim=True).expand_as(x), x)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts, contrast and ink-thickness changes and sensor noise on (N, C, H, W) images in [0, 1]; above
    8×8 also random rotation, scale and shear (at 8×8 a pixel is too coarse for them); in colour, random channel
    order and grey."""
    n = len(x)
    if x.shape[1] == 3:
        x = recolour(x, generator)
    if min(x.shape[2:]) > 8:
        x = warp(x, generator)
    shifted = shift(x, generator)
    gain = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)
    gamma = torch.exp(0.4 * torch.randn(n, 1, 1, 1, generator=generator))
    noisy = (shifted.clamp(0, 1) ** gamma) * gain + 0.05 * torch.randn(shifted.shape, generator=generator)
    return noisy.clamp(0, 1)


@dataclass(frozen=True)
class ExtractorConfig:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 0.2
    width: int = 32
    seed: int = 0


class FeatureExtractor(nn.Module):
    """The trunk plus a linear layer to ``FEATURE_DIM`` features (the projection head is dropped after training)."""

    def __init__(self, config: ExtractorConfig, image_size: int | tuple[int, int] = 8, channels: int = 1) -> None:
        super().__init__()
        self.net = SmallCnn(FEATURE_DIM, width=config.width, image_size=image_size, channels=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_extractor(images: np.ndarray, config: ExtractorConfig = ExtractorConfig(), *,
                    progress: Callable[[int], None] | None = None) -> FeatureExtractor:
    """Train on unlabeled images (N, H, W[, C]) in [0, 1] with the NT-Xent contrastive loss."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x_all = as_tensor(images)
    model = FeatureExtractor(config, image_size=(x_all.shape[2], x_all.shape[3]), channels=x_all.shape[1])
    projection = nn.Sequential(nn.ReLU(), nn.Linear(FEATURE_DIM, FEATURE_DIM))
    optimizer = torch.optim.Adam([*model.parameters(), *projection.parameters()], lr=config.lr)
    for _ in range(config.steps):
        batch = x_all[torch.randint(0, len(x_all), (config.batch_size,), generator=generator)]
        z = F.normalize(projection(model(torch.cat([augment(batch, generator), augment(batch, generator)]))), dim=1)
        similarity = z @ z.T / config.temperature
        similarity.fill_diagonal_(float("-inf"))
        n = len(batch)
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        loss = F.cross_entropy(similarity, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(1)
    return model.eval()


def extractor_config(config: ExtractorConfig, images_hash: str) -> dict[str, Any]:
    return {"kind": "features", "config": asdict(config), "trained_on": images_hash, "labels_used": 0}
