"""Identity rules (DESIGN §3): the same request always names the same sample."""

from __future__ import annotations

import hashlib
import json
from typing import Mapping


def sample_id(generator: str, version: str, seed: int, class_label: int, params: Mapping[str, str] | None = None) -> str:
    """A stable id from (generator, generator version, seed, conditioning): every sink can de-duplicate on it."""
    conditioning = json.dumps({"class_label": class_label, "params": dict(sorted((params or {}).items()))},
                              sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{generator}\x00{version}\x00{seed}\x00{conditioning}".encode()).hexdigest()
    return f"{generator}-{digest[:24]}"
