"""Record schemas: versioned Avro files in ``schemas/avro`` and the Python types for them.

Imports neither Kafka nor any ML library.
"""

import os

# polars (the column-wise reader, schemas/columnar.py) brings its own jemalloc, whose background purging threads
# took a third of a 2-core processor's speed on records it decodes one by one (bench/broker.py, 16 KiB): off
# unless set, before polars is first loaded
os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:false")

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
