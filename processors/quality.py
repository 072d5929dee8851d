"""The quality processor's logic: windows per generator, set metrics against the real baseline, the gate.

Each sample is scored on its own as it arrives (features, realism, memorization, label agreement);
a sample failing those checks is rejected. Per generator, samples collect in a tumbling window
(closed at ``window_size`` samples or after ``max_window_s``) whose running moments are updated per
candidate sample. When it closes, the processor scores the window and the sliding window (this one
and the ``slide`` − 1 before it, moments merged), per generator and per class, against the
real-vs-real baseline at the same n, then decides every sample of the window: accepted, review or
rejected, each with a reason. A multi-object scene is scored on its objects: each one's crop like a sample (realism,
memorization), the scene taking its worst object's score. Scenes have windows of their own per generator, measured
twice: on their object crops against the same real objects (ids ``<generator>@<version>/scenes:…``: a scene
generator that collapses onto a few objects shows like a sample generator), and as whole scenes fitted to the
extractor's input against real scenes of their size composed of the real train objects (``…/scenes/whole:…``:
a wrong layout, object count or background shows there); ``scene_gate`` says whether their state decides scenes too.

``QualityProcessor`` is the stateful step: the runtime re-keys samples by generator version (so one worker
owns each generator's windows) and hands each one over with its partition's store, where a generator's
open window is one row per sample (its record bytes), one row per closed window the sliding window still
spans (its candidates' features) and a small head. In memory a generator's windows are a
``GeneratorWindows`` with running moments updated per sample; after a restart or a rebalance they are
rebuilt from the store (the same per-sample scoring and updates, replayed). Nothing here imports Kafka.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.image import sample_image, sample_images
from models.quality import Reference, RunningMoments
from models.reference import Splits
from models.runtime import fit_image
from processors.label import Labeler, label, object_crop
from schemas.errors import UndecodableRecord
from schemas.records import (
    Gate,
    GeneratedSample,
    Label,
    LabeledSample,
    Metrics,
    QualityWindow,
    Record,
    SampleDecision,
    Score,
    ScoredSample,
    now_ms,
)
from streams.runtime import Store

log = logging.getLogger(__name__)


class Extractor(Protocol):
    """The feature extractor the gate measures with: uint8 images (N, H, W[, C]) → features (N, d)."""

    def run(self, images: np.ndarray) -> np.ndarray: ...


Relabel = Callable[[list[GeneratedSample]], list[Label | Exception]]
"""The labeler the gate trusts: samples in, each one's label (or why it cannot be labeled) out."""


