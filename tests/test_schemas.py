"""Schemas: the Avro files, the Python types and the wire format agree, and old data stays readable."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.utils import generate_many

from schemas.codec import AVRO_DIR, MAGIC, RecordCodec, SchemaRegistry, registry
from schemas.errors import SchemaError, UndecodableRecord
from schemas.examples import example, example_sample
from schemas.records import RECORD_TYPES, Conditioning, GenerationJob, Record, _Part

CODEC = RecordCodec()


def _single_object(version, values) -> bytes:
    buf = io.BytesIO()
    buf.write(MAGIC + version.fingerprint)
    fastavro.schemaless_writer(buf, version.parsed, values)
    return buf.getvalue()


@pytest.mark.parametrize("record_type", list(RECORD_TYPES.values()), ids=list(RECORD_TYPES))
def test_every_record_type_round_trips(record_type: type[Record]) -> None:
    record = example(record_type, 7, "run-1")
    data = CODEC.encode(record)
    assert data[:2] == MAGIC
    assert CODEC.decode(data) == record


def _avro_fields(schema: dict, named: dict[str, dict]) -> dict[str, object]:
    """Field name → nested field map (records) or None, following named types and unions."""
    out: dict[str, object] = {}
    for field in schema["fields"]:
        out[field["name"]] = _shape(field["type"], named)
    return out


def _shape(avro_type: Any, named: dict[str, dict]) -> object:
    if isinstance(avro_type, list):
        shapes = [_shape(t, named) for t in avro_type if t != "null"]
        return shapes[0] if len(shapes) == 1 else shapes
    if isinstance(avro_type, str):
        return _shape(named[avro_type], named) if avro_type in named else None
    if avro_type["type"] == "record":
        named[avro_type["name"]] = avro_type
        return _avro_fields(avro_type, named)
    if avro_type["type"] in ("array", "map"):
        return _shape(avro_type["items" if avro_type["type"] == "array" else "values"], named)
    if avro_type["type"] == "enum":
        named[avro_type["name"]] = {"type": "enum"}
    return None


def _model_fields(model: type[_Part]) -> dict[str, object]:
    import typing

    out: dict[str, object] = {}
    for name, info in model.model_fields.items():
        nested = None
        for arg in [info.annotation, *typing.get_args(info.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, _Part):
                    nested = _model_fields(inner)
        out[name] = nested
    return out


@pytest.mark.parametrize("name", list(RECORD_TYPES))
def test_python_types_match_the_newest_avro_schema(name: str) -> None:
    avro = _avro_fields(registry().latest(name).raw, {})
    assert _model_fields(RECORD_TYPES[name]) == avro
    assert RECORD_TYPES[name].model_fields["schema_version"].default == registry().latest(name).version


def test_embedded_stage_records_match_their_own_schema() -> None:
    """A stage record carries the whole GeneratedSample: its copy must be the newest GeneratedSample."""
    sample = _avro_fields(registry().latest("GeneratedSample").raw, {})
    for name in ("LabeledSample", "ScoredSample", "SampleDecision"):
        assert _avro_fields(registry().latest(name).raw, {})["sample"] == sample, name


def _versions():
    return [(name, v) for name, versions in registry().versions.items() for v in versions]


@pytest.mark.parametrize(("name", "version"), _versions(), ids=[f"{n}.v{v}" for n, v in _versions()])
def test_newest_schema_reads_data_written_with_every_version(name: str, version: int) -> None:
    writer = registry().versions[name][version]
    for values in generate_many(writer.parsed, 20):
        data = _single_object(writer, {**values, "schema_version": version})
        try:
            decoded = CODEC.decode(data)
        except UndecodableRecord as e:
            # generated values may break the Python type's value checks (negative counts...):
            # that is validation, not a schema incompatibility
            assert "invalid" in str(e), e
            continue
        assert decoded.schema_name == name


def test_an_incompatible_schema_change_is_caught(tmp_path: Path) -> None:
    """Adding a field without a default breaks old data: the reader must refuse, not guess."""
    folder = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, folder)
    v1 = json.loads((folder / "GenerationJob.v1.avsc").read_text())
    v2 = {**v1, "fields": [*v1["fields"], {"name": "budget_usd", "type": "double"}]}
    (folder / "GenerationJob.v2.avsc").write_text(json.dumps(v2))
    old_data = CODEC.encode(example(GenerationJob, 1, "r"))
    newer = SchemaRegistry(folder)
    assert newer.latest("GenerationJob").version == 2
    with pytest.raises(UndecodableRecord, match="budget_usd"):
        RecordCodec(newer).decode(old_data)


def test_a_compatible_schema_change_fills_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, folder)
    v1 = json.loads((folder / "Throttle.v1.avsc").read_text())
    v2 = {**v1, "fields": [*v1["fields"], {"name": "zone", "type": "string", "default": "eu"}]}
    (folder / "Throttle.v2.avsc").write_text(json.dumps(v2))
    newer = SchemaRegistry(folder)
    writer_v1 = newer.versions["Throttle"][1]
    values = example(RECORD_TYPES["Throttle"], 1, "r").model_dump()
    decoded = fastavro.schemaless_reader(io.BytesIO(_single_object(writer_v1, values)[10:]), writer_v1.parsed,
                                         newer.latest("Throttle").parsed)
    assert isinstance(decoded, dict) and decoded["zone"] == "eu" and decoded["node_id"] == values["node_id"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "no value"),
        (b"", "not an Avro single-object record"),
        (b"{\"json\": 1}", "not an Avro single-object record"),
        (MAGIC + b"\x01" * 8 + b"x", "unknown writer schema"),
    ],
)
def test_garbage_is_undecodable_with_a_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(UndecodableRecord, match=reason):
        CODEC.decode(data)


def test_truncated_trailing_and_invalid_records_are_undecodable() -> None:
    good = CODEC.encode(example(GenerationJob, 1, "r"))
    with pytest.raises(UndecodableRecord, match="corrupt GenerationJob"):
        CODEC.decode(good[:-5])
    with pytest.raises(UndecodableRecord, match="trailing bytes"):
        CODEC.decode(good + b"\x00")
    invalid = GenerationJob.model_construct(**{**example(GenerationJob, 1, "r").model_dump(), "count": -5})
    with pytest.raises(UndecodableRecord, match="invalid GenerationJob"):
        CODEC.decode(CODEC.encode(invalid))


def test_schema_files_are_named_by_record_and_version(tmp_path: Path) -> None:
    (tmp_path / "Bad.avsc").write_text("{}")
    with pytest.raises(SchemaError, match="named <Name>.v<N>.avsc"):
        SchemaRegistry(tmp_path)


def test_a_v1_sample_is_read_as_a_png_image_and_unchanged_bytes_are_reused() -> None:
    """v2 renamed image_png to image (an alias) and added image_format: old samples read as PNG; bytes a record
    was decoded from are its encoding only when written with the newest schema."""
    from schemas.examples import example_sample

    sample = example_sample(3, "old")
    values = {k: v for k, v in sample.model_dump().items() if k != "image_format"} | {"schema_version": 1}
    values["image_png"] = values.pop("image")
    old = _single_object(registry().versions["GeneratedSample"][1], values)
    decoded = CODEC.decode(old)
    assert decoded.image == sample.image and decoded.image_format == "png"  # type: ignore[attr-defined]
    upgraded = CODEC.encode(decoded, wire=old)
    assert upgraded[2:10] == registry().latest("GeneratedSample").fingerprint
    assert CODEC.decode(upgraded).model_dump(exclude={"schema_version"}) == decoded.model_dump(exclude={"schema_version"})
    new = CODEC.encode(sample)
    assert CODEC.encode(CODEC.decode(new), wire=new) is new


def test_a_varint_longer_than_ten_bytes_is_refused_and_high_bit_payloads_pass() -> None:
    codec = RecordCodec()
    record = example(GenerationJob, 0, "run")
    data = codec.encode(record)  # data[10]: schema_version, a one-byte varint
    ten = data[:10] + bytes([data[10] | 0x80]) + b"\x80" * 8 + b"\x00" + data[11:]  # Avro allows ten bytes
    assert codec.decode(ten) == record
    eleven = data[:10] + bytes([data[10] | 0x80]) + b"\x80" * 9 + b"\x00" + data[11:]
    with pytest.raises(UndecodableRecord, match="canonical"):
        codec.decode(eleven)
    # a payload with ten high-bit bytes in a row is canonical bytes, not a varint: it decodes
    image = bytes(range(240, 256)) * 4
    sample = example_sample(0, "run").model_copy(update={"image": image,
                                                         "image_sha256": hashlib.sha256(image).hexdigest()})
    assert codec.decode(codec.encode(sample)) == sample
    # ...and leaving the payload's runs out does not hide an over-long varint elsewhere in the record
    data = codec.encode(sample)
    with pytest.raises(UndecodableRecord, match="canonical"):
        codec.decode(data[:10] + bytes([data[10] | 0x80]) + b"\x80" * 9 + b"\x00" + data[11:])


def test_encode_alike_gives_the_codecs_bytes_for_every_record() -> None:
    """Records made alike, their own fields spliced into one encoding, are byte for byte what the codec writes, with
    multi-byte lengths, non-ASCII strings, null and non-null union branches and maps among the varying values."""
    from schemas.codec import encode_alike

    first = example_sample(0, "r", payload_bytes=64)
    shared = Conditioning(class_label=None, params={"ω": "x" * 200})
    records = [first.model_copy(update={
        "sample_id": f"r-s{i:06d}é", "seed": 10**15 * i, "image": bytes(range(i % 256)) * (1 + 3 * i),
        "conditioning": shared if i % 3 else Conditioning(class_label=i), "steps": None if i % 2 else i,
        "timings_ms": {"batch_compute": i / 7}}) for i in range(40)]
    varying = {name: [r.model_dump()[name] for r in records] for name in ("sample_id", "seed", "image", "steps", "timings_ms")}
    dumped: dict[int, Any] = {}  # one dump per conditioning object, as the generate processor passes them
    varying["conditioning"] = [dumped.setdefault(id(r.conditioning), r.conditioning.model_dump()) for r in records]
    assert encode_alike(first, varying) == [CODEC.encode(r) for r in records]
    assert encode_alike(first, {}) == [CODEC.encode(first)]
