"""A stream with known-good and known-bad samples, for measuring how well the gate catches bad ones.

Good samples are held-out real test images under their true class (a perfect generator). Bad ones
are uniform noise, real images under a wrong class, and near-copies of training images (memorized).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

from models.image import encode_image, to_uint8
from models.reference import Splits
from schemas.identity import sample_id
from schemas.records import Conditioning, GeneratedSample

Kind = Literal["good", "noise", "wrong_class", "memorized"]
PROBE = "probe"


def _sample(image: np.ndarray, label: int, seed: int, run_id: str, generator: str) -> GeneratedSample:
    data, image_format = encode_image(image)
    return GeneratedSample(
        run_id=run_id, sample_id=sample_id(generator, "probe-v1", seed, label, {}), job_id=f"{run_id}-probe",
        generator=generator, generator_version="probe-v1", seed=seed, conditioning=Conditioning(class_label=label),
        image=data, image_format=image_format, image_sha256=hashlib.sha256(data).hexdigest(), width=image.shape[1], height=image.shape[0],
        channels=1 if image.ndim == 2 else image.shape[2],
        node_id="probe")


def mixed_stream(splits: Splits, *, good: int, noise: int, wrong_class: int, memorized: int = 0, run_id: str,
                 seed: int = 0, generator: str = PROBE) -> list[tuple[GeneratedSample, Kind]]:
    """``good`` real test images and the bad ones, shuffled; each with what it really is."""
    rng = np.random.default_rng(seed)
    test_images, test_labels = splits.test_set()
    picks = rng.permutation(len(test_images))
    kinds: list[tuple[np.ndarray, int, Kind]] = []
    for i in picks[:good]:
        kinds.append((to_uint8(test_images[i]), int(test_labels[i]), "good"))
    for _ in range(noise):
        kinds.append((rng.integers(0, 256, test_images.shape[1:]).astype(np.uint8), int(rng.integers(10)), "noise"))
    for i in picks[good:good + wrong_class]:
        kinds.append((to_uint8(test_images[i]), int((test_labels[i] + rng.integers(1, 10)) % 10), "wrong_class"))
    # a memorizing generator: copies of training images under their class (labels read for evaluation only)
    reference = splits.reference
    for i in rng.permutation(splits.unlabeled)[:memorized]:
        kinds.append((to_uint8(reference.images[i]), int(reference.labels[i]), "memorized"))
    order = rng.permutation(len(kinds))
    out = []
    for position, index in enumerate(order):
        image, label, kind = kinds[index]
        out.append((_sample(image, label, seed * 1_000_000 + position, run_id, generator), kind))
    return out
