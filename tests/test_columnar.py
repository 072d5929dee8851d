"""Column-wise decoding (``schemas.columnar``), rows (``processors.lineage.sample_columns``) and chain content
(``schemas.tables.chain_contents``): the same values, rows and hashes as the one-record path, never more accepted."""

from __future__ import annotations

import struct
from typing import Any

import pyarrow as pa
import pytest

from processors.lineage import rows_of, sample_columns
from schemas.codec import RecordCodec, registry, zigzag
from schemas.columnar import decode_columns
from schemas.errors import UndecodableRecord
from schemas.examples import example_sample
from schemas.records import Annotation, GeneratedSample
from schemas.tables import CHAIN_FORMAT, GENESIS, TABLES, chain_contents, chained, row_hash, verify_chain

CODEC = RecordCodec()


def as_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row read column-wise as ``model_dump`` has it: maps from their (key, value) lists."""
    row = dict(row)
    row["conditioning"] = {**row["conditioning"], "params": {p["key"]: p["value"] for p in row["conditioning"]["params"]}}
    return row


def dumped(record: Any, row: dict[str, Any]) -> dict[str, Any]:
    """``record``'s fields that ``row`` holds, as ``model_dump`` has them."""
    return {k: v for k, v in record.model_dump().items() if k in row}


def varied() -> list[GeneratedSample]:
    samples = [example_sample(i, "col", payload_bytes=300) for i in range(40)]
    samples[1] = samples[1].model_copy(update={"conditioning": samples[1].conditioning.model_copy(
        update={"params": {"b": "2", "a": "ü", "mode": "crop"}, "class_label": None}), "created_ms": 0})
    samples[2] = samples[2].model_copy(update={"created_ms": 253_402_300_799_999, "timings_ms": {"x": 1.5, "y": -2.0},
                                               "scheduler": "ddim", "steps": 4, "seed": 2**40})
    raw = bytes(range(64))
    samples[3] = samples[3].model_copy(update={"image": raw, "image_format": "raw", "width": 8, "height": 8})
    return samples


def test_valid_samples_decode_column_wise_to_the_codecs_values_and_rows() -> None:
    samples = varied()
    values = [CODEC.encode(s) for s in samples]
    [group] = decode_columns(values)
    assert group.name == "GeneratedSample" and group.index.tolist() == list(range(len(samples)))
    assert set(group.table.column_names) | {"timings_ms", "objects"} == set(GeneratedSample.model_fields)
    for row, sample in zip(group.table.to_pylist(), samples):
        assert as_record(row) == dumped(sample, row)
    partitions, offsets = [i % 3 for i in range(len(samples))], list(range(100, 100 + len(samples)))
    made = sample_columns(group.table, ["t"] * len(samples), partitions, offsets)
    for table in ("samples", "lineage"):
        rows = [r for s, p, o in zip(samples, partitions, offsets) for r in rows_of(s, "t", p, o)[table]]
        expected = pa.Table.from_pylist(rows, schema=pa.schema([f for f in TABLES[table] if f.name in rows[0]]))
        assert made[table].select(expected.column_names).equals(expected), table


def _forged(**fields: Any) -> bytes:
    """A sample's encoding with ``fields`` replaced, written as it is (no pydantic in the way)."""
    values = example_sample(0, "col").model_dump() | fields
    return registry().latest("GeneratedSample").write(values)


GOOD = CODEC.encode(example_sample(0, "col"))
PLANTED = {
    "a union's branch index 3 (the codec: out of range)": GOOD[:72] + b"\x06" + GOOD[73:],
    "a union's branch index as a 3-byte varint": GOOD[:72] + b"\x82\x80\x00" + GOOD[73:],
    "an over-long varint (the codec: not canonical)": GOOD[:10] + b"\x86" + b"\x80" * 9 + b"\x00" + GOOD[11:],
    "trailing bytes": GOOD + b"\x00\x00",
    "truncated": GOOD[:-3],
    "a run_id that is no path segment": _forged(run_id="../etc"),
    "a NaN timing": _forged(timings_ms={"x": float("nan")}),
    "raw pixels of the wrong size": _forged(image_format="raw", image=b"\x00" * 10),
    "an image hash that is not one": _forged(image_sha256="XYZ"),
    "width 0": _forged(width=0),
    "a schema version the writer did not write": _forged(schema_version=2),
    "a class out of range": _forged(conditioning={"class_label": 70_000, "params": {}}),
}


