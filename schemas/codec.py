"""Avro single-object encoding of records, with every schema version known.

Wire format (Avro spec, "single object encoding"): ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer's schema, then the Avro binary body. The fingerprint
names the exact writer schema, so a reader decodes data written with any earlier version
and resolves it to the newest one (Avro schema resolution fills added fields from defaults).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import fastavro
from fastavro._write import write_data  # type: ignore[attr-defined]  # schemaless_writer's body: ~1 µs a record less
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import ValidationError

from schemas.errors import SchemaError, UndecodableRecord
from schemas.records import RECORD_TYPES, Record

AVRO_DIR = Path(__file__).parent / "avro"
MAGIC = b"\xc3\x01"
_HEADER = len(MAGIC) + 8
# ten bytes in a row with the high bit set, outside the contents of bytes and string fields: where a varint longer
# than Avro's ten bytes would be (fastavro reads one as its value; Java's Avro refuses it). Such a record must be
# its canonical encoding. Found on a map of the bytes (high bit → 1), a C-speed translate and substring search.
_HIGH = bytes(int(b >= 0x80) for b in range(256))
_RUN = b"\x01" * 10
_FILE = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One Avro file: a record name, its version and the parsed schema."""

    name: str
    version: int
    path: Path
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes
    named: dict[str, Any]  # the named types ``parsed`` refers to

    def write(self, values: Any) -> bytes:
        """The single-object encoding of ``values`` (dicts and lists as fastavro takes them) with this schema."""
        out = bytearray(MAGIC + self.fingerprint)
        write_data(out, values, self.parsed, self.named, "", {})  # schemaless_writer's body, without its file
        return bytes(out)


