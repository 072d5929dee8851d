"""Python types for the Avro records (one class per ``schemas/avro/<Name>.vN.avsc``).

The Avro files are the contract on the wire; these pydantic models are what code handles.
``tests/test_schemas.py`` checks that both list the same fields, so they cannot drift apart.
"""

from __future__ import annotations

import time
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the unit of every ``*_ms`` field)."""
    return time.time_ns() // 1_000_000


RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}$"
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: every timestamp has a calendar day
MAX_SIDE = 16_384  # pixels per image side
JOB_ID_PATTERN = r"^[A-Za-z0-9._:@+=/-]{0,128}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_CLASS_LABEL = 65_535
MAX_CHANNELS = 4
MAX_SCHEDULER_CHARS = 128


RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]  # checked by pydantic-core's regex: on every hop of every record
"""A run's id. It names table partitions and folders, so it must make a short, safe path segment."""
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""An identity field (sample, job, generator, version, node, window)."""
ClassLabel = Annotated[int, Field(ge=0, le=MAX_CLASS_LABEL)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Millis = Annotated[int, Field(ge=0, le=MAX_MS)]


class _Part(BaseModel):
    """A nested part of a record (no envelope of its own). Floats are finite: NaN and ±inf are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Record(_Part):
    """A top-level record: it has an Avro schema of its own and carries the envelope fields."""

    schema_name: ClassVar[str]
    schema_version: int = 1
    run_id: RunId
    created_ms: Millis = Field(default_factory=now_ms)

    def key(self) -> str | bytes | None:
        """The Kafka key of this record (DESIGN §2)."""
        raise NotImplementedError(f"{type(self).__name__} must say what its Kafka key is")


class GenerationJob(Record):
    schema_name: ClassVar[str] = "GenerationJob"
    job_id: Name
    generator: Name
    generator_version: Name | None = None
    classes: list[ClassLabel] = Field(min_length=1)
    seed_start: int = Field(ge=0)
    count: int = Field(ge=1)
    priority: int = 0
    params: dict[str, str] = Field(default_factory=dict)

    def key(self) -> str:
        return self.job_id


class Annotation(_Part):
    class_label: ClassLabel
    bbox: list[float] = Field(min_length=4, max_length=4, description="x, y, width, height in pixels")
    mask_png: bytes | None = None

    @model_validator(mode="after")
    def _box(self) -> Annotation:
        x, y, w, h = self.bbox
        if not (w > 0 and h > 0 and abs(x) <= MAX_SIDE and abs(y) <= MAX_SIDE and w <= MAX_SIDE and h <= MAX_SIDE):
            raise ValueError(f"bbox {self.bbox}: width and height must be > 0 and every value within ±{MAX_SIDE}")
        return self


REAL = "real"  # the generator of ingested real images (sdg ingest): no class asked for, provenance in the params


class Conditioning(_Part):
    class_label: ClassLabel | None  # None: a real image ingested without a label (generator ``real``)
    params: dict[str, str] = Field(default_factory=dict)


class GeneratedSample(Record):
    schema_name: ClassVar[str] = "GeneratedSample"
    schema_version: int = 3
    sample_id: Name
    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)]  # empty for ingested or replayed samples
    generator: Name
    generator_version: Name
    seed: int = Field(ge=0)
    conditioning: Conditioning
    image: bytes
    image_format: Literal["png", "raw"] = "png"  # raw: uint8 pixels, height × width × channels, row-major
    image_sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    channels: int = Field(default=1, ge=1, le=MAX_CHANNELS)
    node_id: Name
    scheduler: str | None = Field(default=None, max_length=MAX_SCHEDULER_CHARS)
    steps: int | None = Field(default=None, ge=0)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    objects: list[Annotation] = Field(default_factory=list, max_length=1024)

    @model_validator(mode="after")
    def _consistent(self) -> GeneratedSample:
        if self.image_format == "raw" and len(self.image) != self.width * self.height * self.channels:
            raise ValueError(f"{len(self.image):,} bytes of raw pixels for a {self.width}×{self.height}×"
                             f"{self.channels} image")
        for o in self.objects:
            x, y, w, h = o.bbox
            if x >= self.width or y >= self.height or x + w <= 0 or y + h <= 0:
                raise ValueError(f"object box {o.bbox} lies outside the {self.width}×{self.height} image")
        return self

    def key(self) -> str:
        return self.sample_id


class Label(_Part):
    label: ClassLabel
    confidence: Probability
    margin: Probability
    entropy: float = Field(ge=0)
    agrees: bool
    labeler: Name
    labeler_version: Name
    objects: list[Annotation] = Field(default_factory=list)


class Score(_Part):
    window_id: Name
    realism: float = Field(ge=0)
    nn_distance: float = Field(ge=0)
    memorization_ratio: float = Field(ge=0)
    extractor: Name
    extractor_hash: Name


class Gate(_Part):
    decision: Literal["accepted", "review", "rejected"]
    reason: str
    gate: str


class _Staged(Record):
    """A record of a stage after generation: it carries the sample and every earlier stage's part."""

    sample: GeneratedSample

    def key(self) -> str:
        return self.sample.sample_id


