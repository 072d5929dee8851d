"""ONNX for the platform's small image models: export from torch, static INT8 quantization, inference.

A model on disk is ``<name>.onnx`` plus ``<name>.json`` (its ``OnnxSpec``): the description that lets
any user-supplied ONNX classifier or feature extractor replace ours. Its version is a content hash of
both files, recorded with every label or score it produces.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from schemas.errors import SdgError


class ModelFileError(SdgError):
    """An ONNX model or its description that cannot be loaded or does not match."""


MANIFEST = "MANIFEST.json"


def seal(folder: Path) -> str:
    """Write ``folder``'s manifest (the SHA-256 of every file in it) and return the folder's content version:
    the hash of the manifest, which the model registry uses as the folder's name."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    text = json.dumps({"files": files}, indent=2, sort_keys=True)
    (folder / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def verify_sealed(folder: Path) -> str:
    """Check a registry folder before anything in it is loaded: its name is its manifest's hash, and every file
    the manifest lists still has its hash. Returns the version.

    Raises:
        ModelFileError: no manifest, or a file that was swapped, edited, zeroed or removed.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise ModelFileError(f"{folder} has no {MANIFEST}: it is not a sealed model folder (train it again)")
    text = manifest.read_text()
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    if version != folder.name:
        raise ModelFileError(f"{folder}: its manifest hashes to {version}, not to the folder's name: refusing to load it")
    for name, digest in json.loads(text)["files"].items():
        path = folder / name
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if actual != digest:
            raise ModelFileError(f"{path} was modified after it was sealed (sha256 {actual[:16]}, sealed as "
                                 f"{digest[:16]}): refusing to load it")
    return version


@dataclass(frozen=True)
class OnnxSpec:
    """What the platform needs to know to feed an ONNX image model and read its output.

    Args:
        name: The model's name (recorded with its outputs).
        kind: ``classifier`` (output: one score per class), ``features`` (output: one vector per image) or
            ``detector`` (output: a map at ``stride`` with per-class centre probabilities, box size and offset,
            and foreground: ``models.detector``).
        input: Input tensor name; shape (N, channels, size, size), float32.
        output: Output tensor name.
        image_size: Images are resized to ``size``×``size`` before inference.
        channels: 1 (grey) or 3 (RGB): images of the other kind are converted.
        scale: Pixel value range the model expects (uint8 0..255 maps onto it).
        invert: Dark ink on a light background (the platform's images have bright ink).
        output_is: For classifiers: ``logits`` (softmax is applied) or ``probabilities``.
        classes: Class labels in output order (default 0..C-1).
        stride: For detectors: input pixels per output cell.
    """

    name: str
    kind: Literal["classifier", "features", "detector"]
    input: str = "image"
    output: str = "output"
    image_size: int = 8
    channels: int = 1
    scale: tuple[float, float] = (0.0, 1.0)
    invert: bool = False
    output_is: Literal["logits", "probabilities"] = "logits"
    classes: tuple[int, ...] | None = None
    stride: int | None = None

    @classmethod
    def read(cls, path: Path) -> OnnxSpec:
        try:
            data = json.loads(path.read_text())
            data["scale"] = tuple(data.get("scale", (0.0, 1.0)))
            if data.get("classes") is not None:
                data["classes"] = tuple(data["classes"])
            return cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: not a valid model description: {e}") from e

    def described(self) -> dict[str, Any]:
        """The description as data; ``stride`` only for detectors (older descriptions, and versions, stay valid)."""
        return {k: v for k, v in asdict(self).items() if not (k == "stride" and v is None)}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.described(), indent=2))


def export_onnx(module: Any, path: Path, *, image_size: int, channels: int = 1, input: str = "image",
                output: str = "output") -> None:
    """Export a torch module taking (N, channels, size, size) images to ONNX with a dynamic batch axis."""
    import torch

    module.eval()
    with warnings.catch_warnings():  # the TorchScript exporter: no onnxscript dependency for these small nets
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.zeros(1, channels, image_size, image_size),), str(path), dynamo=False,
                          input_names=[input], output_names=[output],
                          dynamic_axes={input: {0: "batch"}, output: {0: "batch"}}, opset_version=17)


def quantize_int8(fp32: Path, int8: Path, calibration: np.ndarray, *, input: str = "image",
                  fp32_convs: tuple[int, ...] = (0,)) -> None:
    """Static INT8 quantization (QDQ, per-channel weights) calibrated on ``calibration`` (N, C, H, W) float32.

    The convolutions at ``fp32_convs`` (indices in graph order) stay fp32. The first one by default: its
    one-channel 3×3 kernels lose the most to INT8 and cost the least (for the edge model: accuracy drop vs fp32
    0.44 / 0.67 pt → 0.0 / 0.0 pt on two seeds, same latency). A detector keeps its 1×1 head (-1) too: its box
    sizes and offsets in INT8 cost 3.1 points of mAP@0.5:0.95, in fp32 none (digits, real-full, seed 0).
    Dynamic quantization is 4× slower than fp32 for these CNNs on this CPU, so it is not offered.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input: calibration[i:i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = int8.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    try:
        quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted({convs[i] for i in fp32_convs}) if convs else [])
    finally:
        prepared.unlink(missing_ok=True)


def fit_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A uint8 image, (H, W) grey or (H, W, C) colour, at size × size with ``channels`` (1: grey, 3: RGB)."""
    if image.shape[:2] == (size, size) and (image.ndim == 3) == (channels == 3):
        return image
    from PIL import Image

    converted = Image.fromarray(image).convert("L" if channels == 1 else "RGB")
    return np.asarray(converted.resize((size, size), Image.Resampling.BILINEAR))


class OnnxModel:
    """An ONNX Runtime session over uint8 images (grey or colour), fed as its ``OnnxSpec`` says."""

    def __init__(self, path: Path, spec: OnnxSpec | None = None, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        spec_path = path.with_suffix(".json")
        if spec is None:
            if not spec_path.exists():
                raise ModelFileError(f"{path} has no description {spec_path.name} (see models.runtime.OnnxSpec)")
            spec = OnnxSpec.read(spec_path)
        self.spec = spec
        self.path = path
        try:
            data = path.read_bytes()
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            # no spinning between runs: a processor's Python (decode, records) runs between batches on those cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise ModelFileError(f"{path}: onnxruntime cannot load it: {e}") from e
        names = ({i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()})
        if spec.input not in names[0] or spec.output not in names[1]:
            raise ModelFileError(f"{path}: has inputs {sorted(names[0])} and outputs {sorted(names[1])}; "
                                 f"its description names {spec.input!r} → {spec.output!r}")
        self.version = hashlib.sha256(data + json.dumps(spec.described(), sort_keys=True).encode()).hexdigest()[:16]

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) grey or (N, H, W, C) colour → the model's float32 (N, channels, size, size) input."""
        size, channels = self.spec.image_size, self.spec.channels
        if images.shape[1:3] != (size, size) or (images.ndim == 4) != (channels == 3):
            images = np.stack([fit_image(i, size, channels) for i in images])
        x = images.astype(np.float32) / 255.0
        if self.spec.invert:
            x = 1.0 - x
        low, high = self.spec.scale
        x = low + x * (high - low)
        return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def run(self, images: np.ndarray) -> np.ndarray:
        """The model's output for uint8 images (N, H, W[, C]); for ``logits`` classifiers, softmax probabilities."""
        out = self.session.run([self.spec.output], {self.spec.input: self.prepare(images)})[0]
        if self.spec.kind == "classifier" and self.spec.output_is == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out


__all__ = ["ModelFileError", "OnnxModel", "OnnxSpec", "export_onnx", "fit_image", "quantize_int8", "seal",
           "verify_sealed"]
