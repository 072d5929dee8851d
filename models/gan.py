"""A class-conditional GAN in plain torch (a DCGAN with a projection discriminator, or a small MLP at 8×8), with
EMA weights for sampling."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from models.generator import GeneratorError, GeneratorOutput, check_request, seeded_normal
from models.image import to_uint8
from models.reference import LabelBudget, LabeledData

KIND = "gan"


@dataclass(frozen=True)
class GanConfig:
    """Sizes and schedule. ``arch``: ``conv`` (a DCGAN generator with class-conditional batch norm against a
    spectral-norm projection discriminator, hinge loss) or ``mlp`` (two hidden layers each side, non-saturating
    loss: the 8×8 grey default, which the digits benchmarks and the proof measured). ``for_data`` picks by size."""

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
    arch: str = "mlp"
    channels: int = 1
    width: int = 32  # conv: feature maps at half resolution; doubled per further halving
    beta1: float = 0.5  # Adam's first moment decay

    @classmethod
    def for_data(cls, image_size: int, channels: int, num_classes: int, **overrides: Any) -> GanConfig:
        if image_size <= 8 and channels == 1:
            return cls(image_size=image_size, channels=channels, num_classes=num_classes, **overrides)
        # EMA over the last ~100 steps: a slower one still averages in the first, shapeless generators
        values = dict(arch="conv", latent_dim=64, steps=3000, batch_size=64, lr=2e-4, ema_decay=0.99)
        return cls(image_size=image_size, channels=channels, num_classes=num_classes, **{**values, **overrides})


def halvings(size: int, smallest: int = 4) -> int:
    """How often ``size`` halves evenly while staying at least ``smallest`` (28 → 2, 32 → 3, 8 → 1)."""
    n = 0
    while size % 2 == 0 and size // 2 >= smallest:
        size, n = size // 2, n + 1
    return n


class _MlpG(nn.Module):
    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.num_classes, c.embed_dim)
        self.net = nn.Sequential(
            nn.Linear(c.latent_dim + c.embed_dim, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.image_size * c.image_size * c.channels), nn.Sigmoid(),
        )
        self.shape = (c.channels, c.image_size, c.image_size)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], dim=1)).reshape(-1, *self.shape)


class _MlpD(nn.Module):
    """Projection discriminator: a score from the image, plus the image features' agreement with the class."""

    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(c.image_size * c.image_size * c.channels, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.hidden), nn.LeakyReLU(0.2),
        )
        self.score = nn.Linear(c.hidden, 1)
        self.project = nn.Embedding(c.num_classes, c.hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.score(h).squeeze(1) + (self.project(y) * h).sum(1)


class _ConditionalNorm(nn.Module):
    """Batch norm whose scale and shift are looked up per class (as in SNGAN and BigGAN generators)."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(features, affine=False)
        self.scale = nn.Embedding(num_classes, features)
        self.shift = nn.Embedding(num_classes, features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(y)[:, :, None, None] + self.shift(y)[:, :, None, None]


class _ConvG(nn.Module):
    """Latent → (width·2^k, s/2^k, s/2^k), then k transposed 4×4 stride-2 convolutions (DCGAN), each but the last
    followed by class-conditional batch norm and ReLU; the last gives C channels."""

    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        k = halvings(c.image_size)
        self.base = c.image_size >> k
        self.start = c.width << k
        self.project = nn.Linear(c.latent_dim, self.start * self.base * self.base)
        self.norm0 = _ConditionalNorm(self.start, c.num_classes)
        widths = [c.width << (k - i) for i in range(k)] + [c.channels]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(_ConditionalNorm(b, c.num_classes) for b in widths[1:-1])

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm0(self.project(z).reshape(-1, self.start, self.base, self.base), y))
        for conv, norm in zip(self.ups, self.norms):
            x = torch.relu(norm(conv(x), y))
        return torch.sigmoid(self.ups[-1](x))


class _ConvD(nn.Module):
    """Spectral-norm 4×4 stride-2 convolutions, one per generator upsampling, then the flattened features (where a
    stroke is matters for digits: a global sum would forget it) scored and projected onto the class embedding."""

    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        k = halvings(c.image_size)
        widths = [c.channels] + [c.width << i for i in range(k)]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        dim = widths[-1] * (c.image_size >> k) ** 2
        self.score = sn(nn.Linear(dim, 1))
        self.project = sn(nn.Embedding(c.num_classes, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.score(h).squeeze(1) + (self.project(y) * h).sum(1)


def _networks(c: GanConfig) -> tuple[nn.Module, nn.Module]:
    if c.arch not in ("mlp", "conv"):
        raise GeneratorError(f"gan arch is mlp or conv, not {c.arch!r}")
    return (_MlpG(c), _MlpD(c)) if c.arch == "mlp" else (_ConvG(c), _ConvD(c))


class GanModel:
    """The trained generator (EMA weights). Call it with per-sample seeds and classes."""

    name = KIND

    def __init__(self, config: GanConfig, generator: nn.Module, *, version: str = "unsaved",
                 label_budgets: list[LabelBudget] | None = None) -> None:
        self.config = config
        self.generator = generator.eval()
        self.version = version
        self.image_size = config.image_size
        self.channels = config.channels
        self.num_classes = config.num_classes
        self.label_budgets = label_budgets or []

    @torch.inference_mode()
    def __call__(self, seeds: Sequence[int], classes: Sequence[int], **params: str) -> GeneratorOutput:
        check_request(self, seeds, classes)
        if params:
            raise GeneratorError(f"gan takes no parameters, got {sorted(params)}")
        x = self.generator(seeded_normal(seeds, self.config.latent_dim), torch.as_tensor(list(classes), dtype=torch.long))
        images = x.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        return GeneratorOutput(to_uint8(images[..., 0] if self.channels == 1 else images))

    def weights(self) -> bytes:
        return save_safetensors({k: v.contiguous() for k, v in self.generator.state_dict().items()})

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": KIND, "config": asdict(self.config), "label_budgets": [b.as_dict() for b in self.label_budgets]}

    @classmethod
    def from_checkpoint(cls, version: str, weights: bytes, config: dict[str, Any]) -> GanModel:
        c = GanConfig(**config["config"])
        generator = _networks(c)[0]
        generator.load_state_dict(load_safetensors(weights))
        return cls(c, generator, version=version, label_budgets=[LabelBudget.from_dict(b) for b in config.get("label_budgets", [])])


def train_gan(data: LabeledData, config: GanConfig = GanConfig(), *, progress: Any = None) -> GanModel:
    """Train on real labeled images (their label budget goes into the model). The MLP is trained with the
    non-saturating loss, the conv GAN with the hinge loss.

    Args:
        data: Images and labels from ``Splits.labeled(...)``.
        config: Sizes and schedule.
        progress: Optional ``(advance: Callable[[int], None])`` for a progress bar.
    """
    from models.features import as_tensor

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x_all = as_tensor(data.images)
    if tuple(x_all.shape[1:]) != (config.channels, config.image_size, config.image_size):
        raise GeneratorError(f"gan configured for {config.channels}×{config.image_size}×{config.image_size} images, "
                             f"given {tuple(x_all.shape[1:])}")
    y_all = torch.as_tensor(data.labels, dtype=torch.long)
    g, d = _networks(config)
    ema = copy.deepcopy(g).requires_grad_(False)
    betas = (config.beta1, 0.999)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=betas)
    bce = nn.BCEWithLogitsLoss()
    relu = nn.functional.relu
    for _ in range(config.steps):
        index = torch.as_tensor(rng.integers(0, len(x_all), config.batch_size))
        real, y = x_all[index], y_all[index]
        z = torch.randn(config.batch_size, config.latent_dim)
        fake = g(z, y)
        real_score, fake_score = d(real, y), d(fake.detach(), y)
        if config.arch == "mlp":
            loss_d = bce(real_score, torch.ones(len(y))) + bce(fake_score, torch.zeros(len(y)))
        else:
            loss_d = relu(1 - real_score).mean() + relu(1 + fake_score).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        score = d(fake, y)
        loss_g = bce(score, torch.ones(len(y))) if config.arch == "mlp" else -score.mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), g.parameters()):
                p_ema.lerp_(p, 1 - config.ema_decay)
            for b_ema, b in zip(ema.buffers(), g.buffers()):
                b_ema.copy_(b)
        if progress is not None:
            progress(1)
    return GanModel(config, ema, label_budgets=[data.budget])
