"""The Delta tables (DESIGN §4) as pyarrow schemas, their partitioning, and the lineage hash chain.

Tables are written by ``deltalake`` on one machine and by Spark (delta-spark) on a cluster; these
schemas are the contract both sides keep. Every table is partitioned by ``run_id`` and ``date``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

PARTITION_BY = ["run_id", "date"]
GENESIS = "0" * 64  # the previous hash of a chain's first row
NO_CLASS = -1  # class_label of an ingested real image: no class was asked for
# lineage rows chain per (run, date, source topic, source partition): one writer per chain
CHAIN_KEY = ("run_id", "date", "kafka_topic", "kafka_partition")

_COMMON = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("date", pa.string(), nullable=False),  # UTC day of created_ms, YYYY-MM-DD
    pa.field("created_ms", pa.int64(), nullable=False),
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
]

SAMPLES = pa.schema([
    *_COMMON,
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("job_id", pa.string()),
    pa.field("generator", pa.string(), nullable=False),
    pa.field("generator_version", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("class_label", pa.int32(), nullable=False),  # the class asked for; NO_CLASS for an ingested real image
    pa.field("params_json", pa.string()),  # the conditioning's parameters; a real image's provenance (sdg ingest)
    pa.field("image", pa.binary(), nullable=False),  # PNG, or raw pixels (image_format)
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("node_id", pa.string()),
    pa.field("objects_json", pa.string()),  # boxes of multi-object scenes (masks stay in the image topic records)
    pa.field("channels", pa.int32()),  # added with colour data: tables written before read it as null (grey)
    pa.field("image_format", pa.string()),  # png | raw; null in tables written before raw pixels: png
])

LINEAGE = pa.schema([
    *_COMMON,
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # generated | labeled | scored | accepted | review | rejected | human
    pa.field("generator", pa.string(), nullable=False),
    pa.field("generator_version", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("class_label", pa.int32(), nullable=False),  # as in samples
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("label", pa.int32()),
    pa.field("confidence", pa.float64()),
    pa.field("margin", pa.float64()),
    pa.field("agrees", pa.bool_()),
    pa.field("labeler_version", pa.string()),
    pa.field("window_id", pa.string()),
    pa.field("realism", pa.float64()),
    pa.field("extractor_hash", pa.string()),
    pa.field("decision", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("seq", pa.int64(), nullable=False),  # position in its partition's hash chain
    pa.field("prev_hash", pa.string(), nullable=False),
    pa.field("row_hash", pa.string(), nullable=False),
])

QUALITY_WINDOWS = pa.schema([
    *_COMMON,
    pa.field("window_id", pa.string(), nullable=False),
    pa.field("generator", pa.string(), nullable=False),
    pa.field("generator_version", pa.string(), nullable=False),
    pa.field("class_label", pa.int32()),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("start_ms", pa.int64()),
    pa.field("end_ms", pa.int64()),
    pa.field("metrics_json", pa.string(), nullable=False),
    pa.field("baseline_json", pa.string()),
    pa.field("memorized_fraction", pa.float64()),
    pa.field("extractor", pa.string()),
    pa.field("extractor_hash", pa.string()),
    pa.field("reference_split", pa.string()),
    pa.field("gate_state", pa.string(), nullable=False),
])

TELEMETRY = pa.schema([
    *_COMMON,
    pa.field("node_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("ts_ms", pa.int64(), nullable=False),
    *[pa.field(name, pa.float64()) for name in
      ("coolant_c", "die_c", "power_w", "bus_v", "current_a", "flow_lpm", "pue", "rate_sps", "batch_ms")],
])

ALERTS = pa.schema([
    *_COMMON,
    pa.field("node_id", pa.string(), nullable=False),
    pa.field("rule", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("value", pa.float64()),
    pa.field("threshold", pa.float64()),
    pa.field("message", pa.string()),
    pa.field("cleared", pa.bool_()),
])

CONTROL_ACTIONS = pa.schema([
    *_COMMON,
    pa.field("node_id", pa.string(), nullable=False),
    pa.field("max_rate_sps", pa.float64()),
    pa.field("paused", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("ttl_s", pa.float64()),
])

TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "lineage": LINEAGE,
    "quality_windows": QUALITY_WINDOWS,
    "telemetry": TELEMETRY,
    "alerts": ALERTS,
    "control_actions": CONTROL_ACTIONS,
}

# what makes a row the same row within a run, whatever offset it was read at: a generator or labeler that
# crashed before committing its offsets publishes the same samples and labels again (the sink keeps one).
# A person's correction is a new human row: its label differs.
IDENTITY: dict[str, tuple[str, ...]] = {
    "samples": ("sample_id",),
    "lineage": ("sample_id", "stage", "label", "decision"),
}
_NULL, _SEP = "\x00", "\x1f"  # in no identity's value: names, stages, decisions and labels hold no control character


def identity_key(values: Iterable[Any]) -> str:
    """One row's ``IDENTITY`` values as one string: each as text (a null as NUL), joined by a unit separator."""
    return _SEP.join(_NULL if v is None else str(v) for v in values)


