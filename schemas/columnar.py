"""Many records decoded at once into columns: the hot paths' alternative to ``RecordCodec.decode`` one by one.

The values of a consumed batch written with the newest schema of a record type are laid end to end in one block
of an Avro object container (the Avro spec's file format: the schema in a header, then the bodies; each value's
10-byte single-object head read as a fixed field), which polars' Avro reader (Rust) reads straight into columns:
about three times faster than fastavro and pydantic a record, checks included. Maps are read as lists of (key, value)
structs, which Avro encodes alike. Each value is followed by an 8-byte marker, its position in the block: a body
longer or shorter than its record shifts what is read as its marker, so a misread row never passes. Then what ``RecordCodec.decode`` checks is checked column-wise: the schema version, the
patterns and ranges of the pydantic types, finite floats, the canonical encoding. A value failing any check, and
every value of a block the reader refuses (halved until the refused ones are found), is left to the one-record
path, which says why: what ``RecordCodec.decode`` accepts and refuses stays the contract, and this is a faster way
to the same values. Types without column-wise checks here (``CHECKS``) always take the one-record path.
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codec import _HEADER, MAGIC, SchemaVersion, registry, zigzag
from schemas.records import (
    JOB_ID_PATTERN,
    MAX_CHANNELS,
    MAX_CLASS_LABEL,
    MAX_MS,
    MAX_SCHEDULER_CHARS,
    MAX_SIDE,
    NAME_PATTERN,
    RUN_ID_PATTERN,
    SHA256_PATTERN,
)

_SYNC = bytes(16)
_SMALLEST = 8  # a block that fails with this many values or fewer is left to the one-record path whole


@dataclass(frozen=True)
class Columns:
    """Values of a batch decoded column-wise: ``frame`` (a polars DataFrame, one row per value, the newest schema's
    fields) holds the values at ``index`` of the batch; ``table`` is the same rows in Arrow."""

    name: str
    frame: Any
    table: pa.Table
    index: np.ndarray


def _plain(schema: Any, entries: Iterator[int]) -> Any:
    """The schema as polars' reader takes it: maps as arrays of (key, value) records (``entries`` numbers their
    names), no defaults, docs or aliases."""
    if isinstance(schema, list):
        return [_plain(s, entries) for s in schema]
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    if kind == "record":
        return {"type": "record", "name": schema["name"],
                "fields": [{"name": f["name"], "type": _plain(f["type"], entries)} for f in schema["fields"]]}
    if kind == "array":
        return {"type": "array", "items": _plain(schema["items"], entries)}
    if kind == "map":
        return {"type": "array", "items": {"type": "record", "name": f"MapEntry{next(entries)}", "fields": [
            {"name": "key", "type": "string"}, {"name": "value", "type": _plain(schema["values"], entries)}]}}
    return {k: v for k, v in schema.items() if k in ("type", "name", "symbols", "size")}


@dataclass(frozen=True)
class _Container:
    """How the values of one writer schema are read at once: an object container's header for whole single-object
    values (their 10-byte head as a fixed field) each followed by its 8-byte marker, and the rows it takes."""

    header: bytes
    ok: Any  # rows whose marker is where it was written and that pass ``CHECKS``
    plain: Any  # the writer's schema as polars reads it


_CONTAINERS: dict[bytes, _Container] = {}


def _container(writer: SchemaVersion) -> _Container:
    if writer.fingerprint not in _CONTAINERS:
        _CONTAINERS[writer.fingerprint] = _new_container(writer)
    return _CONTAINERS[writer.fingerprint]


def _new_container(writer: SchemaVersion) -> _Container:
    import polars as pl

    plain = _plain(writer.raw, itertools.count())
    schema = {"type": "record", "name": "Marked", "fields": [
        {"name": "head", "type": {"type": "fixed", "name": "Head", "size": _HEADER}},
        {"name": "value", "type": plain},
        {"name": "marker", "type": {"type": "fixed", "name": "Marker", "size": 8}}]}
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"null"}
    header = b"Obj\x01" + zigzag(len(meta)) + b"".join(
        zigzag(len(k)) + k + zigzag(len(v)) + v for k, v in meta.items()) + zigzag(0) + _SYNC
    ok = pl.all_horizontal([CHECKS[writer.name](writer.version),
                            pl.col("marker").bin.reinterpret(dtype=pl.UInt64, endianness="little")
                            == pl.int_range(pl.len(), dtype=pl.UInt64)]).fill_null(False)
    return _Container(header, ok, plain)


def _read(writer: SchemaVersion, values: Sequence[bytes], index: np.ndarray) -> list[tuple[Any, pa.Table, np.ndarray]]:
    """The values at ``index`` read in one block (halved while the reader refuses it): (frame, it in Arrow, the indices
    its rows are) for each part read. Rows whose marker was not read back where it was written, rows failing the checks, and
    rows that are not their value's canonical encoding, are left out."""
    import polars as pl
    from polars.exceptions import PanicException

    n = len(index)
    if n == 0:
        return []
    container = _container(writer)
    chosen = [values[i] for i in index.tolist()]
    lengths = np.fromiter(map(len, chosen), dtype=np.int64, count=n)
    markers = np.arange(n, dtype="<u8").tobytes()
    parts: list[bytes] = [b""] * (2 * n + 2)  # the block, in one copy: header, value, marker, value, …, sync
    parts[0] = container.header + zigzag(n) + zigzag(int(lengths.sum()) + 8 * n)
    parts[1:-1:2] = chosen
    parts[2:-1:2] = [markers[k:k + 8] for k in range(0, 8 * n, 8)]
    parts[-1] = _SYNC
    block = b"".join(parts)
    try:
        read = pl.read_avro(io.BytesIO(block))
        frame = read.get_column("value").struct.unnest()
        ok = frame.with_columns(read.get_column("marker")).select(container.ok).to_series().to_numpy()
    except (Exception, PanicException):  # the reader's errors on a corrupt body are many and untyped
        if n <= _SMALLEST:
            return []
        half = n // 2
        return _read(writer, values, index[:half]) + _read(writer, values, index[half:])
    starts = len(parts[0]) + np.concatenate([[0], np.cumsum(lengths + 8)[:-1]])  # each value's place in the block
    table = frame.to_arrow()
    ok &= _canonical(container.plain, table, block, starts, starts + lengths)
    return [(frame, table, index)] if ok.all() else [(frame.filter(ok), table.filter(pa.array(ok)), index[ok])]


