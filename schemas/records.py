"""Python types for the Avro records (one class per ``schemas/avro/<Name>.vN.avsc``).

The Avro files are the contract on the wire; these pydantic models are what code handles.
``tests/test_schemas.py`` checks that both list the same fields, so they cannot drift apart.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the unit of every ``*_ms`` field)."""
    return time.time_ns() // 1_000_000


class _Part(BaseModel):
    """A nested part of a record (no envelope of its own)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Record(_Part):
    """A top-level record: it has an Avro schema of its own and carries the envelope fields."""

    schema_name: ClassVar[str]
    schema_version: int = 1
    run_id: str
    created_ms: int = Field(default_factory=now_ms, ge=0)

    def key(self) -> str | bytes | None:
        """The Kafka key of this record (DESIGN §2)."""
        raise NotImplementedError(f"{type(self).__name__} must say what its Kafka key is")


class GenerationJob(Record):
    schema_name: ClassVar[str] = "GenerationJob"
    job_id: str = Field(min_length=1)
    generator: str = Field(min_length=1)
    generator_version: str | None = None
    classes: list[int] = Field(min_length=1)
    seed_start: int = Field(ge=0)
    count: int = Field(ge=1)
    priority: int = 0
    params: dict[str, str] = Field(default_factory=dict)

    def key(self) -> str:
        return self.job_id


class Annotation(_Part):
    class_label: int
    bbox: list[float] = Field(min_length=4, max_length=4)
    mask_png: bytes | None = None


class Conditioning(_Part):
    class_label: int
    params: dict[str, str] = Field(default_factory=dict)


class GeneratedSample(Record):
    schema_name: ClassVar[str] = "GeneratedSample"
    sample_id: str = Field(min_length=1)
    job_id: str
    generator: str
    generator_version: str
    seed: int = Field(ge=0)
    conditioning: Conditioning
    image_png: bytes
    image_sha256: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    channels: int = 1
    node_id: str
    scheduler: str | None = None
    steps: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    objects: list[Annotation] = Field(default_factory=list)

    def key(self) -> str:
        return self.sample_id


class Label(_Part):
    label: int
    confidence: float
    margin: float
    entropy: float
    agrees: bool
    labeler: str
    labeler_version: str
    objects: list[Annotation] = Field(default_factory=list)


class Score(_Part):
    window_id: str
    realism: float
    nn_distance: float
    memorization_ratio: float
    extractor: str
    extractor_hash: str


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
    label: Label


class ScoredSample(_Staged):
    schema_name: ClassVar[str] = "ScoredSample"
    label: Label
    score: Score


class SampleDecision(_Staged):
    schema_name: ClassVar[str] = "SampleDecision"
    label: Label
    score: Score
    gate: Gate


class Metrics(_Part):
    n: int
    fid: float
    precision: float
    recall: float
    density: float
    coverage: float


class QualityWindow(Record):
    schema_name: ClassVar[str] = "QualityWindow"
    window_id: str
    generator: str
    generator_version: str
    class_label: int | None = None
    kind: Literal["tumbling", "sliding"]
    start_ms: int
    end_ms: int
    metrics: Metrics
    baseline: Metrics | None = None
    memorized_fraction: float
    extractor: str
    extractor_hash: str
    reference_split: str
    gate_state: Literal["warming_up", "admissible", "inadmissible"]

    def key(self) -> str:
        return self.generator if self.class_label is None else f"{self.generator}/{self.class_label}"


class Reading(Record):
    schema_name: ClassVar[str] = "Reading"
    node_id: str
    source: Literal["plant", "generator"]
    ts_ms: int
    coolant_c: float | None = None
    die_c: float | None = None
    power_w: float | None = None
    bus_v: float | None = None
    current_a: float | None = None
    flow_lpm: float | None = None
    pue: float | None = None
    rate_sps: float | None = None
    batch_ms: float | None = None

    def key(self) -> str:
        return self.node_id


class ThermalAlert(Record):
    schema_name: ClassVar[str] = "ThermalAlert"
    node_id: str
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
    node_id: str
    max_rate_sps: float | None = Field(default=None, ge=0)
    paused: bool = False
    reason: str
    ttl_s: float = Field(gt=0)

    def key(self) -> str:
        return self.node_id


FaultKind = Literal["pump_failure", "coolant_ramp", "over_voltage", "sensor_dropout", "stuck_sensor", "repair"]


class PlantFault(Record):
    schema_name: ClassVar[str] = "PlantFault"
    node_id: str
    kind: FaultKind
    magnitude: float | None = None
    duration_s: float | None = Field(default=None, gt=0)

    def key(self) -> str:
        return self.node_id


class DeadLetter(Record):
    schema_name: ClassVar[str] = "DeadLetter"
    topic: str
    partition: int
    offset: int
    step_id: str
    error_type: str
    error: str
    original_key: bytes | None = None
    original_value: bytes | None = None
    headers: dict[str, bytes] = Field(default_factory=dict)

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
        PlantFault,
        DeadLetter,
    )
}
