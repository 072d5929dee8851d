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


class SmallCnn(nn.Module):
    """Three 3×3 convolutions and two linear layers over (N, 1, 8, 8) images: the labeler's and extractor's trunk."""

    def __init__(self, out_dim: int, *, width: int = 32, image_size: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(2 * width * (image_size // 2) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ±1 px shifts of (N, 1, H, W) images."""
    n, (h, w) = len(x), x.shape[2:]
    views = F.pad(x, (1, 1, 1, 1)).unfold(2, h, 1).unfold(3, w, 1)  # (N, 1, 3, 3, H, W): every ±1 px shift
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    return views[torch.arange(n), :, dy, dx]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ±1 px shifts, contrast and ink-thickness changes and sensor noise on (N, 1, H, W) images in [0, 1]."""
    n = len(x)
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

    def __init__(self, config: ExtractorConfig, image_size: int = 8) -> None:
        super().__init__()
        self.net = SmallCnn(FEATURE_DIM, width=config.width, image_size=image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_extractor(images: np.ndarray, config: ExtractorConfig = ExtractorConfig(), *,
                    progress: Callable[[int], None] | None = None) -> FeatureExtractor:
    """Train on unlabeled images (N, H, W) in [0, 1] with the NT-Xent contrastive loss."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x_all = torch.as_tensor(images, dtype=torch.float32)[:, None]
    model = FeatureExtractor(config, image_size=images.shape[1])
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