class QualityConfig(BaseModel):
    """Models, windows and gate of the label and quality processors (``SDG_QUALITY__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labeler: Path | None = Field(default=None, description="An ONNX classifier with its .json description "
                                                          "(default: the trained labeler in the model registry).")
    labeler_precision: Literal["int8", "fp32"] = "int8"
    extractor: Path | None = Field(default=None, description="An ONNX feature extractor with its .json description.")
    threads: int = Field(default=1, ge=0, description="onnxruntime threads per processor (0: its default).")
    window_size: int = Field(default=200, ge=10, description="Samples per tumbling window.")
    max_window_s: float = Field(default=10.0, gt=0, description="A window closes after this long even if not full.")
    slide: int = Field(default=5, ge=1, description="Tumbling windows per sliding window.")
    k: int = Field(default=5, ge=1, description="Neighbours of the k-NN metrics.")
    preset: Literal["relative", "absolute"] = Field(
        default="relative", description="relative: within margins of the real baseline; absolute: FID < 30 and "
                                        "recall > 0.85 (numbers meant for Inception features).")
    fid_margin: float = Field(default=0.05, ge=0, description="Window FID at most the baseline FID plus this "
                                                          "fraction of the real features' total variance.")
    recall_margin: float = Field(default=0.15, ge=0)
    coverage_margin: float = Field(default=0.2, ge=0)
    min_window: int = Field(default=50, ge=2, description="A sliding window with fewer samples is warming up.")
    min_margin: float = Field(default=0.5, ge=0, le=1, description="Labeler top-2 margin below which a label is uncertain.")
    reject_realism_factor: float = Field(default=0.5, gt=0, description="Reject below this × the real 1% realism.")
    scene_gate: Literal["objects", "window"] = Field(default="objects", description=(
        "objects: a scene is decided on its objects (realism, memorization, labels), its windows' set metrics "
        "recorded but not applied (renderers are unrealistic on purpose: domain randomization); window: also by its "
        "windows' state (the worse of its objects' and its whole scenes'), like a single sample."))


WindowState = Literal["warming_up", "admissible", "inadmissible"]
SEVERITY = {"admissible": 0, "warming_up": 1, "inadmissible": 2}


def window_gate(metrics: Metrics, baseline: Metrics, config: QualityConfig, *, variance: float) -> tuple[WindowState, str]:
    """Whether a window is admissible, and why (or why not).

    The FID margin is a fraction of the real features' total variance (the trace of their covariance),
    so it means the same for any extractor; a ratio to the baseline would not, because the baseline's
    finite-sample bias shrinks with n while a generator's real gap does not.
    """
    if config.preset == "absolute":
        checks = [("fid", metrics.fid < 30.0, "< 30"), ("recall", metrics.recall > 0.85, "> 0.85")]
    else:
        fid_limit = baseline.fid + config.fid_margin * variance
        checks = [
            ("fid", metrics.fid <= fid_limit, f"≤ {fid_limit:.3g}"),
            ("recall", metrics.recall >= baseline.recall - config.recall_margin,
             f"≥ {baseline.recall - config.recall_margin:.2f}"),
            ("coverage", metrics.coverage >= baseline.coverage - config.coverage_margin,
             f"≥ {baseline.coverage - config.coverage_margin:.2f}"),
        ]
    failed = [f"{name} {getattr(metrics, name):.3g} not {limit}" for name, ok, limit in checks if not ok]
    return ("inadmissible", "; ".join(failed)) if failed else ("admissible", "within the baseline margins")


@dataclass
class Closed:
    """A closed tumbling window's candidates, kept for the sliding windows after it."""

    moments: RunningMoments
    features: np.ndarray
    labels: np.ndarray
    sample_ids: frozenset[str] = frozenset()
    wholes: np.ndarray | None = None  # a scene window's candidates fitted whole (n, d), and their sizes (n,)
    sizes: np.ndarray | None = None


@dataclass
class Pending:
    """A sample waiting for its window: its features (k, d) and classes (k,) (one row, or one per object of a
    scene), per-sample score and per-sample rejection (None: a candidate)."""

    record: LabeledSample
    features: np.ndarray
    classes: np.ndarray
    score: Score
    rejection: str | None
    duplicate: bool = False  # already in the sliding window (a re-delivery): not counted twice
    whole: np.ndarray | None = None  # a scene's features fitted whole (1, d), and its side
    size: int = 0