_VARINT_BOUNDS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each value's Avro varint (zigzag, 7 bits a byte)."""
    v = values.astype(np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    return np.searchsorted(_VARINT_BOUNDS, z, side="right").astype(np.int64) + 1


def _numbers(column: Any) -> np.ndarray:
    """An integer column as int64, nulls as 0."""
    return np.asarray((pc.fill_null(column, 0) if column.null_count else column).to_numpy(zero_copy_only=False),
                      dtype=np.int64)


def _layout(schema: Any, column: Any, at: np.ndarray | None, unions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each row's bytes of ``column`` in its canonical encoding under ``schema`` (polars' form: maps as arrays),
    and, in ``unions``, where each of its unions' branch index is (``at``: where the column starts in each body; None
    inside an array) with the byte it must be there. A union inside an array counts as non-canonical (-1 bytes)."""
    n = len(column)
    kind = schema if isinstance(schema, str) else schema["type"] if isinstance(schema, dict) else "union"
    if kind in ("int", "long"):
        return _varint_lengths(_numbers(column))
    if kind in ("string", "bytes"):
        size = _numbers(pc.binary_length(column))
        return np.asarray(_varint_lengths(size) + size)
    if kind in ("float", "double", "boolean", "null", "fixed"):
        width = int(schema["size"]) if kind == "fixed" else {"float": 4, "double": 8, "boolean": 1, "null": 0}[kind]
        return np.full(n, width, dtype=np.int64)
    if kind == "record":
        total = np.zeros(n, dtype=np.int64)
        for f in schema["fields"]:
            total += _layout(f["type"], column.field(f["name"]), None if at is None else at + total, unions)
        return total
    if kind == "array":
        counts = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        items = _layout(schema["items"], pc.list_flatten(column), None, unions)
        parents = pc.list_parent_indices(column).to_numpy()
        sums = np.bincount(parents, weights=items, minlength=n).astype(np.int64)
        unchecked = np.bincount(parents, weights=items < 0, minlength=n) > 0
        return np.where(unchecked, -1, np.where(counts == 0, 1, _varint_lengths(counts) + sums + 1))
    if kind == "union" and len(schema) == 2 and "null" in schema:
        empty = schema.index("null")
        null = pc.is_null(column).to_numpy(zero_copy_only=False)
        value = _layout(schema[1 - empty], column, None if at is None else at + 1, unions)
        if at is None:
            return np.full(n, -1)
        unions.append((at, np.where(null, 2 * empty, 2 * (1 - empty)).astype(np.uint8)))
        return 1 + np.where(null, 0, value)
    raise TypeError(f"no column-wise layout for Avro type {schema!r}")


def _canonical(schema: Any, table: pa.Table, block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which values (``block[starts[k]:ends[k]]``, each with its header) are the canonical encoding under ``schema`` of
    what was read from them: exactly as long as that encoding (no over-long varint, no split array block) with every
    union's branch index where and what it must be. A value the codec would take but that is not canonical is left
    to it."""
    unions: list[tuple[np.ndarray, np.ndarray]] = []
    if not table.num_rows:
        return np.zeros(0, dtype=bool)
    record = pa.StructArray.from_arrays([c.combine_chunks() for c in table.columns], names=table.column_names)
    at = np.full(len(starts), _HEADER, dtype=np.int64)
    ok: np.ndarray = _layout(schema, record, at, unions) + _HEADER == ends - starts
    data = np.frombuffer(block, dtype=np.uint8)
    for at, byte in unions:
        ok &= data[np.minimum(starts + at, len(data) - 1)] == byte
    return ok


