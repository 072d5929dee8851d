"""Identity rules (DESIGN §3): the same request always names the same sample."""

from __future__ import annotations

import hashlib
import json
from typing import Mapping, Sequence


def sample_id(generator: str, version: str, seed: int, class_label: int, params: Mapping[str, str] | None = None) -> str:
    """A stable id from (generator, generator version, seed, conditioning): every sink can de-duplicate on it."""
    return sample_ids(generator, version, [seed], [class_label], params)[0]


def sample_ids(generator: str, version: str, seeds: Sequence[int], class_labels: Sequence[int],
               params: Mapping[str, str] | None = None) -> list[str]:
    """``sample_id`` of each (seed, class label) of one job: the conditioning is
    ``{"class_label":…,"params":{…}}`` as sorted, compact JSON."""
    encoded = json.dumps(dict(sorted((params or {}).items())), sort_keys=True, separators=(",", ":"))
    prefix = f"{generator}\x00{version}\x00"
    return [f"{generator}-" + hashlib.sha256(
        f'{prefix}{seed}\x00{{"class_label":{int(label)},"params":{encoded}}}'.encode()).hexdigest()[:24]
        for seed, label in zip(seeds, class_labels)]