@dataclass
class GeneratorWindows:
    """One generator's open tumbling window and the closed ones the sliding window still spans.

    The running moments cover the window's candidates: samples that passed the per-sample checks.
    Those checks catch outliers; the set metrics catch what no single sample shows (mode collapse,
    missing diversity, a shifted distribution), without a few rejected outliers deciding for the rest.
    """

    generator: str
    dim: int
    slide: int
    version: str = ""
    scenes: bool = False  # a window of multi-object scenes, measured on their objects
    seq: int = 0
    opened_ms: int | None = None
    pending: list[Pending] = field(default_factory=list)
    moments: RunningMoments | None = None
    history: deque[Closed] = field(default_factory=deque)

    def window_id(self, kind: str = "tumbling", class_label: int | None = None, *, whole: bool = False) -> str:
        version = f"@{self.version[:8]}" if self.version else ""
        suffix = ("/scenes" if self.scenes else "") + ("/whole" if whole else "") + (
            "" if class_label is None else f"/{class_label}")
        return f"{self.generator}{version}{suffix}:{kind}:{self.seq}"

    def add(self, item: Pending, now_ms: int) -> None:
        """Add a sample to the open window; one already in the sliding window is marked a duplicate."""
        if self.moments is None:
            self.moments = RunningMoments(self.dim)
        if self.opened_ms is None:
            self.opened_ms = now_ms
        sample_id = item.record.sample.sample_id
        item.duplicate = any(p.record.sample.sample_id == sample_id for p in self.pending) or any(
            sample_id in closed.sample_ids for closed in self.history)
        self.pending.append(item)
        if item.rejection is None and not item.duplicate:
            self.moments.update(item.features)

    def remember(self, closed: Closed) -> None:
        self.history.append(closed)
        while len(self.history) > self.slide - 1:
            self.history.popleft()