def identity_keys(data: pa.Table, table: str) -> list[str]:
    """``identity_key`` of each row of ``data`` (rows of ``table``), column by column."""
    columns = [pc.fill_null(data.column(c).cast(pa.string()), _NULL) for c in IDENTITY[table]]
    joined = pc.binary_join_element_wise(*columns, _SEP) if len(columns) > 1 else columns[0]
    return joined.to_pylist()  # type: ignore[no-any-return]

# written by jobs over the tables above (the Spark job in sdg/spark.py), not by the sink
GENERATOR_STATS = pa.schema([
    pa.field("run_id", pa.string()),
    pa.field("date", pa.string()),
    pa.field("computed_ms", pa.int64()),
    pa.field("generator", pa.string()),
    pa.field("generator_version", pa.string()),
    *[pa.field(stage, pa.int64()) for stage in ("generated", "labeled", "accepted", "review", "rejected")],
    pa.field("acceptance_rate", pa.float64()),  # accepted / decided
    pa.field("mean_confidence", pa.float64()),
    pa.field("agreement", pa.float64()),  # fraction of labels that agree with the conditioning
    pa.field("labels_saved", pa.int64()),  # accepted: labeled without a human
    pa.field("labels_to_review", pa.int64()),  # review: a human labels these
])

# written by the edge trainer (sdg train-edge): one row per trained edge model
MODELS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("date", pa.string(), nullable=False),
    pa.field("created_ms", pa.int64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # edge
    pa.field("version", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("samples_version", pa.int64()),  # the samples table's Delta version the dataset was read at
    pa.field("dataset_json", pa.string(), nullable=False),  # counts per class and generator, sample ids hash
    pa.field("metrics_json", pa.string(), nullable=False),  # accuracy fp32/int8, size, latency, checks
    pa.field("label_budgets_json", pa.string(), nullable=False),  # every real label behind the model
    pa.field("real_labels", pa.int64(), nullable=False),
])

DERIVED_TABLES: dict[str, pa.Schema] = {"generator_stats": GENERATOR_STATS, "models": MODELS}

_CHAIN_EXCLUDED = {"seq", "prev_hash", "row_hash"}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table.select(schema.names).cast(schema)`` (nulls in a non-nullable field refused alike), casting only the
    columns not of the schema's type already: a cast that changes nothing costs as much as one that does."""
    columns = []
    for column, field in zip(table.select(schema.names).columns, schema):
        if column.type != field.type:
            column = column.cast(field.type)
        if not field.nullable and column.null_count:
            raise pa.ArrowInvalid(f"Casting field '{field.name}' with null values to non-nullable")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


_CANONICAL = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))


def row_hash(row: dict[str, Any], prev_hash: str) -> str:
    """The first chain format: SHA-256 of the previous row's hash and this row's content (every column but the
    chain's own) as key-sorted JSON. Tables keep such rows; the sink writes ``chain_contents``' format."""
    content = row if _CHAIN_EXCLUDED.isdisjoint(row) else {k: v for k, v in row.items() if k not in _CHAIN_EXCLUDED}
    digest = hashlib.sha256(prev_hash.encode())
    digest.update(_CANONICAL.encode(content).encode())
    return digest.hexdigest()


CHAIN_FORMAT = b"sdg-chain/2\x00"  # the second format's content starts so: never JSON, never the first's preimage


