"""The topic catalog (DESIGN §2), as data: one frozen spec per topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

from schemas.errors import UndecodableRecord
from schemas.records import (
    DeadLetter,
    GeneratedSample,
    GenerationJob,
    HumanLabel,
    LabeledSample,
    PlantFault,
    QualityWindow,
    Reading,
    Record,
    SampleDecision,
    ScoredSample,
    ThermalAlert,
    Throttle,
)
from streams.errors import UnknownTopic

DAY_MS = 24 * 3600 * 1000
REPLAY_PREFIX = "sdg.replay."


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, key, value type, partitions and retention or compaction."""

    name: str
    key: str
    value: type[Record] | None
    partitions: int
    description: str
    config: Mapping[str, str] = field(default_factory=dict)

    def accepts(self, record: Record) -> bool:
        """Whether ``record`` is of this topic's value type (any record for replay topics)."""
        return self.value is None or isinstance(record, self.value)

    def check(self, record: Record) -> Record:
        """``record``, if it is of this topic's value type.

        Raises:
            UndecodableRecord: a record of another type (valid, but not for this topic).
        """
        if not self.accepts(record):
            raise UndecodableRecord(f"{self.name} carries {self.value.__name__}, not {record.schema_name}")  # type: ignore[union-attr]
        return record


def _retention(days: float) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(int(days * DAY_MS))}


_SPECS = (
    TopicSpec("sdg.requests", "job_id", GenerationJob, 4, "generation jobs; workers share one group", _retention(7)),
    TopicSpec("sdg.samples.raw", "sample_id", GeneratedSample, 6, "generated samples with provenance", _retention(7)),
    TopicSpec("sdg.samples.labeled", "sample_id", LabeledSample, 6, "samples with labels", _retention(7)),
    TopicSpec("sdg.samples.scored", "sample_id", ScoredSample, 6, "labeled samples with quality", _retention(7)),
    TopicSpec("sdg.samples.accepted", "sample_id", SampleDecision, 6, "samples the gate accepted", _retention(30)),
    TopicSpec("sdg.samples.review", "sample_id", SampleDecision, 6, "human review queue", _retention(30)),
    TopicSpec("sdg.samples.rejected", "sample_id", SampleDecision, 6, "samples the gate rejected", _retention(7)),
    TopicSpec("sdg.labels.human", "sample_id", HumanLabel, 6, "people's answers to the review queue (real labels spent)",
              _retention(365)),
    TopicSpec("sdg.quality", "generator/class", QualityWindow, 3, "quality windows", _retention(30)),
    TopicSpec("sdg.telemetry", "node_id", Reading, 6, "node telemetry and generator load", _retention(1)),
    TopicSpec("sdg.alerts", "node_id", ThermalAlert, 3, "thermal alerts", _retention(30)),
    TopicSpec(
        "sdg.control",
        "node_id",
        Throttle,
        3,
        "rate caps and pauses per node (latest per node)",
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(3600 * 1000)},
    ),
    TopicSpec("sdg.plant.faults", "node_id", PlantFault, 3, "faults injected into the modeled plant", _retention(1)),
    TopicSpec("sdg.dlq", "original key", DeadLetter, 3, "records that could not be processed", _retention(30)),
)

CATALOG: Mapping[str, TopicSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


@lru_cache(maxsize=1024)
def topic(name: str) -> TopicSpec:
    """The spec of topic ``name``; ``sdg.replay.<name>`` topics carry any record type.

    Raises:
        UnknownTopic: ``name`` is neither in the catalog nor a replay topic.
    """
    spec = CATALOG.get(name)
    if spec is not None:
        return spec
    if name.startswith(REPLAY_PREFIX) and len(name) > len(REPLAY_PREFIX):
        return TopicSpec(name, "as the source", None, 6, "re-published history", _retention(7))
    raise UnknownTopic(f"unknown topic {name!r}; valid: {', '.join(CATALOG)} or {REPLAY_PREFIX}<name>")


LINEAGE_TOPICS = ("sdg.samples.raw", "sdg.samples.labeled", "sdg.samples.scored", "sdg.samples.accepted",
                  "sdg.samples.review", "sdg.samples.rejected", "sdg.quality", "sdg.telemetry", "sdg.alerts",
                  "sdg.control")
"""The topics the lineage sink writes to the Delta tables."""

_BY_TYPE = {spec.value: spec.name for spec in _SPECS if spec.value is not None and spec.value is not SampleDecision}


def topics_of(kind: type[Record]) -> list[str]:
    """The catalog topics that carry records of type ``kind``."""
    return [spec.name for spec in _SPECS if spec.value is kind]


def topic_of_type(kind: type[Record]) -> str | None:
    """The catalog topic of every record of type ``kind`` (None: none, or one per record: a sample decision's)."""
    return _BY_TYPE.get(kind)


def topic_of(record: Record) -> str:
    """The catalog topic of a record, by its type (a sample decision by its decision).

    Raises:
        UnknownTopic: no catalog topic carries records of this type.
    """
    if isinstance(record, SampleDecision):
        return f"sdg.samples.{record.gate.decision}"
    name = topic_of_type(type(record))
    if name is None:
        raise UnknownTopic(f"no catalog topic carries {record.schema_name}")
    return name