@pytest.mark.parametrize("name", PLANTED)
def test_what_the_codec_refuses_is_left_to_it(name: str) -> None:
    """Each planted value is left to the one-record path (which refuses it with a reason); every other value passes."""
    data = PLANTED[name]
    with pytest.raises(UndecodableRecord):
        CODEC.decode(data)
    values = [GOOD] * 32
    values[1] = data
    taken = {i for group in decode_columns(values) for i in group.index.tolist()}
    assert taken == set(range(32)) - {1}, (name, sorted(taken))


def _timings(value: bytes, entries: int, blocks: list[int]) -> bytes:
    """A sample with ``entries`` timings "x" = 1.5, its map written as ``blocks`` (item counts: the codec writes one
    block, then 0)."""
    good = _forged(timings_ms={"x": 1.5})
    entry = b"\x02x" + struct.pack("<d", 1.5)
    written = b"\x02" + entry + b"\x00"
    assert good.count(written) == 1
    return good.replace(written, b"".join(zigzag(n) + entry * n for n in blocks) + b"\x00") if entries else good


@pytest.mark.parametrize("blocks", [[2], [1, 1], [-1]], ids=["a map key twice", "two blocks", "a negative count"])
def test_what_is_not_the_canonical_encoding_is_left_to_the_codec(blocks: list[int]) -> None:
    """Values the codec may read but would not write so (a key twice, a map in two blocks, a block with its size)
    are left to the one-record path, which decides."""
    data = _timings(GOOD, 1, blocks)
    if blocks == [-1]:
        data = data.replace(zigzag(-1) + b"\x02x", zigzag(-1) + zigzag(10) + b"\x02x")  # a negative count: its size next
    values = [GOOD] * 32
    values[1] = data
    assert {i for group in decode_columns(values) for i in group.index.tolist()} == set(range(32)) - {1}


def test_a_string_that_is_not_utf8_is_left_to_the_codec() -> None:
    data = _forged(node_id="node-\u00e9").replace("é".encode(), b"\xe9\x00")
    with pytest.raises(UndecodableRecord):
        CODEC.decode(data)
    values = [GOOD] * 32
    values[1] = data
    assert {i for group in decode_columns(values) for i in group.index.tolist()} == set(range(32)) - {1}


def test_chain_content_is_typed_by_tag_and_a_later_column_leaves_old_rows_as_they_were() -> None:
    rows: list[dict[str, Any]] = [{"a": 1, "b": "x", "c": None, "d": 1.5, "e": True},
                                  {"a": None, "b": "ü", "c": None, "d": None, "e": False}]
    inferred = chain_contents(pa.Table.from_pylist(rows))
    typed = chain_contents(pa.Table.from_pylist(rows, schema=pa.schema(
        [("a", pa.int32()), ("b", pa.string()), ("c", pa.string()), ("d", pa.float64()), ("e", pa.bool_())])))
    assert inferred == typed and inferred[0] != inferred[1]
    assert chain_contents(pa.Table.from_pylist([{**r, "added": None} for r in rows])) == inferred
    assert chain_contents(pa.Table.from_pylist([{**rows[0], "b": "y"}]))[0] != inferred[0]