class QualityJudge:
    """Scores samples and windows and decides samples against one ``Reference`` (one extractor, one real set)."""

    def __init__(self, reference: Reference, extractor: Extractor, config: QualityConfig, *,
                 relabel: Relabel | None = None) -> None:
        """``extractor`` maps uint8 images (N, H, W) to features (N, d) with ``run`` (an ``OnnxModel``);
        ``relabel`` is the labeler that re-checks every label a record brings (the deployed processor always
        has one: a label is what a producer says, and the gate decides on what it can check itself)."""
        self.reference = reference
        self.extractor = extractor
        self.config = config
        self.relabel = relabel
        self.review_realism = reference.realism_quantiles["q01"]
        self.reject_realism = self.review_realism * config.reject_realism_factor
        self._scenes: dict[int, Reference] = {}

    def scene_reference(self, size: int) -> Reference:
        """The real side of whole-scene windows of ``size`` × ``size`` scenes (``Reference.of_scenes``), once per size."""
        if size not in self._scenes:
            self._scenes[size] = self.reference.of_scenes(size, self.extractor.run)
        return self._scenes[size]

    @classmethod
    def load(cls, extractor: Path, splits: Splits, config: QualityConfig, labeler: Labeler) -> QualityJudge:
        """The judge over ``splits`` (its real reference set) with the extractor at ``extractor`` (an ONNX model
        with its description), re-checking every label with ``labeler``."""
        from models.runtime import OnnxModel

        model = OnnxModel(extractor, threads=config.threads)
        reference = Reference.build(splits, model.run, extractor=model.spec.name, extractor_hash=model.version,
                                    k=config.k)

        def relabel(samples: list[GeneratedSample]) -> list[Label | Exception]:
            return [r if isinstance(r, Exception) else r.label for r in label(samples, labeler=labeler)]

        return cls(reference, model, config, relabel=relabel)

    def checked(self, records: list[LabeledSample]) -> list[tuple[LabeledSample, str | None]]:
        """Each record with the label the gate's labeler gives its sample, and why the record's own label is
        refused (None: the labeler gives the same class and agreement)."""
        if self.relabel is None:
            return [(r, None) for r in records]
        out: list[tuple[LabeledSample, str | None]] = []
        for record, given in zip(records, self.relabel([r.sample for r in records])):
            if isinstance(given, Exception):
                raise ValueError(f"sample {record.sample.sample_id} cannot be labeled: {given}")
            said = record.label
            why = None
            if said.labeler_version != given.labeler_version:
                why = f"labeled by {said.labeler}@{said.labeler_version}; the gate checks with {given.labeler_version}"
            elif (said.label, said.agrees) != (given.label, given.agrees):
                why = (f"class {said.label} (agrees {said.agrees}) the record says; the labeler gives class "
                       f"{given.label} (agrees {given.agrees})")
            out.append((record.model_copy(update={"label": given}), None if why is None else f"label not reproduced: {why}"))
        return out

    def assess(self, records: list[LabeledSample], window_id: str) -> list[Pending]:
        """Features, per-sample score and per-sample rejection of each record (its label re-checked). A scene is
        measured on its objects' crops and takes its worst object's score (least realistic, farthest, closest to a
        training image)."""
        ref = self.reference
        singles = [r.sample for r in records if not r.sample.objects]
        fitted = iter(sample_images(singles, ref.channels) if singles else ())
        parts, classes, wholes, sizes = [], [], [], []
        for r in records:
            if r.sample.objects:
                image = sample_image(r.sample)
                parts.append(np.stack([object_crop(image, o.bbox, ref.image_size, ref.channels) for o in r.sample.objects]))
                classes.append(np.array([o.class_label for o in r.sample.objects], dtype=np.int64))
                wholes.append(fit_image(image, ref.image_size, ref.channels))
                sizes.append(image.shape[0])
            else:
                parts.append(next(fitted)[None])
                classes.append(np.array([r.label.label], dtype=np.int64))  # agreed: the class asked for
        images = np.concatenate(parts)
        every = self.extractor.run(np.concatenate([images, np.stack(wholes)]) if wholes else images).astype(np.float32)
        features, whole = every[:len(images)], iter(every[len(images):, None])
        realism, nn_distance, memorization = ref.per_sample(features, images)
        out, start, side = [], 0, iter(sizes)
        for (record, refused), own in zip(self.checked(records), classes):
            part = slice(start, start + len(own))
            start = part.stop
            score = Score(window_id=window_id, realism=float(realism[part].min()),
                          nn_distance=float(nn_distance[part].max()), memorization_ratio=float(memorization[part].min()),
                          extractor=ref.extractor, extractor_hash=ref.extractor_hash)
            scene = bool(record.sample.objects)
            out.append(Pending(record, features[part], own, score, refused or self.rejection(record, score),
                               whole=next(whole) if scene else None, size=next(side) if scene else 0))
        return out

    def rejection(self, record: LabeledSample, score: Score) -> str | None:
        """Why a sample fails on its own (memorized, mislabeled, unrealistic), or None."""
        label, scene = record.label, bool(record.sample.objects)
        at = "an object at " if scene else ""  # a scene is scored by its worst object
        if score.memorization_ratio < self.reference.memorization_floor:
            return (f"memorized: {at}{score.memorization_ratio:.2f}× the real median distance to the nearest "
                    f"training image (floor {self.reference.memorization_floor:.2f})")
        if not label.agrees:
            said = ("otherwise for an object (its class, or with a detector its box: IoU < 0.5, or one undeclared)"
                    if scene else f"{label.label}")
            return (f"labeler disagrees with the conditioning: class {record.sample.conditioning.class_label}, "
                    f"labeler says {said} (margin {label.margin:.2f})")
        if score.realism < self.reject_realism:
            return f"off the real manifold: {at}realism {score.realism:.2f} < {self.reject_realism:.2f}"
        return None

    def due(self, windows: GeneratorWindows, now_ms: int) -> bool:
        """Whether the open window is full or old enough to close."""
        return len(windows.pending) >= self.config.window_size or (
            bool(windows.pending) and windows.opened_ms is not None
            and now_ms - windows.opened_ms >= self.config.max_window_s * 1000)

    def _window(self, windows: GeneratorWindows, kind: Literal["tumbling", "sliding"], moments: RunningMoments,
                features: np.ndarray, times: list[int], class_label: int | None,
                run_id: str, *, scenes: Reference | None = None) -> tuple[QualityWindow, str]:
        """One window's metrics against the real set and its state; ``scenes``: a whole-scene window's reference."""
        ref = scenes or self.reference
        n = len(features)
        needed = self.config.min_window if class_label is None else ref.k + 1
        baseline = None
        if n < max(needed, ref.k + 1):
            state: WindowState = "warming_up"
            metrics = Metrics(n=n, fid=0.0, precision=0.0, recall=0.0, density=0.0, coverage=0.0)
            why = f"{n} candidate samples, fewer than {max(needed, ref.k + 1)}"
        else:
            baseline = ref.baseline(n, class_label)
            metrics = ref.metrics(moments, features, class_label)
            variance = float(np.trace(ref.sets[class_label].moments.cov))
            state, why = window_gate(metrics, baseline, self.config, variance=variance)
        window = QualityWindow(
            run_id=run_id, window_id=windows.window_id(kind, class_label, whole=scenes is not None),
            generator=windows.generator,
            generator_version=windows.pending[-1].record.sample.generator_version, class_label=class_label, kind=kind,
            start_ms=min(times), end_ms=max(times), metrics=metrics, baseline=baseline,
            memorized_fraction=0.0, extractor=ref.extractor, extractor_hash=ref.extractor_hash,
            reference_split=ref.name, gate_state=state)
        return window, why

    def close(self, windows: GeneratorWindows) -> list[Record]:
        """Score the open window and its sliding window, decide each of its samples, start the next window."""
        pending = windows.pending
        candidates = [p for p in pending if p.rejection is None and not p.duplicate]
        features = np.concatenate([p.features for p in candidates]) if candidates else np.zeros((0, windows.dim),
                                                                                               np.float32)
        labels = np.concatenate([p.classes for p in candidates]) if candidates else np.zeros(0, np.int64)
        moments = windows.moments if windows.moments is not None else RunningMoments(windows.dim)
        times = [p.record.sample.created_ms for p in pending]
        floor = self.reference.memorization_floor
        memorized = float(np.mean([p.score.memorization_ratio < floor for p in pending]))
        run_id = pending[-1].record.run_id
        tumbling, _ = self._window(windows, "tumbling", moments, features, times, None, run_id)
        out: list[Record] = [tumbling]
        for c in sorted(set(labels.tolist())):
            members = labels == c
            if members.sum() > self.reference.k:
                class_moments = RunningMoments(windows.dim).update(features[members])
                out.append(self._window(windows, "tumbling", class_moments, features[members], times, c, run_id)[0])
        closed = Closed(moments, features, labels, frozenset(p.record.sample.sample_id for p in pending))
        if windows.scenes:
            closed.wholes = np.concatenate([p.whole for p in candidates if p.whole is not None] or
                                           [np.zeros((0, windows.dim), np.float32)])
            closed.sizes = np.array([p.size for p in candidates if p.whole is not None], dtype=np.int64)
        span = [*windows.history, closed]
        merged = span[0].moments
        for part in span[1:]:
            merged = merged + part.moments
        sliding, why = self._window(windows, "sliding", merged, np.concatenate([p.features for p in span]), times,
                                    None, run_id)
        out.append(sliding)
        state, why = sliding.gate_state, f"{sliding.window_id}: {why}"
        if windows.scenes:
            whole, whole_why = self._whole_windows(windows, span, pending, times, run_id)
            out += whole
            worst = max([(sliding, why), (whole[-1], whole_why)], key=lambda w: SEVERITY[w[0].gate_state])
            state, why = (worst[0].gate_state, worst[1]) if self.config.scene_gate == "window" else ("admissible", "")
        out = [w.model_copy(update={"memorized_fraction": memorized}) for w in out]  # type: ignore[union-attr]
        for item in pending:
            out += self.decide(item, state, why)
        windows.remember(closed)
        windows.seq += 1
        windows.pending, windows.moments, windows.opened_ms = [], None, None
        return out

    def _whole_windows(self, windows: GeneratorWindows, span: list[Closed], pending: list[Pending], times: list[int],
                       run_id: str) -> tuple[list[QualityWindow], str]:
        """A scene window's tumbling and sliding windows measured on whole scenes against real scenes of their size
        (the window's most common one: scenes of other sizes are left out of them), and the sliding one's reason."""
        size = Counter(p.size for p in pending).most_common(1)[0][0]
        scenes = self.scene_reference(size)
        out: list[QualityWindow] = []
        for kind, parts in (("tumbling", span[-1:]), ("sliding", span)):
            features = np.concatenate([c.wholes[c.sizes == size] for c in parts if c.wholes is not None and
                                       c.sizes is not None] + [np.zeros((0, windows.dim), np.float32)])
            window, why = self._window(windows, kind, RunningMoments(windows.dim).update(features),  # type: ignore[arg-type]
                                       features, times, None, run_id, scenes=scenes)
            out.append(window)
        return out, f"{out[-1].window_id}: {why}"

    def decide(self, item: Pending, state: WindowState, why: str) -> list[Record]:
        """The scored record and the decision for one sample; every reason reads ``<category>: <details>``."""
        record, c = item.record, self.config
        scene = bool(record.sample.objects)
        decision: Literal["accepted", "review", "rejected"]
        if item.rejection is not None:
            decision, reason = "rejected", item.rejection
        elif state == "inadmissible":
            decision, reason = "rejected", f"inadmissible window: {why}"
        elif state == "warming_up":
            decision, reason = "review", f"window warming up: {why}"
        elif record.label.margin < c.min_margin:
            decision, reason = "review", f"uncertain label: margin {record.label.margin:.2f} < {c.min_margin:.2f}"
        elif item.score.realism < self.review_realism:
            decision, reason = "review", (f"edge of the real manifold: {'an object at ' if scene else ''}realism "
                                          f"{item.score.realism:.2f} < {self.review_realism:.2f} (real 1%)")
        else:
            decision, reason = "accepted", ("accepted: every object labeled confidently and in agreement, and "
                                            "realistic" if scene else
                                            "accepted: window admissible, label confident and in agreement, realistic")
        scored = ScoredSample(run_id=record.run_id, sample=record.sample, label=record.label, score=item.score)
        gate = Gate(decision=decision, reason=reason, gate=c.preset)
        return [scored, SampleDecision(run_id=record.run_id, sample=record.sample, label=record.label,
                                       score=item.score, gate=gate)]