class SchemaRegistry:
    """Every version of every record schema found in a folder of ``<Name>.v<N>.avsc`` files."""

    def __init__(self, folder: Path = AVRO_DIR) -> None:
        self.folder = folder
        self.versions: dict[str, dict[int, SchemaVersion]] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        for path in sorted(folder.glob("*.avsc")):
            match = _FILE.match(path.name)
            if match is None:
                raise SchemaError(f"{path}: schema files are named <Name>.v<N>.avsc")
            try:
                raw = json.loads(path.read_text())
                named: dict[str, Any] = {}
                parsed = fastavro.parse_schema(raw, named)
                canonical = to_parsing_canonical_form(fastavro.parse_schema(raw, _write_hint=False))
            except (ValueError, fastavro.schema.SchemaParseException) as e:
                raise SchemaError(f"{path}: not a valid Avro schema: {e}") from e
            name, version = match["name"], int(match["version"])
            if raw.get("name") != name:
                raise SchemaError(f"{path}: file name says {name}, schema says {raw.get('name')}")
            fp = fingerprint(canonical, "CRC-64-AVRO")
            sv = SchemaVersion(name, version, path, raw, parsed, bytes.fromhex(fp)[::-1], named)
            self.versions.setdefault(name, {})[version] = sv
            self.by_fingerprint[sv.fingerprint] = sv
        if not self.versions:
            raise SchemaError(f"no schema files in {folder}")

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of the record schema ``name``."""
        try:
            versions = self.versions[name]
        except KeyError:
            raise SchemaError(f"unknown record schema {name!r}; known: {sorted(self.versions)}") from None
        return versions[max(versions)]


@cache
def registry() -> SchemaRegistry:
    """The registry of the schema files shipped in this package (loaded once)."""
    return SchemaRegistry()


@dataclass(frozen=True)
class Encoded:
    """Records of one type already encoded with its newest schema (``RecordCodec.encode``'s bytes): what a hot path
    returns in place of the typed records. The runtime routes them by type, checks their sizes and produces them."""

    type: type[Record]
    keys: list[bytes | None]
    values: list[bytes]


def zigzag(n: int) -> bytes:
    """An Avro long: zigzag, then a varint (7 bits a byte, least significant first)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_length = lru_cache(maxsize=4096)(zigzag)  # string and bytes lengths repeat


def encode_alike(first: Record, varying: Mapping[str, Sequence[Any]]) -> list[bytes]:
    """The encodings of records equal to ``first`` but in the top-level fields of ``varying`` (each a value per record,
    as ``model_dump`` gives it): the other fields are encoded once and each varying field column by column (strings
    and bytes directly, other values by fastavro, once per distinct object), then spliced together: ~4 times faster
    than ``RecordCodec.encode`` a record. The caller vouches that every record is valid: ``first`` was validated,
    and the varying values are of kinds it validated."""
    writer = registry().latest(first.schema_name)
    data = first.model_dump()
    data["schema_version"] = writer.version
    between: list[bytes] = []  # the fixed bytes before, between and after the varying fields
    own: list[tuple[str, Any]] = []
    out = bytearray(MAGIC + writer.fingerprint)
    for f in writer.parsed["fields"]:
        if f["name"] in varying:
            between.append(bytes(out))
            out = bytearray()
            own.append((f["name"], f["type"]))
        else:
            write_data(out, data[f["name"]], f["type"], writer.named, f["name"], {})
    between.append(bytes(out))
    parts: list[Iterable[bytes]] = [repeat(between[0])]
    for (name, schema), after in zip(own, between[1:]):
        column = varying[name]
        if schema in ("string", "bytes"):
            raw = [v.encode() for v in column] if schema == "string" else column
            parts.append([_length(len(b)) + b for b in raw])
        else:
            seen: dict[int, bytes] = {}  # id → encoding: the column holds its values, so ids are not reused
            encoded = []
            for value in column:
                if id(value) not in seen:
                    buf = bytearray()
                    write_data(buf, value, schema, writer.named, name, {})
                    seen[id(value)] = bytes(buf)
                encoded.append(seen[id(value)])
            parts.append(encoded)
        parts.append(repeat(after))
    return [b"".join(row) for row in zip(*parts)] if own else [between[0]]


class RecordCodec:
    """Encodes records to single-object Avro bytes and decodes them back to their Python types."""

    def __init__(self, schemas: SchemaRegistry | None = None) -> None:
        self.schemas = schemas or registry()
        for name in RECORD_TYPES:
            self.schemas.latest(name)  # every Python type has a schema

    def encode(self, record: Record, *, wire: bytes | None = None) -> bytes:
        """Serialize ``record`` with the newest version of its schema.

        Args:
            wire: The bytes ``record`` was decoded from: they are returned as they are when they were written
                with the newest schema (records are immutable, so they are its encoding; relays cost no encode).
        """
        writer = self.schemas.latest(record.schema_name)
        if wire is not None and wire[2:_HEADER] == writer.fingerprint:
            return wire
        data = record.model_dump()
        data["schema_version"] = writer.version
        return writer.write(data)

    def decode(self, data: bytes | None) -> Record:
        """Deserialize bytes written with any known schema version into the newest Python type.

        Raises:
            UndecodableRecord: the bytes are not a valid record of a known schema.
        """
        if data is None:
            raise UndecodableRecord("record has no value (tombstone or null)")
        if len(data) < _HEADER or data[:2] != MAGIC:
            raise UndecodableRecord(
                f"not an Avro single-object record (expected header c301, got {data[:2].hex() or 'nothing'})"
            )
        writer = self.schemas.by_fingerprint.get(data[2:_HEADER])
        if writer is None:
            raise UndecodableRecord(f"unknown writer schema fingerprint {data[2:_HEADER].hex()}")
        reader = self.schemas.latest(writer.name)
        buf = io.BytesIO(data)
        buf.seek(_HEADER)
        try:
            values = fastavro.schemaless_reader(buf, writer.parsed, None if reader is writer else reader.parsed)
        except Exception as e:  # fastavro raises many types on truncated or corrupt bodies
            raise UndecodableRecord(f"corrupt {writer.name} v{writer.version} body: {e!r}") from e
        if buf.tell() != len(data):
            raise UndecodableRecord(f"{len(data) - buf.tell()} trailing bytes after a {writer.name} record")
        if _suspect(data, values) and not _canonical(data, writer, values if reader is writer else None):
            raise UndecodableRecord(f"not the canonical encoding of a {writer.name} record (an over-long varint?)")
        said = values.get("schema_version") if isinstance(values, dict) else None
        if said != writer.version:
            raise UndecodableRecord(f"invalid {writer.name}: written with v{writer.version}, it says schema_version "
                                    f"{said!r}")
        try:
            return RECORD_TYPES[writer.name].model_validate(values)
        except ValidationError as e:
            raise UndecodableRecord(f"invalid {writer.name}: {e}") from e


def _suspect(data: bytes, values: Any) -> bool:
    """Whether ``data`` (a record holding ``values``) has ten bytes in a row with the high bit set outside the contents
    of its bytes and string fields. A field's content is left out where it occurs once in ``data`` (then that is
    where it is); random pixels or PNG bytes, where such runs are common, cost no re-encode then."""
    flags = data.translate(_HIGH)
    if flags.find(_RUN, _HEADER) < 0:
        return False
    masked = bytearray(flags)
    for content in _contents(values):
        at = data.find(content, _HEADER)
        if at >= 0 and data.find(content, at + 1) < 0:
            masked[at:at + len(content)] = bytes(len(content))
            if masked.find(_RUN, _HEADER) < 0:
                return False
    return True


def _contents(values: Any) -> Iterator[bytes]:
    """The bytes, outermost first (an image first), then the (UTF-8) strings of ten bytes or more in a decoded
    record."""
    level, strings = [values], []
    while level:
        nested: list[Any] = []
        for value in level:
            if isinstance(value, bytes):
                if len(value) >= 10:
                    yield value
            elif isinstance(value, str):
                if len(value) >= 4:  # four characters may be ten UTF-8 bytes
                    strings.append(value)
            elif isinstance(value, dict):
                nested.extend(value.values())
            elif isinstance(value, list):
                nested.extend(value)
        level = nested
    yield from (s.encode() for s in strings)


def _canonical(data: bytes, writer: SchemaVersion, values: Any) -> bool:
    """Whether ``data`` is what ``encode`` writes for the values it holds (``values``: read with the writer's schema,
    or None to read them again so)."""
    if values is None:
        values = fastavro.schemaless_reader(io.BytesIO(data[_HEADER:]), writer.parsed, None)
    return writer.write(values) == data

