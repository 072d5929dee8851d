"""Quality metrics against independent references: closed forms, batch recomputation, brute force."""

from __future__ import annotations

import numpy as np
import pytest

from models.quality import RunningMoments, fid, frechet_distance, knn_radii, prdc, realism


def test_fid_of_two_gaussians_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 0.0, -1.0, 1.0])
    var1, var2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 0.5, 0.25])
    closed = float(((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum())
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(closed, rel=1e-9)
    a = RunningMoments(4).update(rng.normal(mu1, np.sqrt(var1), (200_000, 4)))
    b = RunningMoments(4).update(rng.normal(mu2, np.sqrt(var2), (200_000, 4)))
    assert fid(a, b) == pytest.approx(closed, rel=0.02)


def test_fid_of_rotated_covariances_matches_the_closed_form() -> None:
    """Commuting full covariances: sqrt(Σ1 Σ2) has a closed form in their shared eigenbasis."""
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
    e1, e2 = np.array([1.0, 2.0, 3.0, 0.5, 0.1]), np.array([2.0, 2.0, 1.0, 0.5, 0.4])
    c1, c2 = q @ np.diag(e1) @ q.T, q @ np.diag(e2) @ q.T
    closed = float((e1 + e2 - 2 * np.sqrt(e1 * e2)).sum())
    assert frechet_distance(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(closed, rel=1e-7)


def test_fid_through_the_real_sides_square_root_is_the_same() -> None:
    """The fast path (Σ2's symmetric root, computed once per real set) against the general one, on a full-rank real
    covariance and on windows smaller than the dimension (singular covariances)."""
    from models.quality import symmetric_root

    rng = np.random.default_rng(3)
    real = rng.normal(size=(1000, 16)) @ rng.normal(size=(16, 16))
    root = symmetric_root(np.cov(real, rowvar=False))
    assert np.allclose(root @ root, np.cov(real, rowvar=False))
    for n in (5, 12, 300):
        window = rng.normal(0.2, 1.1, size=(n, 16))
        args = (window.mean(0), np.cov(window, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
        assert frechet_distance(*args, root2=root) == pytest.approx(frechet_distance(*args), rel=1e-9)


def test_streaming_fid_equals_batch_fid() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 8)), rng.normal(0.3, 1.2, size=(400, 8))
    streamed = RunningMoments(8)
    for row in x[:250]:
        streamed.update(row)  # one sample at a time
    streamed = streamed + RunningMoments(8).update(x[250:])  # merged with a later window
    batch = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert streamed.n == 500
    assert np.allclose(streamed.cov, np.cov(x, rowvar=False))
    assert fid(streamed, RunningMoments(8).update(y)) == pytest.approx(batch, rel=1e-9)


def _brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    def radius(points: np.ndarray, i: int) -> float:
        d = sorted(float(np.linalg.norm(points[i] - points[j])) for j in range(len(points)) if j != i)
        return d[k - 1]

    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, j) for j in range(len(fake))]
    dist = [[float(np.linalg.norm(r - f)) for f in fake] for r in real]
    precision = np.mean([any(dist[i][j] < r_real[i] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(dist[i][j] < r_fake[j] for j in range(len(fake))) for i in range(len(real))])
    density = np.mean([sum(dist[i][j] < r_real[i] for i in range(len(real))) for j in range(len(fake))]) / k
    coverage = np.mean([min(dist[i]) < r_real[i] for i in range(len(real))])
    return {"precision": float(precision), "recall": float(recall), "density": float(density),
            "coverage": float(coverage)}


def test_prdc_equals_a_brute_force_implementation() -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.4, 1.3, size=(45, 3))
    fast, brute = prdc(real, fake, k=5), _brute_prdc(real, fake, 5)
    assert fast == pytest.approx(brute, abs=1e-12)
    radii = knn_radii(real, 5)
    scores = realism(fake, real, radii)
    assert scores == pytest.approx([max(radii[i] / np.linalg.norm(f - real[i]) for i in range(60)) for f in fake])
    assert ((scores >= 1) == np.array([any(np.linalg.norm(f - r) <= radii[i] for i, r in enumerate(real))
                                       for f in fake])).all()


def test_prdc_refuses_sets_smaller_than_k() -> None:
    with pytest.raises(ValueError, match="more than k=5"):
        prdc(np.zeros((10, 2)), np.zeros((5, 2)), k=5)