def _pack_closed(closed: Closed) -> bytes:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"features": closed.features, "labels": closed.labels,
                              "sample_ids": np.array(sorted(closed.sample_ids))}
    if closed.wholes is not None and closed.sizes is not None:
        arrays |= {"wholes": closed.wholes, "sizes": closed.sizes}
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack_closed(data: bytes, dim: int) -> Closed:
    arrays = np.load(io.BytesIO(data))  # no pickles: the changelog is a topic like any other
    return Closed(RunningMoments(dim).update(arrays["features"]), arrays["features"], arrays["labels"],
                  frozenset(str(i) for i in arrays["sample_ids"]), arrays.get("wholes"), arrays.get("sizes"))


SCENES = "#scenes"  # the state key's suffix of a generator's scene windows (no name holds a '#')


def generator_key(record: LabeledSample) -> str:
    """The state key of a labeled sample: its generator and version, and whether it is a scene (``key_by`` of the
    quality step: single samples and scenes of one generator have windows of their own)."""
    return f"{record.sample.generator}@{record.sample.generator_version}" + (SCENES if record.sample.objects else "")


class QualityProcessor:
    """The quality step's functions over a partition's ``Store`` of bytes (see the module docstring)."""

    def __init__(self, judge: QualityJudge, *, max_record_bytes: int) -> None:
        from schemas.codec import RecordCodec
        from streams.dead_letter import ENVELOPE_BYTES

        self.judge = judge
        self.codec = RecordCodec()
        self.max_record_bytes = max_record_bytes
        # a sample's scored and decided copies add a few hundred bytes to it: a larger one has no room for them
        self.max_input = max_record_bytes - ENVELOPE_BYTES
        reference = judge.reference
        size, channels = reference.image_size, reference.channels
        blank = np.zeros((1, size, size) if channels == 1 else (1, size, size, channels), np.uint8)
        self.dim = int(judge.extractor.run(blank).shape[1])
        self.slide = judge.config.slide

    def check(self, record: LabeledSample) -> bytes:
        """The record's bytes, once its image fits the reference set.

        Raises:
            RecordTooLarge: no room for its scored and decided copies.
            ValueError: an image of another size or channel count than the reference set's.
        """
        from streams.errors import RecordTooLarge

        data = self.codec.encode(record)
        if len(data) > self.max_input:
            raise RecordTooLarge(f"a {len(data):,}-byte record leaves its scored and decided copies no room under "
                                 f"the {self.max_record_bytes:,}-byte limit (SDG_KAFKA__MAX_RECORD_BYTES)")
        sample, reference = record.sample, self.judge.reference
        image = sample_image(sample)
        size = reference.image_size
        if image.shape[0] != image.shape[1] or (not sample.objects and image.shape[0] != size):
            raise ValueError(f"a {image.shape[1]}×{image.shape[0]} image; the reference set is {size}×{size}")
        if sample.channels != reference.channels:
            raise ValueError(f"a {sample.channels}-channel image; the reference set has {reference.channels}")
        return data

    def route(self, record: LabeledSample) -> str:
        """The state key of a sample the gate can take (``key_by``: a record it cannot take is refused at the
        source, with its own topic, offset and key); raises like ``check``."""
        self.check(record)
        return generator_key(record)

    def windows(self, store: Store, generator: str) -> GeneratorWindows:
        """The generator's windows from the store's cache, or rebuilt from its rows."""
        if generator in store.cache:
            return store.cache[generator]
        name, version = generator.removesuffix(SCENES).split("@", 1)
        windows = GeneratorWindows(name, self.dim, self.slide, version=version, scenes=generator.endswith(SCENES))
        store.cache[generator] = windows
        head = store.get(f"{generator}|head")
        if head is None:
            return windows
        # the rows come from the changelog, a topic like any other: what is not state is left out, not trusted
        try:
            state = json.loads(head)
            windows.seq, opened, count = int(state["seq"]), int(state["opened_ms"] or now_ms()), int(state["count"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("quality: %s head is not state (%s): a new window", generator, e)
            return windows
        for back in range(self.slide - 1, 0, -1):
            closed = store.get(f"{generator}|h|{windows.seq - back}")
            try:
                if closed is not None:
                    windows.remember(_unpack_closed(closed, self.dim))
            except Exception as e:  # numpy raises several unrelated types for bytes that are not its archive
                log.warning("quality: %s closed window %d is not state (%s): left out", generator, windows.seq - back, e)
        rows, records = [], []
        for i in range(count):
            data = store.get(f"{generator}|{windows.seq}|{i}")
            try:
                record = self.codec.decode(data)
            except UndecodableRecord as e:
                log.warning("quality: %s row %d is not a sample (%s): left out", generator, i, e)
                continue
            if isinstance(record, LabeledSample):
                rows.append(data)
                records.append(record)
        if len(rows) < count:  # the window's rows are numbered 0..n-1 again
            for i in range(count):
                if f"{generator}|{windows.seq}|{i}" in store:
                    del store[f"{generator}|{windows.seq}|{i}"]
            for i, data in enumerate(rows):
                store[f"{generator}|{windows.seq}|{i}"] = data
        for item in self.judge.assess(records, windows.window_id()) if records else []:
            windows.add(item, opened)
        return windows

    def process(self, record: LabeledSample, store: Store) -> list[Record]:
        """Take one sample into its generator's open window; decide the window when it is due (``route`` checked
        it: the runtime runs it on the source record and again on the repartition topic's copy)."""
        generator = generator_key(record)
        windows = self.windows(store, generator)
        [item] = self.judge.assess([record], windows.window_id())
        store[f"{generator}|{windows.seq}|{len(windows.pending)}"] = self.codec.encode(record)
        windows.add(item, now_ms())
        out = self._close_if_due(store, generator, windows, now_ms())
        self._save_head(store, generator, windows)
        return out

    def process_many(self, records: list[LabeledSample], store: Store) -> list[list[Record] | Exception]:
        """A partition's records of a consumed batch (``Step.batch``): each generator's samples assessed together,
        as many at a time as its open window has room for. The outputs of a window that closes go with the
        sample that closed it; a chunk that cannot be assessed is taken sample by sample (its bad one fails alone)."""
        results: list[list[Record] | Exception] = [[] for _ in records]
        chunks: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            chunks.setdefault(generator_key(record), []).append(i)
        for generator, indices in chunks.items():
            windows = self.windows(store, generator)
            while indices:
                room = max(1, self.judge.config.window_size - len(windows.pending))
                chunk, indices = indices[:room], indices[room:]
                try:
                    items = self.judge.assess([records[i] for i in chunk], windows.window_id())
                except Exception:
                    for i in chunk:
                        results[i] = self._one(records[i], store)
                    continue
                now = now_ms()
                for i, item in zip(chunk, items):
                    store[f"{generator}|{windows.seq}|{len(windows.pending)}"] = self.codec.encode(records[i])
                    windows.add(item, now)
                results[chunk[-1]] = self._close_if_due(store, generator, windows, now)
                self._save_head(store, generator, windows)
        return results

    def _one(self, record: LabeledSample, store: Store) -> list[Record] | Exception:
        try:
            return self.process(record, store)
        except Exception as e:  # the runtime's error policy decides what it is
            return e

    def tick(self, store: Store | None, now: int) -> list[Record]:
        """Decide the windows that are older than ``max_window_s`` (a generator that stopped still gets judged)."""
        assert store is not None
        out: list[Record] = []
        for key in store.keys():
            if key.endswith("|head"):
                generator = key[: -len("|head")]
                windows = self.windows(store, generator)
                closed = self._close_if_due(store, generator, windows, now)
                if closed:
                    self._save_head(store, generator, windows)
                out += closed
        return out

    def _close_if_due(self, store: Store, generator: str, windows: GeneratorWindows, now: int) -> list[Record]:
        out: list[Record] = []
        if windows.pending and self.judge.due(windows, now):
            seq, count = windows.seq, len(windows.pending)
            out = self.judge.close(windows)
            for i in range(count):
                del store[f"{generator}|{seq}|{i}"]
            if self.slide > 1:  # the sliding window spans this one: keep it, drop the one that left the span
                store[f"{generator}|h|{seq}"] = _pack_closed(windows.history[-1])
                if f"{generator}|h|{seq - self.slide + 1}" in store:
                    del store[f"{generator}|h|{seq - self.slide + 1}"]
        return out

    @staticmethod
    def _save_head(store: Store, generator: str, windows: GeneratorWindows) -> None:
        store[f"{generator}|head"] = json.dumps({"seq": windows.seq, "opened_ms": windows.opened_ms,
                                                 "count": len(windows.pending)}).encode()


def gate_offline(judge: QualityJudge, labeler: Labeler, samples: list[GeneratedSample]) -> list[Record]:
    """What the quality processor emits for one generator's ``samples`` on the stream, without a broker: each sample
    labeled, scored and decided window by window (``window_size`` samples), and the windows. Samples that cannot be
    labeled are left out (on the stream they go to the dead letters)."""
    labeled = [r for r in label(samples, labeler=labeler) if not isinstance(r, Exception)]
    first = samples[0] if samples else None
    windows = GeneratorWindows(first.generator if first else "", judge.reference.sets[None].features.shape[1],
                               judge.config.slide, version=first.generator_version if first else "",
                               scenes=bool(first and first.objects))
    out: list[Record] = []
    size = judge.config.window_size
    for start in range(0, len(labeled), size):
        for item in judge.assess(labeled[start:start + size], windows.window_id()):
            windows.add(item, 0)
        out += judge.close(windows)
    return out
