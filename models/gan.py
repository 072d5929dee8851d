"""A small class-conditional GAN in plain torch, with EMA weights for sampling."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from models.generator import GeneratorError, GeneratorOutput, check_request, seeded_normal, to_uint8
from models.reference import LabeledData

KIND = "gan"


@dataclass(frozen=True)
class GanConfig:
    image_size: int = 8
    num_classes: int = 10
    latent_dim: int = 32
    hidden: int = 256
    embed_dim: int = 16
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-4
    ema_decay: float = 0.995
    seed: int = 0


class _G(nn.Module):
    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.num_classes, c.embed_dim)
        self.net = nn.Sequential(
            nn.Linear(c.latent_dim + c.embed_dim, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.image_size * c.image_size), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], dim=1))


class _D(nn.Module):
    """Projection discriminator: a score from the image, plus the image features' agreement with the class."""

    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(c.image_size * c.image_size, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.hidden), nn.LeakyReLU(0.2),
        )
        self.score = nn.Linear(c.hidden, 1)
        self.project = nn.Embedding(c.num_classes, c.hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.score(h).squeeze(1) + (self.project(y) * h).sum(1)


class GanModel:
    """The trained generator (EMA weights). Call it with per-sample seeds and classes."""

    name = KIND

    def __init__(self, config: GanConfig, generator: nn.Module, *, version: str = "unsaved",
                 label_budgets: list[dict[str, object]] | None = None) -> None:
        self.config = config
        self.generator = generator.eval()
        self.version = version
        self.image_size = config.image_size
        self.num_classes = config.num_classes
        self.label_budgets = label_budgets or []

    @torch.inference_mode()
    def __call__(self, seeds: Sequence[int], classes: Sequence[int], **params: str) -> GeneratorOutput:
        check_request(self, seeds, classes)
        if params:
            raise GeneratorError(f"gan takes no parameters, got {sorted(params)}")
        x = self.generator(seeded_normal(seeds, self.config.latent_dim), torch.as_tensor(list(classes), dtype=torch.long))
        images = x.reshape(-1, self.image_size, self.image_size).numpy()
        return GeneratorOutput(to_uint8(images))

    def weights(self) -> bytes:
        return save_safetensors({k: v.contiguous() for k, v in self.generator.state_dict().items()})

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": KIND, "config": asdict(self.config), "label_budgets": self.label_budgets}

    @classmethod
    def from_checkpoint(cls, version: str, weights: bytes, config: dict[str, Any]) -> "GanModel":
        c = GanConfig(**config["config"])
        generator = _G(c)
        generator.load_state_dict(load_safetensors(weights))
        return cls(c, generator, version=version, label_budgets=config.get("label_budgets", []))


def train_gan(data: LabeledData, config: GanConfig = GanConfig(), *, progress: Any = None) -> GanModel:
    """Train on real labeled images (their label budget goes into the model).

    Args:
        data: Images and labels from ``Splits.labeled(...)``.
        config: Sizes and schedule.
        progress: Optional ``(advance: Callable[[int], None])`` for a progress bar.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x_all = torch.as_tensor(data.images.reshape(len(data.images), -1), dtype=torch.float32)
    y_all = torch.as_tensor(data.labels, dtype=torch.long)
    g, d = _G(config), _D(config)
    ema = copy.deepcopy(g).requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    for _ in range(config.steps):
        index = torch.as_tensor(rng.integers(0, len(x_all), config.batch_size))
        real, y = x_all[index], y_all[index]
        z = torch.randn(config.batch_size, config.latent_dim)
        fake = g(z, y)
        loss_d = bce(d(real, y), torch.ones(len(y))) + bce(d(fake.detach(), y), torch.zeros(len(y)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(d(fake, y), torch.ones(len(y)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), g.parameters()):
                p_ema.lerp_(p, 1 - config.ema_decay)
        if progress is not None:
            progress(1)
    return GanModel(config, ema, label_budgets=[data.budget.as_dict()])
