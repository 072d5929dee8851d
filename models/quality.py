"""Set metrics between generated and real feature sets, and the real reference they are measured against.

- FID (Fréchet distance of Gaussians) from running sums: ``RunningMoments`` is updated per sample
  and merged across windows; the covariance is never recomputed from stored features.
- k-NN precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).
- Per-sample realism (Kynkäänniemi's realism score) and a memorization ratio (pixel distance to the
  nearest training image over the median real test-to-train distance).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from models.reference import Splits
from schemas.records import Metrics


class RunningMoments:
    """Count, sum and sum of outer products of feature vectors (float64): mean and covariance on demand."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def update(self, x: np.ndarray) -> RunningMoments:
        """Add one vector (d,) or a batch (n, d)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        self.n += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    def __add__(self, other: RunningMoments) -> RunningMoments:
        merged = RunningMoments(len(self.total))
        merged.n, merged.total, merged.outer = self.n + other.n, self.total + other.total, self.outer + other.outer
        return merged

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased sample covariance."""
        mean = self.mean
        return (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, *,
                     root2: np.ndarray | None = None) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½).

    Tr((Σ1 Σ2)^½) is the sum of the square roots of Σ1 Σ2's eigenvalues (real and ≥ 0 for two covariances,
    up to rounding): no matrix square root, ~10× faster than ``scipy.linalg.sqrtm`` and defined for the
    singular covariances of small windows too. With ``root2``, Σ2's symmetric square root R (``symmetric_root``,
    computed once for a real set), they are the eigenvalues of the symmetric R Σ1 R (the same nonzero ones as
    R R Σ1 = Σ2 Σ1): another ~4× faster.
    """
    if root2 is None:
        eigenvalues = np.linalg.eigvals(cov1 @ cov2).real
    else:
        eigenvalues = np.linalg.eigvalsh(root2 @ cov1 @ root2)
    root_trace = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * root_trace)


def fid(a: RunningMoments, b: RunningMoments, *, root_b: np.ndarray | None = None) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, root2=root_b)


def symmetric_root(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance (its eigenvalues' roots, negative rounding clipped to 0)."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b))."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point."""
    d = distances(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = 5, real_radii: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (both (n, d)) with k-NN balls."""
    if len(fake) <= k or len(real) <= k:
        raise ValueError(f"k-NN metrics need more than k={k} points per set, got {len(real)} real, {len(fake)} fake")
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    fake_radii = knn_radii(fake, k)
    d = distances(real, fake)
    inside_real = d < real_radii[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < fake_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < real_radii).mean()),
    }


def realism(fake: np.ndarray, real: np.ndarray, real_radii: np.ndarray) -> np.ndarray:
    """Kynkäänniemi's realism score per fake point: max over real r of radius(r) / ‖f − r‖ (≥ 1: inside a real ball)."""
    return (real_radii[None, :] / np.maximum(distances(fake, real), 1e-12)).max(axis=1)


@dataclass
class RealSet:
    """Real features of one class (or all classes) of the train split, with what the metrics need precomputed."""

    features: np.ndarray
    moments: RunningMoments
    radii: np.ndarray
    held_out: np.ndarray  # test-split features of the same class: the real-vs-real baseline

    @cached_property
    def root(self) -> np.ndarray:
        """The symmetric square root of the real covariance (``frechet_distance``'s ``root2``)."""
        return symmetric_root(self.moments.cov)


@dataclass
class Reference:
    """The real side of every metric: train-split features (the real manifold) and test-split features (baseline).

    Args:
        name: Reference set name and split hashes, recorded as ``reference_split``.
        extractor: Extractor name; ``extractor_hash`` its content hash (scores from different ones never mix).
    """

    name: str
    extractor: str
    extractor_hash: str
    k: int
    image_size: int
    channels: int
    sets: dict[int | None, RealSet]
    train_pixels: np.ndarray
    test_pixels: np.ndarray
    memorization_scale: float  # median real test-to-train pixel distance
    memorization_floor: float  # 1st percentile of the real test ratios: below it a sample is memorized
    realism_quantiles: dict[str, float]
    seed: int = 0
    _baselines: dict[tuple[int | None, int], Metrics] = field(default_factory=dict)

    @classmethod
    def build(cls, splits: Splits, features: Any, *, extractor: str, extractor_hash: str, k: int = 5,
              seed: int = 0) -> Reference:
        """``features`` maps uint8 images (N, H, W[, C]) to (N, d) features (the extractor's ``run``)."""
        images = np.floor(splits.reference.images * 255 + 0.5).astype(np.uint8)
        labels = splits.reference.labels
        train_f, test_f = features(images[splits.train]), features(images[splits.test])
        train_y, test_y = labels[splits.train], labels[splits.test]
        sets: dict[int | None, RealSet] = {}
        for c in [None, *range(splits.reference.num_classes)]:
            tr = train_f if c is None else train_f[train_y == c]
            te = test_f if c is None else test_f[test_y == c]
            sets[c] = RealSet(tr, RunningMoments(tr.shape[1]).update(tr), knn_radii(tr, k), te)
        train_px = images[splits.train].reshape(len(splits.train), -1) / 255.0
        test_px = images[splits.test].reshape(len(splits.test), -1) / 255.0
        nearest = distances(test_px, train_px).min(axis=1)
        scale = float(np.median(nearest))
        scores = realism(test_f, train_f, sets[None].radii)
        return cls(
            name=f"{splits.reference.name}:train={splits.hashes['train']}:test={splits.hashes['test']}",
            extractor=extractor, extractor_hash=extractor_hash, k=k, image_size=splits.reference.image_size,
            channels=splits.reference.channels,
            sets=sets, train_pixels=train_px, test_pixels=test_px,
            memorization_scale=scale, memorization_floor=float(np.quantile(nearest / scale, 0.01)),
            realism_quantiles={f"q{q:02d}": float(np.quantile(scores, q / 100)) for q in (1, 2, 5, 10, 50)},
            seed=seed,
        )

    def of_scenes(self, size: int, features: Any, *, count: int = 1000) -> Reference:
        """The reference for whole scenes of ``size`` × ``size``: real scenes composed of this reference's real objects
        (``models.scenes.real_scenes``: the train split's for the manifold, ``count`` of them; the test split's for
        the baseline, half as many), each fitted whole to the extractor's input. One class: a scene has none."""
        from models.reference import ReferenceSet
        from models.runtime import fit_image
        from models.scenes import real_scenes

        shape = (-1, self.image_size, self.image_size) + (() if self.channels == 1 else (self.channels,))
        parts = []
        for pixels, n, seed in ((self.train_pixels, count, self.seed), (self.test_pixels, count // 2, self.seed + 1)):
            images = pixels.reshape(shape).astype(np.float32)
            dark = ReferenceSet("", images, np.zeros(len(images), np.int64), 1).dark_ink
            scenes = real_scenes(images, np.zeros(len(images), np.int64), count=n, size=size, seed=seed, dark_ink=dark)
            parts.append(np.stack([fit_image(s, self.image_size, self.channels) for s in scenes.images]))
        fitted = np.concatenate(parts)
        real = ReferenceSet(f"scenes{size}", fitted.astype(np.float32) / 255, np.zeros(len(fitted), np.int64), 1)
        splits = Splits(real, np.arange(len(parts[0])), np.arange(len(parts[0]), len(fitted)), np.arange(0), 0, self.seed)
        built = Reference.build(splits, features, extractor=self.extractor, extractor_hash=self.extractor_hash, k=self.k,
                                seed=self.seed)
        return replace(built, name=f"{self.name}:scenes={size}")

    def metrics(self, moments: RunningMoments, features: np.ndarray, class_label: int | None = None) -> Metrics:
        """Generated vs real: FID from the window's running sums, k-NN metrics from its features."""
        real = self.sets[class_label]
        scores = prdc(real.features, features, k=self.k, real_radii=real.radii)
        return Metrics(n=moments.n, fid=fid(moments, real.moments, root_b=real.root), **scores)

    def baseline(self, n: int, class_label: int | None = None) -> Metrics:
        """Real vs real at the same n (held-out test features against the train manifold), once per (class, n)."""
        key = (class_label, n)
        if key not in self._baselines:
            held_out = self.sets[class_label].held_out
            rng = np.random.default_rng(self.seed)
            picked = held_out[rng.permutation(len(held_out))[: min(n, len(held_out))]]
            self._baselines[key] = self.metrics(RunningMoments(picked.shape[1]).update(picked), picked, class_label)
        return self._baselines[key]

    def per_sample(self, features: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Realism, feature-space distance to the nearest real train image, and memorization ratio per sample."""
        real = self.sets[None]
        d = distances(features, real.features)
        scores = (real.radii[None, :] / np.maximum(d, 1e-12)).max(axis=1)
        pixels = images.reshape(len(images), -1) / 255.0
        ratio = distances(pixels, self.train_pixels).min(axis=1) / self.memorization_scale
        return scores, d.min(axis=1), ratio