class LabeledSample(_Staged):
    schema_name: ClassVar[str] = "LabeledSample"
    schema_version: int = 3
    label: Label


class ScoredSample(_Staged):
    schema_name: ClassVar[str] = "ScoredSample"
    schema_version: int = 3
    label: Label
    score: Score


class SampleDecision(_Staged):
    schema_name: ClassVar[str] = "SampleDecision"
    schema_version: int = 4
    label: Label
    score: Score
    gate: Gate
    label_source: Literal["labeler", "human"] = "labeler"
    reviewer: Name | None = None  # who answered, for a human label


class Metrics(_Part):
    n: int
    fid: float
    precision: float
    recall: float
    density: float
    coverage: float


class QualityWindow(Record):
    schema_name: ClassVar[str] = "QualityWindow"
    window_id: Name
    generator: Name
    generator_version: Name
    class_label: ClassLabel | None = None
    kind: Literal["tumbling", "sliding"]
    start_ms: Millis
    end_ms: Millis
    metrics: Metrics
    baseline: Metrics | None = None
    memorized_fraction: float
    extractor: str
    extractor_hash: str
    reference_split: str
    gate_state: Literal["warming_up", "admissible", "inadmissible"]

    def key(self) -> str:
        return self.generator if self.class_label is None else f"{self.generator}/{self.class_label}"

    @property
    def scenes(self) -> bool:
        """A window of multi-object scenes: its id reads ``<generator>@<version>/scenes…``."""
        return "/scenes" in self.window_id.split(":")[0]

    @property
    def measured_on(self) -> Literal["samples", "objects", "scenes"]:
        """What the metrics compare with the real set: single samples, the objects of scenes (their crops against
        real objects), or whole scenes (against real scenes composed of real objects: ids ``…/scenes/whole…``)."""
        if not self.scenes:
            return "samples"
        return "scenes" if "/scenes/whole" in self.window_id.split(":")[0] else "objects"


class Reading(Record):
    schema_name: ClassVar[str] = "Reading"
    node_id: Name
    source: Literal["plant", "generator"]
    ts_ms: Millis
    coolant_c: float | None = None
    die_c: float | None = None
    power_w: float | None = None
    bus_v: float | None = None
    current_a: float | None = None
    flow_lpm: float | None = None
    pue: float | None = None
    rate_sps: float | None = Field(default=None, ge=0)
    batch_ms: float | None = Field(default=None, ge=0)

    def key(self) -> str:
        return self.node_id


class ThermalAlert(Record):
    schema_name: ClassVar[str] = "ThermalAlert"
    node_id: Name
    rule: str
    severity: Literal["info", "warning", "critical", "emergency"]
    value: float
    threshold: float
    message: str
    cleared: bool = False

    def key(self) -> str:
        return self.node_id


class Throttle(Record):
    schema_name: ClassVar[str] = "Throttle"
    node_id: Name
    max_rate_sps: float | None = Field(default=None, ge=0)
    paused: bool = False
    reason: str
    ttl_s: float = Field(gt=0)

    def key(self) -> str:
        return self.node_id


FaultKind = Literal["pump_failure", "coolant_ramp", "over_voltage", "sensor_dropout", "stuck_sensor", "repair"]


class PlantFault(Record):
    schema_name: ClassVar[str] = "PlantFault"
    node_id: Name
    kind: FaultKind
    magnitude: float | None = None
    duration_s: float | None = Field(default=None, gt=0)

    def key(self) -> str:
        return self.node_id


class HumanLabel(Record):
    """A person's answer to a sample of the review queue (the console): a label, or a rejection."""

    schema_name: ClassVar[str] = "HumanLabel"
    sample_id: Name
    label: ClassLabel | None = None
    rejected: bool = False
    reviewer: Name
    objects: list[Annotation] = Field(default_factory=list, max_length=1024)

    @model_validator(mode="after")
    def _one_answer(self) -> HumanLabel:
        if self.rejected == (self.label is not None):
            raise ValueError("an answer is a label or a rejection, not both or neither")
        return self

    def key(self) -> str:
        return self.sample_id


class DeadLetter(Record):
    schema_name: ClassVar[str] = "DeadLetter"
    schema_version: int = 2
    topic: str
    partition: int
    offset: int
    step_id: str
    error_type: str
    error: str
    original_key: bytes | None = None
    original_value: bytes | None = None
    headers: dict[str, bytes] = Field(default_factory=dict)
    original_size: int | None = Field(default=None, ge=0, description="Bytes of the original value.")
    original_sha256: str | None = Field(default=None, description="Hash of the whole original value.")
    truncated: bool = Field(default=False, description="original_value holds only the first bytes (too large "
                                                       "for the dead-letter topic whole).")

    def key(self) -> bytes | None:  # type: ignore[override]
        return self.original_key


RECORD_TYPES: dict[str, type[Record]] = {
    cls.schema_name: cls
    for cls in (
        GenerationJob,
        GeneratedSample,
        LabeledSample,
        ScoredSample,
        SampleDecision,
        QualityWindow,
        Reading,
        ThermalAlert,
        Throttle,
        HumanLabel,
        PlantFault,
        DeadLetter,
    )
}