def _spelled_out(row: dict[str, Any], schema: pa.Schema) -> bytes:
    """A row's content in the second chain format, spelled out a value at a time."""
    out = CHAIN_FORMAT
    for name in sorted(row):
        value, kind = row[name], schema.field(name).type
        if value is None or name in ("seq", "prev_hash", "row_hash"):
            continue
        out += name.encode() + b"\x00"
        if pa.types.is_boolean(kind):
            out += b"b" + bytes([value])
        elif pa.types.is_integer(kind):
            out += b"i" + struct.pack("<q", value)
        elif pa.types.is_floating(kind):
            out += b"f" + struct.pack("<d", value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += b"s" + struct.pack("<I", len(data)) + data
    return out


def test_chain_contents_are_the_format_spelled_out() -> None:
    """The native contents, for every type tag, nulls and a slice, byte for byte as the format says."""
    schema = pa.schema([("s", pa.string()), ("l", pa.large_string()), ("y", pa.binary()), ("i8", pa.int8()),
                        ("u32", pa.uint32()), ("i", pa.int64()), ("f32", pa.float32()), ("f", pa.float64()),
                        ("b", pa.bool_()), ("seq", pa.int64()), ("n", pa.null())])
    rows = [{"s": "x" * k, "l": None if k % 3 else "ü" * k, "y": bytes(range(k)), "i8": -k, "u32": 2**32 - 1 - k,
             "i": None if k % 2 else -(2**62) + k, "f32": k / 4, "f": None if k % 4 else -k * 1.5, "b": k % 2 == 0,
             "seq": k, "n": None} for k in range(9)]
    table = pa.Table.from_pylist(rows, schema=schema)
    for part in (table, table.slice(3), table.slice(2, 4)):
        assert chain_contents(part) == [_spelled_out(r, schema) for r in part.to_pylist()]
    lineage = pa.Table.from_pylist([r for i, s in enumerate(varied()) for r in rows_of(s, "t", 0, i)["lineage"]])
    assert chain_contents(lineage) == [_spelled_out(r, lineage.schema) for r in lineage.to_pylist()]


def test_verify_chain_takes_both_formats_and_catches_an_edit() -> None:
    samples = [varied()[i] for i in (0, 3, 4, 5)]  # one chain: one day
    old = [rows_of(s, "t", 0, i)["lineage"][0] for i, s in enumerate(samples)]
    previous = GENESIS
    for seq, row in enumerate(old[:2]):  # written in the first format, then the sink's
        row |= {"seq": seq, "prev_hash": previous, "row_hash": row_hash(row, previous)}
        previous = row["row_hash"]
    for seq, row in enumerate(old[2:], start=2):
        content = chain_contents(pa.Table.from_pylist([row]))[0]
        row |= {"seq": seq, "prev_hash": previous, "row_hash": chained(previous, content)}
        previous = row["row_hash"]
    assert verify_chain(old) is None
    old[3]["seed"] += 1
    broken = verify_chain(old)
    assert broken is not None and broken.seq == 3 and "edited" in broken.reason


def test_the_pass_through_step_forwards_a_batch_column_wise_in_order_and_dead_letters_the_bad(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Good samples are forwarded as the bytes they came in, in their partition's order, without a decode one by
    one; a scene takes the one-record path; what the codec refuses goes to the dead letters."""
    from processors.passthrough import passthrough
    from streams.dead_letter import DLQ_TOPIC
    from streams.memory import MemoryBroker
    from streams.runtime import Step

    broker = MemoryBroker()
    samples = [*varied(), *(example_sample(i, "col") for i in range(100, 160))]  # a batch worth it
    samples[5] = samples[5].model_copy(update={"objects": [Annotation(class_label=1, bbox=[1.0, 1.0, 3.0, 3.0])]})
    for sample in samples:
        broker.send("sdg.samples.raw", sample)
    broker.append("sdg.samples.raw", b"bad-1", PLANTED["a union's branch index 3 (the codec: out of range)"])
    broker.append("sdg.samples.raw", b"bad-2", PLANTED["a NaN timing"])
    decoded: list[bytes] = []

    def counted(self: RecordCodec, data: bytes) -> Any:
        decoded.append(data)
        return CODEC_DECODE(self, data)

    monkeypatch.setattr(RecordCodec, "decode", counted)
    step = Step("forward", ("sdg.samples.raw",), passthrough, sink="sdg.replay.forwarded")
    stats = broker.runner(step, group="g").run(max_idle_s=0.05)
    assert stats.consumed == len(samples) + 2
    for part_in, part_out in zip(broker.log("sdg.samples.raw"), broker.log("sdg.replay.forwarded")):
        good = [(m.key(), m.value()) for m in part_in if m.key() not in (b"bad-1", b"bad-2")]
        assert [(m.key(), m.value()) for m in part_out] == good
    assert {letter.original_key for letter in broker.records(DLQ_TOPIC)} == {b"bad-1", b"bad-2"}  # type: ignore[attr-defined]
    assert len(decoded) < len(samples) // 2  # the rest went column-wise


CODEC_DECODE = RecordCodec.decode


def test_small_batches_take_the_one_record_path() -> None:
    """The reader's fixed cost is worth it from 16 values."""
    from schemas.columnar import worth_it

    assert not worth_it([GOOD] * 15) and worth_it([GOOD] * 16)
