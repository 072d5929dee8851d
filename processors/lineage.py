"""The lineage processor's function: one stage record in, the table rows it becomes out.

Each stage's record carries every earlier stage, so lineage comes from the stage topics themselves:
a raw sample becomes a ``samples`` row (payload and provenance) and a ``lineage`` row of stage
``generated``; a labeled, scored or decided sample becomes one ``lineage`` row of its stage (a person's
decision from the review queue: stage ``human``, with its decision and reviewer in ``reason``); windows,
readings, alerts and throttles become rows of their tables. The hash chain is added by the sink,
which knows each partition's previous row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from schemas.records import (
    Annotation,
    GeneratedSample,
    LabeledSample,
    QualityWindow,
    Reading,
    Record,
    SampleDecision,
    ScoredSample,
    ThermalAlert,
    Throttle,
)
from schemas.tables import NO_CLASS

Rows = dict[str, list[dict[str, Any]]]


def object_row(o: Annotation) -> dict[str, Any]:
    """A scene object as the samples table keeps it: class, box and, when it has one, its mask as COCO RLE."""
    from models.image import decode_png
    from models.scenes import rle

    row: dict[str, Any] = {"class_label": o.class_label, "bbox": o.bbox}
    if o.mask_png is not None:
        row["segmentation"] = rle(decode_png(o.mask_png) > 127)
    return row


@lru_cache(maxsize=64)
def _day(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


def _date(ms: int) -> str:
    return _day(ms // 86_400_000)


def _json(value: Any) -> str:
    """A map as key-sorted JSON, a list as it is (an empty one, the common case, costs nothing)."""
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value, sort_keys=isinstance(value, dict))


def _where(record: Record, topic: str, partition: int, offset: int, *, run_id: str | None = None,
           created_ms: int | None = None) -> dict[str, Any]:
    created = created_ms if created_ms is not None else record.created_ms
    return {"run_id": run_id or record.run_id, "date": _date(created), "created_ms": created, "kafka_topic": topic,
            "kafka_partition": partition, "kafka_offset": offset}


def _asked(sample: GeneratedSample) -> int:
    """The class asked for, or ``NO_CLASS`` for an ingested real image (the tables' column is not nullable)."""
    return NO_CLASS if sample.conditioning.class_label is None else sample.conditioning.class_label


def _lineage(sample: GeneratedSample, stage: str, where: dict[str, Any], **fields: Any) -> dict[str, Any]:
    row = {**where, "sample_id": sample.sample_id, "stage": stage, "generator": sample.generator,
           "generator_version": sample.generator_version, "seed": sample.seed,
           "class_label": _asked(sample), "image_sha256": sample.image_sha256,
           "label": None, "confidence": None, "margin": None, "agrees": None, "labeler_version": None,
           "window_id": None, "realism": None, "extractor_hash": None, "decision": None, "reason": None}
    row.update(fields)
    return row


def rows_of(record: Record, topic: str, partition: int, offset: int) -> Rows:
    """The rows ``record`` (read at ``topic[partition]@offset``) adds to each table.

    Sample rows are partitioned by the run that generated the sample, so a sample's whole story
    lands in one partition of each table.
    """
    if isinstance(record, GeneratedSample):
        where = _where(record, topic, partition, offset)
        sample = {**where, "sample_id": record.sample_id, "job_id": record.job_id, "generator": record.generator,
                  "generator_version": record.generator_version, "seed": record.seed,
                  "class_label": _asked(record),
                  "params_json": _json(record.conditioning.params),
                  "image": record.image, "image_format": record.image_format, "image_sha256": record.image_sha256, "width": record.width,
                  "height": record.height, "channels": record.channels, "node_id": record.node_id,
                  "objects_json": _json([object_row(o) for o in record.objects])}
        return {"samples": [sample], "lineage": [_lineage(record, "generated", where)]}
    if isinstance(record, (LabeledSample, ScoredSample, SampleDecision)):
        where = _where(record, topic, partition, offset, run_id=record.sample.run_id, created_ms=record.created_ms)
        label = record.label
        fields: dict[str, Any] = {"label": label.label, "confidence": label.confidence, "margin": label.margin,
                                  "agrees": label.agrees, "labeler_version": label.labeler_version}
        stage = "labeled"
        if isinstance(record, (ScoredSample, SampleDecision)):
            fields |= {"window_id": record.score.window_id, "realism": record.score.realism,
                       "extractor_hash": record.score.extractor_hash}
            stage = "scored"
        if isinstance(record, SampleDecision):
            fields |= {"decision": record.gate.decision, "reason": record.gate.reason}
            stage = "human" if record.label_source == "human" else record.gate.decision
        return {"lineage": [_lineage(record.sample, stage, where, **fields)]}
    where = _where(record, topic, partition, offset)
    if isinstance(record, QualityWindow):
        return {"quality_windows": [{**where, "window_id": record.window_id, "generator": record.generator,
                                     "generator_version": record.generator_version, "class_label": record.class_label,
                                     "kind": record.kind, "start_ms": record.start_ms, "end_ms": record.end_ms,
                                     "metrics_json": record.metrics.model_dump_json(),
                                     "baseline_json": record.baseline.model_dump_json() if record.baseline else None,
                                     "memorized_fraction": record.memorized_fraction, "extractor": record.extractor,
                                     "extractor_hash": record.extractor_hash, "reference_split": record.reference_split,
                                     "gate_state": record.gate_state}]}
    if isinstance(record, Reading):
        values = record.model_dump(include={"node_id", "source", "ts_ms", "coolant_c", "die_c", "power_w", "bus_v",
                                            "current_a", "flow_lpm", "pue", "rate_sps", "batch_ms"})
        return {"telemetry": [{**where, **values}]}
    if isinstance(record, ThermalAlert):
        values = record.model_dump(include={"node_id", "rule", "severity", "value", "threshold", "message", "cleared"})
        return {"alerts": [{**where, **values}]}
    if isinstance(record, Throttle):
        values = record.model_dump(include={"node_id", "max_rate_sps", "paused", "reason", "ttl_s"})
        return {"control_actions": [{**where, **values}]}
    raise ValueError(f"the lineage sink does not record {record.schema_name} records")


def sample_columns(samples: Any, topics: list[str], partitions: list[int], offsets: list[int]) -> dict[str, Any]:
    """The ``samples`` and ``lineage`` rows of ``GeneratedSample`` records decoded column-wise (a ``Columns.table``
    from ``schemas.columnar``, each read at its topic, partition and offset): ``rows_of``'s rows as Arrow tables, column
    by column. Scenes take the one-record path (``schemas.columnar``): ``objects_json`` is ``[]`` here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from schemas.tables import TABLES, conform

    n = samples.num_rows
    col = samples.column
    created = col("created_ms")
    conditioning = col("conditioning").combine_chunks()
    params = pc.struct_field(conditioning, "params")
    days, day = np.unique(np.floor_divide(created.to_numpy(), 86_400_000), return_inverse=True)  # a batch spans few
    dates = pa.array([_day(int(d)) for d in days], pa.string()).take(day)
    where = {"run_id": col("run_id"), "date": dates,
             "created_ms": created, "kafka_topic": pa.array(topics, pa.string()),
             "kafka_partition": pa.array(partitions, pa.int32()), "kafka_offset": pa.array(offsets, pa.int64())}
    shared = {"sample_id": col("sample_id"), "generator": col("generator"), "generator_version": col("generator_version"),
              "seed": col("seed"), "class_label": pc.fill_null(pc.struct_field(conditioning, "class_label"), NO_CLASS),
              "image_sha256": col("image_sha256")}
    lengths = pc.list_value_length(params).to_numpy(zero_copy_only=False)
    params_json = pa.repeat(pa.scalar("{}"), n)
    if lengths.any():
        written = np.full(n, "{}", dtype=object)
        for i in np.flatnonzero(lengths).tolist():  # a map as rows_of writes it: its last value per key, keys sorted
            written[i] = _json({p["key"]: p["value"] for p in params[i].as_py()})
        params_json = pa.array(written, pa.string())
    sample = {**where, **shared, "job_id": col("job_id"), "params_json": params_json,
              "image": col("image"), "image_format": col("image_format"), "width": col("width"), "height": col("height"),
              "channels": col("channels"), "node_id": col("node_id"), "objects_json": pa.repeat(pa.scalar("[]"), n)}
    lineage = {**where, **shared, "stage": pa.repeat(pa.scalar("generated"), n)}
    lineage |= {f.name: pa.nulls(n, f.type) for f in TABLES["lineage"]  # a later stage's fields: null, as in _lineage
                if f.name not in lineage and f.name not in ("seq", "prev_hash", "row_hash")}
    return {table: conform(pa.table(columns), pa.schema([f for f in TABLES[table] if f.name in columns]))
            for table, columns in (("samples", sample), ("lineage", lineage))}


rows_of.columns = {"GeneratedSample": sample_columns}  # type: ignore[attr-defined]  # the same rows, column-wise

RowsFn = Callable[[Record, str, int, int], Rows]


def downsampled(fn: RowsFn, *, every_s: float) -> RowsFn:
    """``fn`` keeping, of the telemetry readings, the first per node and source in each ``every_s`` bucket of
    their own timestamps (``every_s`` 0: all of them)."""
    every_ms = int(every_s * 1000)
    last: dict[tuple[str, str], int] = {}

    def rows(record: Record, topic: str, partition: int, offset: int) -> Rows:
        if every_ms and isinstance(record, Reading):
            key, bucket = (record.node_id, record.source), record.ts_ms // every_ms
            if last.get(key) == bucket:
                return {}
            last[key] = bucket
        return fn(record, topic, partition, offset)

    rows.columns = getattr(fn, "columns", {})  # type: ignore[attr-defined]  # readings are not made column-wise
    return rows
