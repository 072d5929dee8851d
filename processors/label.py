"""The label processor: a batch of GeneratedSamples in, one LabeledSample per sample out.

GAN and diffusion samples get the labeler's label. Procedural samples keep the renderer's exact
labels (the class of a crop), and scenes (the renderer's, or composed of any generator's objects:
``mode=scene``) keep every object's class, box and mask; both are checked against the labeler: with a
classifier, each object of a scene is cropped from its box and classified; with a detector
(``models.detector``: the detection and segmentation tasks), the whole scene is detected and every object the
generator declares must be found, same class, with IoU ≥ 0.5, and nothing confident left over. A scene without
declared objects (an ingested real image) takes the detector's objects, boxes and masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.image import png_bytes, sample_image
from models.runtime import ModelFileError, OnnxModel, fit_image
from schemas.records import Annotation, GeneratedSample, Label, LabeledSample, now_ms

PROCEDURAL = "procedural"


class Classifier(Protocol):
    """An image classifier: uint8 (N, H, W) grey or (N, H, W, C) colour → probabilities (N, classes); ``OnnxModel``
    is one."""

    version: str

    def run(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Labeler:
    """A classifier and its name (both go into every label), and the class labels of its outputs."""

    name: str
    model: Classifier
    classes: tuple[int, ...]
    image_size: int = 8
    channels: int = 1
    stride: int | None = None  # a detector's: it labels whole scenes with its own boxes and masks

    @classmethod
    def load(cls, path: Path, *, threads: int = 1) -> Labeler:
        """The classifier at ``path``: an ONNX model with its ``.json`` description (the registry's or a user's).

        Raises:
            ModelFileError: a model that cannot be loaded, or one described as neither classifier nor detector.
        """
        model = OnnxModel(path, threads=threads)
        if model.spec.kind not in ("classifier", "detector"):
            raise ModelFileError(f"{model.path} is described as {model.spec.kind}, not a classifier or detector")
        if model.spec.kind == "detector" and not (model.spec.classes and model.spec.stride):
            raise ModelFileError(f"{model.path}: a detector's description names its classes and stride")
        classes = model.spec.classes or tuple(range(int(model.session.get_outputs()[0].shape[1])))
        return cls(name=model.spec.name, model=model, classes=classes, image_size=model.spec.image_size,
                   channels=model.spec.channels, stride=model.spec.stride if model.spec.kind == "detector" else None)


def object_crop(image: np.ndarray, bbox: list[float], size: int, channels: int) -> np.ndarray:
    """What a classifier (or the quality gate) sees of one object of a scene: a square crop around its box's centre,
    at ``size`` × ``size`` with ``channels``."""
    from PIL import Image

    x, y, w, h = (int(round(v)) for v in bbox)
    side = min(max(w, h, 1), 2 * max(image.shape))  # square crop around the box centre, like the reference digits
    cx, cy = x + w // 2, y + h // 2
    box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
    return fit_image(np.asarray(Image.fromarray(image).crop(box)), size, channels)


def _inputs(sample: GeneratedSample, size: int, channels: int) -> list[np.ndarray]:
    """What the classifier sees of a sample: each object's crop for a scene, else the whole image.

    Raises:
        ValueError: the image is not one of the sample's size, or a sample with objects that was not asked for
            as a scene (``mode=scene``: drawn by the renderer or composed of a generator's objects).
    """
    image = _image(sample)
    return [object_crop(image, o.bbox, size, channels) for o in sample.objects] or [fit_image(image, size, channels)]


def _image(sample: GeneratedSample) -> np.ndarray:
    """A sample's pixels, refusing objects on a sample that was not asked for as a scene (``ValueError``)."""
    if sample.objects and sample.conditioning.params.get("mode") != "scene":
        raise ValueError(f"a {sample.generator} sample with {len(sample.objects)} objects, not asked for as a "
                         "scene (mode=scene)")
    return sample_image(sample)


def _confidence(p: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """Per row of probabilities (N, classes): max probability, margin between the top two, entropy in nats."""
    top = -np.partition(-p, 1, axis=1)[:, :2] if p.shape[1] > 1 else np.concatenate([p, np.zeros_like(p)], axis=1)
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
    return top[:, 0].tolist(), (top[:, 0] - top[:, 1]).tolist(), entropy.tolist()


def _direct(sample: GeneratedSample, labeler: Labeler) -> bool:
    """Whether a sample's pixels are the classifier's input as they are (raw, one object, the model's size)."""
    return (not sample.objects and sample.image_format == "raw" and sample.channels == labeler.channels
            and sample.height == sample.width == labeler.image_size
            and len(sample.image) == labeler.image_size ** 2 * labeler.channels)


def label(samples: list[GeneratedSample], *, labeler: Labeler) -> list[LabeledSample | Exception]:
    """Label a batch; a sample that cannot be labeled comes back as the exception (→ dead letters), the rest
    of the batch is labeled.

    Agreement is always computed here, from the image: the label of a GAN or diffusion sample is the labeler's;
    a procedural sample keeps its renderer's labels, and agrees only if the labeler sees the same in every crop.
    An ingested real image (no class asked for) takes the labeler's label and agrees.
    """
    if labeler.stride is not None:
        return detect(samples, labeler=labeler)
    flags = [_direct(s, labeler) for s in samples]
    direct = [s for s, d in zip(samples, flags) if d]  # the common case: one copy for the whole batch
    size, channels = labeler.image_size, labeler.channels
    batch = [np.frombuffer(b"".join(s.image for s in direct), np.uint8).reshape(  # checked by _direct: one copy
        (len(direct), size, size) if channels == 1 else (len(direct), size, size, channels))] if direct else []
    crops: list[np.ndarray] = []
    owners: list[list[int] | ValueError] = []  # per sample: its input rows (direct ones first, in order)
    seen = 0
    for sample, is_direct in zip(samples, flags):
        if is_direct:
            owners.append([seen])
            seen += 1
            continue
        try:
            parts = _inputs(sample, labeler.image_size, labeler.channels)
        except ValueError as e:
            owners.append(ValueError(f"sample {sample.sample_id}: {e}"))
            continue
        start = len(direct) + len(crops)
        owners.append(list(range(start, start + len(parts))))
        crops.extend(parts)
    if crops:
        batch.append(np.stack(crops))
    probabilities = labeler.model.run(np.concatenate(batch)) if batch else np.zeros((0, len(labeler.classes)))
    predicted = np.asarray(labeler.classes)[probabilities.argmax(axis=1)].tolist()
    confidence, margin, entropy = _confidence(probabilities)
    name, version, now = labeler.name, labeler.model.version, now_ms()
    out: list[LabeledSample | Exception] = []
    validate = LabeledSample.__pydantic_validator__.validate_python  # one call per record, its label inside
    for sample, rows in zip(samples, owners):
        if isinstance(rows, ValueError):
            out.append(rows)
            continue
        if sample.objects:  # a scene: the renderer's objects are the labels; every one must agree
            agrees = all(predicted[r] == o.class_label for r, o in zip(rows, sample.objects))
            row = min(rows, key=confidence.__getitem__)  # the least sure crop speaks for the scene
            value = sample.conditioning.class_label if sample.conditioning.class_label is not None else predicted[row]
        else:
            row = rows[0]
            asked = sample.conditioning.class_label  # None for an ingested real image: nothing to disagree with
            agrees = asked is None or predicted[row] == asked
            value = asked if sample.generator == PROCEDURAL and asked is not None else predicted[row]
        out.append(validate({"run_id": sample.run_id, "created_ms": now, "sample": sample, "label": {
            "label": value, "confidence": confidence[row], "margin": margin[row], "entropy": entropy[row],
            "agrees": agrees, "labeler": name, "labeler_version": version, "objects": sample.objects}}))
    return out


IOU_AGREES = 0.5  # a declared object is found when a detection of its class overlaps it this much
CONFIDENT = 0.5  # a detection this sure that matches no declared object: the generator left it out


def detect(samples: list[GeneratedSample], *, labeler: Labeler) -> list[LabeledSample | Exception]:
    """Label scenes with a detector labeler (see the module's doc). The label is the class asked for (else the
    surest object's); confidence, margin and entropy are those of the least sure declared object at its centre
    (the surest detection's for an image without declared objects)."""
    from models.detector import decode, iou

    assert labeler.stride is not None
    out: dict[int, LabeledSample | Exception] = {}  # by the sample's place in the batch
    images: list[np.ndarray] = []
    good: list[tuple[int, GeneratedSample]] = []
    for i, sample in enumerate(samples):
        try:
            images.append(fit_image(_image(sample), labeler.image_size, labeler.channels))
            good.append((i, sample))
        except ValueError as e:
            out[i] = ValueError(f"sample {sample.sample_id}: {e}")
    if not good:
        return list(out.values())
    output = labeler.model.run(np.stack(images))
    classes = len(labeler.classes)
    found = decode(output, stride=labeler.stride, num_classes=classes)
    name, version, now = labeler.name, labeler.model.version, now_ms()
    for n, (i, sample) in enumerate(good):
        sx, sy = sample.width / labeler.image_size, sample.height / labeler.image_size
        mine = [(labeler.classes[d.class_label], (d.bbox[0] * sx, d.bbox[1] * sy, d.bbox[2] * sx, d.bbox[3] * sy),
                 d) for d in found if d.scene == n]  # best first
        # one class per place: a weaker detection of another class where a surer one stands is not a finding
        mine = [m for k, m in enumerate(mine) if not any(iou(m[1], s[1]) >= IOU_AGREES for s in mine[:k])]
        matched: list[int] = []
        for obj in sample.objects:
            box = (obj.bbox[0], obj.bbox[1], obj.bbox[2], obj.bbox[3])
            best = max((j for j, (c, _, _) in enumerate(mine) if c == obj.class_label and j not in matched),
                       key=lambda j: iou(mine[j][1], box), default=None)
            if best is not None and iou(mine[best][1], box) >= IOU_AGREES:
                matched.append(best)
        leftover = [j for j, (_, _, d) in enumerate(mine) if j not in matched and d.score >= CONFIDENT]
        agrees = bool(sample.objects) and len(matched) == len(sample.objects) and not leftover
        if sample.objects:
            objects = sample.objects
            speaker = min(matched, key=lambda j: mine[j][2].score) if agrees else None
        else:
            objects = [Annotation(class_label=c, bbox=list(b), mask_png=png_bytes(d.mask.astype(np.uint8) * 255)
                                  if d.mask is not None and d.mask.shape == (sample.height, sample.width) else None)
                       for c, b, d in mine if d.score >= CONFIDENT]
            speaker = 0 if mine else None
            agrees = bool(objects)
        if speaker is None:
            confidence, margin, entropy = 0.0, 0.0, float(np.log(classes))
        else:
            d = mine[speaker][2]
            cell = output[n, :classes, min(int((d.bbox[1] + d.bbox[3] / 2) / labeler.stride), output.shape[2] - 1),
                          min(int((d.bbox[0] + d.bbox[2] / 2) / labeler.stride), output.shape[3] - 1)]
            p = cell / max(float(cell.sum()), 1e-12)
            top = np.sort(cell)[::-1]
            confidence, margin = float(min(1.0, d.score)), float(max(0.0, top[0] - top[1]))
            entropy = float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum())
        asked = sample.conditioning.class_label
        value = asked if asked is not None else (mine[speaker][0] if speaker is not None else labeler.classes[0])
        out[i] = LabeledSample(run_id=sample.run_id, created_ms=now, sample=sample, label=Label(
            label=value, confidence=confidence, margin=margin, entropy=entropy, agrees=agrees, labeler=name,
            labeler_version=version, objects=objects))
    return [out[i] for i in range(len(samples))]
