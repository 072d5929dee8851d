"""The labeler: a small CNN trained on the few-labels subset only, deployed as ONNX (fp32 and static INT8).

Its trunk starts from the contrastive feature extractor (trained on unlabeled real images, so it
costs no labels); then it is fine-tuned with augmentation on the few labeled images. The label
budget it consumed goes into its config, like every model's.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from models.features import FeatureExtractor, SmallCnn, as_tensor, augment
from models.reference import LabeledData
from models.runtime import OnnxSpec, export_onnx, quantize_int8


@dataclass(frozen=True)
class LabelerConfig:
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    width: int = 32
    num_classes: int = 10
    seed: int = 0


def train_labeler(data: LabeledData, config: LabelerConfig = LabelerConfig(), *, init: FeatureExtractor | None = None,
                  progress: Callable[[int], None] | None = None) -> SmallCnn:
    """Fine-tune on labeled images (from ``Splits.labeled("few")``) with augmentation."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x_all = as_tensor(data.images)
    model = SmallCnn(config.num_classes, width=config.width, image_size=tuple(x_all.shape[2:]), channels=x_all.shape[1])
    if init is not None:
        model.trunk.load_state_dict(copy.deepcopy(init.net.trunk.state_dict()))
    y_all = torch.as_tensor(data.labels, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    for _ in range(config.steps):
        index = torch.randint(0, len(x_all), (config.batch_size,), generator=generator)
        loss = F.cross_entropy(model(augment(x_all[index], generator)), y_all[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(1)
    return model.eval()


@dataclass(frozen=True)
class Deployed:
    """A model exported to ``folder``: ``fp32.onnx``, ``int8.onnx`` (each with its ``.json`` description)."""

    folder: Path
    fp32: Path
    int8: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def deploy(module: torch.nn.Module, folder: Path, spec: OnnxSpec, *, calibration: np.ndarray,
           config: dict[str, Any]) -> Deployed:
    """Export fp32 ONNX, quantize to static INT8 on ``calibration`` images (N, H, W[, C]) in [0, 1], write
    descriptions."""
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    export_onnx(module, fp32, image_size=spec.image_size, channels=spec.channels, input=spec.input, output=spec.output)
    quantize_int8(fp32, int8, as_tensor(calibration).numpy(), input=spec.input)
    spec.write(fp32.with_suffix(".json"))
    spec.write(int8.with_suffix(".json"))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return Deployed(folder, fp32, int8)


def labeler_spec(config: LabelerConfig, image_size: int = 8, channels: int = 1) -> OnnxSpec:
    return OnnxSpec(name="sdg-labeler", kind="classifier", output="logits", output_is="logits",
                    image_size=image_size, channels=channels, classes=tuple(range(config.num_classes)))


def labeler_config(config: LabelerConfig, data: LabeledData, extractor_version: str | None) -> dict[str, Any]:
    return {"kind": "labeler", "config": asdict(config), "label_budgets": [data.budget.as_dict()],
            "trunk_from": extractor_version}