@cache
def generated_sample_ok(version: int) -> Any:
    """A polars expression: the rows of a ``GeneratedSample`` frame pydantic accepts (the model's field constraints;
    polars' regexes are Rust's, as pydantic-core's are). A scene (objects) is left to the one-record path (its
    boxes are checked against the image there)."""
    import polars as pl

    col = pl.col
    class_label = col("conditioning").struct.field("class_label")
    return pl.all_horizontal([
        col("schema_version") == version, col("run_id").str.contains(RUN_ID_PATTERN),
        col("created_ms").is_between(0, MAX_MS), col("sample_id").str.contains(NAME_PATTERN),
        col("job_id").str.contains(JOB_ID_PATTERN), col("generator").str.contains(NAME_PATTERN),
        col("generator_version").str.contains(NAME_PATTERN), col("seed") >= 0,
        class_label.is_null() | class_label.is_between(0, MAX_CLASS_LABEL),
        col("image_format").is_in(["png", "raw"]), col("image_sha256").str.contains(SHA256_PATTERN),
        col("width").is_between(1, MAX_SIDE), col("height").is_between(1, MAX_SIDE), col("channels").is_between(1, MAX_CHANNELS),
        col("node_id").str.contains(NAME_PATTERN), col("scheduler").is_null() | (col("scheduler").str.len_chars() <= MAX_SCHEDULER_CHARS),
        col("steps").is_null() | (col("steps") >= 0),
        col("timings_ms").list.eval(pl.element().struct.field("value").is_finite()).list.all(),
        col("objects").list.len() == 0,
        (col("image_format") != "raw") | (col("image").bin.size() == col("width") * col("height") * col("channels")),
    ]).fill_null(False)


CHECKS: dict[str, Callable[[int], Any]] = {"GeneratedSample": generated_sample_ok}
KEYS = {"GeneratedSample": "sample_id"}  # the column that is each type's Kafka key (``Record.key``)


MIN_BATCH = 64  # below: the reader's fixed cost (~2 ms a call) outweighs what it saves
MAX_MEAN_BYTES = 8192  # above: copying the values costs what decoding them one by one does


def worth_it(values: Sequence[bytes | None]) -> bool:
    """Whether a batch is worth decoding column-wise: enough values, small enough on average."""
    return len(values) >= MIN_BATCH and sum(len(v or b"") for v in values) <= MAX_MEAN_BYTES * len(values)


def decode_columns(values: Sequence[bytes | None]) -> list[Columns]:
    """The values that decode and check column-wise, per record type (newest schema versions of ``CHECKS``' types);
    the rest are for ``RecordCodec.decode``."""
    schemas = registry()
    heads = [b"" if v is None else v[:_HEADER] for v in values]
    groups: dict[bytes, Any] = {}
    if len(set(heads)) == 1:  # one writer: the usual batch
        groups[heads[0]] = np.arange(len(values))
    else:
        for i, head in enumerate(heads):
            groups.setdefault(head, []).append(i)
    out = []
    for head, members in groups.items():
        writer = schemas.by_fingerprint.get(head[2:]) if head[:2] == MAGIC else None
        if writer is None or writer.name not in CHECKS or schemas.latest(writer.name) is not writer:
            continue
        for frame, table, index in _read(writer, values, np.asarray(members, dtype=np.int64)):  # type: ignore[arg-type]
            if len(index):
                out.append(Columns(writer.name, frame, table, index))
    return out


def warm() -> None:
    """Load the reader and what it imports on first use (polars, its Arrow export): a processor does this at start,
    not with its first batch."""
    from schemas.codec import RecordCodec
    from schemas.examples import example_sample

    decode_columns([RecordCodec().encode(example_sample(0, "warm"))])
