"""Record schemas: versioned Avro files in ``schemas/avro`` and the Python types for them.

Imports neither Kafka nor any ML library.
"""

from schemas.codec import RecordCodec, SchemaRegistry, registry
from schemas.errors import SchemaError, UndecodableRecord
from schemas.records import (
    RECORD_TYPES,
    Annotation,
    Conditioning,
    DeadLetter,
    Gate,
    GeneratedSample,
    GenerationJob,
    Label,
    LabeledSample,
    Metrics,
    QualityWindow,
    Reading,
    Record,
    SampleDecision,
    Score,
    ScoredSample,
    ThermalAlert,
    Throttle,
)

__all__ = [
    "Annotation",
    "Conditioning",
    "DeadLetter",
    "Gate",
    "GeneratedSample",
    "GenerationJob",
    "Label",
    "LabeledSample",
    "Metrics",
    "QualityWindow",
    "RECORD_TYPES",
    "Reading",
    "Record",
    "RecordCodec",
    "SampleDecision",
    "SchemaError",
    "SchemaRegistry",
    "Score",
    "ScoredSample",
    "ThermalAlert",
    "Throttle",
    "UndecodableRecord",
    "registry",
]