def _part(name: str, column: Any) -> tuple[bytes, int, bytes | None, int, bytes | None, bytes] | None:
    """A column as ``sdg_native.contents`` takes it: its part's head, type tag, validity, offset, offsets and data
    (None: a column of nulls, which adds nothing)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if pa.types.is_null(kind):
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        tag, wide = b"s", pa.binary()
    elif pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
        tag, wide = (b"b", pa.uint8()) if pa.types.is_boolean(kind) else (b"i", pa.int64()) if \
            pa.types.is_integer(kind) else (b"f", pa.float64())
    else:
        raise TypeError(f"the lineage chain has no encoding for column {name} of type {kind}")
    if kind != wide and not pa.types.is_string(kind):  # a string's buffers are its bytes' already
        column = column.cast(wide)
    validity, *rest = (None if b is None else b.to_pybytes() for b in column.buffers())
    offsets, data = rest if tag == b"s" else (None, *rest)
    return (name.encode() + b"\x00" + tag, tag[0], validity if column.null_count else None, column.offset, offsets,
            data or b"")


def chain_content_buffers(table: pa.Table) -> tuple[bytes, bytes]:
    """``chain_contents`` as a binary column's buffers: (i32 offsets, data)."""
    from schemas.native import native

    names = sorted(n for n in table.column_names if n not in _CHAIN_EXCLUDED)
    parts = [p for p in (_part(n, table.column(n)) for n in names) if p is not None]
    return native().contents(CHAIN_FORMAT, table.num_rows, parts)  # type: ignore[no-any-return]


def chain_contents(table: pa.Table) -> list[bytes]:
    """Each row's content as the hash chain reads it (the second format): every column but the chain's own that
    holds a value, in name order, as its name, a 0 byte, a type tag (``s`` string or bytes, ``i`` integer, ``f``
    float, ``b`` boolean) and its value (a string or bytes after its length as 4 little-endian bytes, a number as 8
    little-endian bytes, a boolean as one byte), after ``CHAIN_FORMAT``. Types of one tag encode alike (an int32 as
    an int64), and a column added later, null in older rows, leaves their content as it was. Built natively
    (``sdg_native.contents``)."""
    offsets, data = chain_content_buffers(table)
    contents = pa.Array.from_buffers(pa.binary(), table.num_rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return contents.to_pylist()  # type: ignore[no-any-return]


def chained(previous: str, content: bytes) -> str:
    """A row's hash in the second format: SHA-256 of the previous row's hash and its ``chain_contents``."""
    return hashlib.sha256(previous.encode() + content).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    """The first row of a chain that does not verify, and why."""

    chain: tuple[Any, ...]
    seq: int
    sample_id: str | None
    reason: str


def chain_id(row: dict[str, Any]) -> str:
    return "|".join(str(row[k]) for k in CHAIN_KEY)


def verify_chain(rows: list[dict[str, Any]], heads: dict[str, tuple[int, str]] | None = None) -> ChainBreak | None:
    """Recompute every chain (rows grouped by ``CHAIN_KEY``); the first broken row, or None.

    Catches an edited field (its hash no longer matches), a removed or inserted row (a gap or a
    repeat in ``seq``, or a ``prev_hash`` that is not the previous row's hash) and reordered rows.
    ``heads`` (chain id → the last (seq, hash) the writer recorded in its commits) also catches
    rows cut off a chain's end. A row's hash may be of either format (``chained``, or ``row_hash`` in tables
    written before it).
    """
    contents = dict(zip(map(id, rows), chain_contents(pa.Table.from_pylist(rows)))) if rows else {}
    chains: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        chains.setdefault(tuple(row[k] for k in CHAIN_KEY), []).append(row)
    last = {"|".join(map(str, chain)): max(members, key=lambda r: r["seq"]) for chain, members in chains.items()}
    for cid, (seq, _digest) in sorted((heads or {}).items()):
        end = last.get(cid)
        if end is None or end["seq"] < seq:
            return ChainBreak(tuple(cid.split("|")), seq, None, f"truncated: the writer recorded seq {seq}, the "
                              f"table ends at {'nothing' if end is None else end['seq']}")
    for chain, members in sorted(chains.items()):
        members.sort(key=lambda r: r["seq"])
        previous = GENESIS
        for expected_seq, row in enumerate(members):
            if row["seq"] != expected_seq:
                return ChainBreak(chain, row["seq"], row.get("sample_id"),
                                  f"seq {row['seq']} where {expected_seq} was expected (a row removed or inserted)")
            if row["prev_hash"] != previous:
                return ChainBreak(chain, row["seq"], row.get("sample_id"),
                                  "prev_hash is not the previous row's hash (rows removed, inserted or reordered)")
            if chained(previous, contents[id(row)]) != row["row_hash"] and row_hash(row, previous) != row["row_hash"]:
                return ChainBreak(chain, row["seq"], row.get("sample_id"), "content does not match its hash (edited)")
            previous = row["row_hash"]
    return None
