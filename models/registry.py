"""The model registry: every trained model of every kind in one place, ``<root>/<kind>/<version>/``, the latest
named in ``<root>/<kind>/LATEST``, every version a hash of its content that is checked on each load.

Two layouts share it:

- generator checkpoints (``gan``, ``diffusion``): ``weights.safetensors``, ``config.json`` (with the label
  budgets) and ``samples.png``; the version hashes the weights and the config;
- deployed ONNX models (``labeler``, ``extractor``, ``edge``, a detector): ``{fp32,int8}.onnx`` with their
  ``.json`` descriptions, ``config.json`` and ``MANIFEST.json`` (every file's SHA-256); the version is the
  manifest's hash (``models.runtime.seal``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from models.generator import GeneratorError

TRAIN = {"gan": "sdg train-generator gan", "diffusion": "sdg train-generator diffusion",
         "labeler": "sdg train-labeler", "extractor": "sdg train-labeler", "edge": "sdg train-edge"}


def content_version(weights: bytes, config: dict[str, Any]) -> str:
    """The version of a model: a content hash of its weights and its config."""
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class ModelRegistry:
    """The models under ``root``, by kind and version (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, kind: str, weights: bytes, config: dict[str, Any], grid_png: bytes | None = None) -> str:
        version = content_version(weights, config)
        folder = self.root / kind / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.safetensors").write_bytes(weights)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if grid_png is not None:
            (folder / "samples.png").write_bytes(grid_png)
        (self.root / kind / "LATEST").write_text(version)
        return version

    def versions(self, kind: str) -> list[str]:
        folder = self.root / kind
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []

    def resolve(self, kind: str, version: str | None = None) -> Path:
        """The folder of ``kind`` at ``version`` (default: the latest saved)."""
        if version is None:
            latest = self.root / kind / "LATEST"
            if not latest.exists():
                how = f"; train one with `{TRAIN[kind]}`" if kind in TRAIN else ""
                raise GeneratorError(f"no {kind} model in {self.root}{how}")
            version = latest.read_text().strip()
        folder = self.root / kind / version
        if not (folder / "config.json").exists():
            raise GeneratorError(f"unknown {kind} version {version!r}; known: {self.versions(kind)}")
        return folder

    def load_files(self, kind: str, version: str | None = None) -> tuple[str, bytes, dict[str, Any]]:
        folder = self.resolve(kind, version)
        weights = (folder / "weights.safetensors").read_bytes()
        config = json.loads((folder / "config.json").read_text())
        actual = content_version(weights, config)
        if actual != folder.name:
            raise GeneratorError(f"{kind} checkpoint {folder.name} was modified: its content hashes to {actual}")
        return folder.name, weights, config

    def publish(self, staging: Path, kind: str) -> Path:
        """Seal a freshly written ONNX model folder, move it to ``<kind>/<content version>`` and mark it the latest."""
        from models.runtime import seal

        version = seal(staging)
        target = self.root / kind / version
        if target.exists():
            shutil.rmtree(staging)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
        (self.root / kind / "LATEST").write_text(version)
        return target

    def staging(self, kind: str) -> Path:
        """An empty folder to write a new ONNX model of ``kind`` into, before ``publish``."""
        folder = self.root / kind / ".staging"
        shutil.rmtree(folder, ignore_errors=True)
        return folder

    def onnx(self, kind: str, precision: str, version: str | None = None) -> Path:
        """The ``{precision}.onnx`` file of a deployed model (default: the latest), after checking its folder
        against its content hash."""
        from models.runtime import verify_sealed

        folder = self.resolve(kind, version)
        verify_sealed(folder)
        return folder / f"{precision}.onnx"
