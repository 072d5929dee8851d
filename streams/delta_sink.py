"""A Kafka → Delta sink with an exactly-once effect, written with ``deltalake`` (delta-rs).

Each batch is appended to each table in one Delta commit that also records, as app-transaction
versions, the next Kafka offset of every (group, topic, partition) it covers. On (re)start the
sink reads those versions back and skips every record a table already holds, so a sink killed
at any point and restarted writes every record once per table. Kafka offsets are committed only
after every table's commit, and only as a shortcut: the Delta versions are the truth.

Lineage rows get a hash chain per (run, date, source topic, source partition): each source
partition has one owner in the consumer group, so every chain has a single writer.

A consumed batch takes the column-wise path where it can (``write_many``): its values read at once into Arrow
(``schemas.columnar``), their rows built column by column (the rows function's ``columns``), the chain's contents
and hashes natively (``schemas.tables.chain_content_buffers``, ``sdg_native.chain``); what that path leaves (other
record types, scenes, anything it cannot check) is decoded and written one record at a time, in its place in the
batch.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.native import native
from schemas.records import Record
from schemas.tables import (
    CHAIN_KEY,
    GENESIS,
    IDENTITY,
    PARTITION_BY,
    TABLES,
    chain_content_buffers,
    conform,
    identity_key,
    identity_keys,
)
from streams.anchors import Anchors
from streams.config import KafkaConfig

log = logging.getLogger(__name__)
HEADS_KEY = "sdg.chain_heads"  # commit metadata: the head of every chain the commit extended
CHAIN_COLUMNS = ("seq", "prev_hash", "row_hash")


class SinkConfig(BaseModel):
    """How the Delta sink batches and maintains its tables (``SDG_SINK__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_rows: int = Field(default=1000, ge=1, description="Write when this many rows are buffered…")
    max_batch_s: float = Field(default=2.0, gt=0, description="…or when the oldest buffered row is this old.")
    compact_every: int = Field(default=50, ge=1, description="Compact a table after this many commits to it.")
    max_commit_retries: int = Field(default=10, ge=0)
    telemetry_every_s: float = Field(default=1.0, ge=0, description="Keep one reading per node and source per "
                                                                    "this many seconds (0: every reading).")
    anchor_key: SecretStr | None = Field(default=None, description=(
        "Signs the chain heads anchored outside the tables, 16+ characters (default: a random key made in "
        "<state>/anchors)."))


@dataclass
class SinkStats:
    skipped: int = 0  # already in a table (written before a restart)
    duplicates: int = 0  # rows a table already holds under another offset (an upstream replay re-published them)
    rows: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    dead_letters: int = 0
    last_commit_s: float | None = None  # time.monotonic() of the last commit


def app_id(group: str, topic: str, partition: int) -> str:
    return f"{group}/{topic}/{partition}"


class DeltaTables:
    """The table folders under ``root`` and what the sink needs of them: versions, chain heads, writes."""

    def __init__(self, root: Path, *, storage_options: dict[str, str] | None = None) -> None:
        self.root = root
        self.storage_options = storage_options
        self._writing: dict[str, Any] = {}  # table → the handle appends go through (its log read once, not per commit)
        self._reading: dict[str, Any] = {}  # table → the handle reads go through, brought up to date before each
        self._lock = threading.Lock()  # a handle is used by one thread at a time

    def path(self, table: str) -> str:
        return str(self.root / table)

    def open(self, table: str) -> Any:
        from deltalake import DeltaTable

        try:
            return DeltaTable(self.path(table), storage_options=self.storage_options)
        except Exception as e:  # deltalake raises TableNotFoundError, a subclass of its own untyped errors
            if type(e).__name__ == "TableNotFoundError":
                return None
            raise

    @contextmanager
    def _read(self, table: str) -> Iterator[Any]:
        """A handle to read ``table`` through, up to date (None while the table does not exist): kept open and brought
        up to date by its new log entries (~1 ms, where opening the table again replays its log: ~50 ms at 60
        commits)."""
        with self._lock:
            handle = self._reading.get(table)
            if handle is None:
                handle = self._reading[table] = self.open(table)
                if handle is None:
                    del self._reading[table]
            else:
                handle.update_incremental()
            yield handle

    def next_offset(self, table: str, app: str) -> int:
        """The next Kafka offset the table still needs for ``app`` (0 when it holds nothing of it)."""
        with self._read(table) as dt:
            version = dt.transaction_version(app) if dt is not None else None
        return int(version) if version is not None else 0

    def identities(self, table: str, run_id: str) -> set[str]:
        """The identity (``schemas.tables.identity_key``) of every row ``table`` holds for ``run_id``."""
        import pyarrow.compute as pc

        with self._read(table) as dt:
            if dt is None:
                return set()
            rows = dt.to_pyarrow_dataset().to_table(filter=pc.field("run_id") == run_id, columns=list(IDENTITY[table]))
        return set(identity_keys(rows, table))

    def chain_heads(self, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[int, str]]:
        """(next seq, previous hash) of each lineage chain of ``keys`` as the table holds it, in one read."""
        import pyarrow.compute as pc

        heads = {key: (0, GENESIS) for key in keys}
        if not keys:
            return heads
        with self._read("lineage") as dt:
            if dt is None:
                return heads
            expr = (pc.field("run_id").isin(sorted({k[0] for k in keys}))
                    & pc.field("date").isin(sorted({k[1] for k in keys})))
            rows = dt.to_pyarrow_dataset().to_table(filter=expr, columns=[*CHAIN_KEY, "seq", "row_hash"])
        if rows.num_rows:  # each chain's last row
            last = rows.group_by(list(CHAIN_KEY)).aggregate([("seq", "max")])
            last = last.select([*CHAIN_KEY, "seq_max"]).rename_columns([*CHAIN_KEY, "seq"])
            rows = rows.join(last, keys=[*CHAIN_KEY, "seq"], join_type="inner")
        for *key, seq, digest in zip(*(rows[c].to_pylist() for c in [*CHAIN_KEY, "seq", "row_hash"])):
            if tuple(key) in heads:
                heads[tuple(key)] = (int(seq) + 1, digest)
        return heads

    def recorded_heads(self, version: int | None = None) -> dict[str, tuple[int, str]]:
        """The lineage chain heads the sink recorded in its commits (up to ``version``): chain id → (seq, hash)."""
        dt = self.open("lineage")
        heads: dict[str, tuple[int, str]] = {}
        for commit in sorted(dt.history() if dt is not None else [], key=lambda c: c["version"]):
            if HEADS_KEY in commit and (version is None or commit["version"] <= version):
                heads.update({k: (int(v[0]), v[1]) for k, v in json.loads(commit[HEADS_KEY]).items()})
        return heads

    def append(self, table: str, data: Any, versions: dict[str, int], *, retries: int,
               metadata: dict[str, str] | None = None) -> None:
        """Append ``data`` (a pyarrow table of ``TABLES[table]``) and record ``versions`` (app id → next offset)
        in the same commit."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        now = int(time.time() * 1000)
        properties = CommitProperties(max_commit_retries=retries, custom_metadata=metadata,
                                      app_transactions=[Transaction(a, v, now) for a, v in versions.items()])
        # an open handle is kept up to date by its own commits (and by delta-rs's conflict checks when another writer
        # committed first): half the time of a commit through the path, which reads the log again
        handle = self._writing.get(table)
        write_deltalake(self.path(table) if handle is None else handle, data, mode="append", partition_by=PARTITION_BY,
                        schema_mode="merge", commit_properties=properties,
                        storage_options=self.storage_options if handle is None else None)
        if handle is None:
            self._writing[table] = self.open(table)

    def compact(self, table: str) -> None:
        dt = self.open(table)
        if dt is not None:
            dt.optimize.compact()
            self._writing.pop(table, None)


class DeltaSink:
    """The sink of a ``sink`` step: appends the rows ``fn`` makes of each record to the tables at each checkpoint.

    The runtime consumes, decodes and dead-letters; ``write`` buffers a record's rows (skipping tables that
    already hold it), ``due`` asks for a checkpoint when the buffer is full or old, and ``flush`` builds the
    batch's Arrow tables and hands them to a writer thread (each table's commit carries its offsets), so the
    next batch is decoded while this one is written (delta-rs writes without the GIL). The runtime commits a
    partition's Kafka offset only up to ``unwritten()``: what is buffered or being written is read again after a
    crash (the tables' versions skip what did land).
    """

    def __init__(self, *, fn: Callable[[Record, str, int, int], dict[str, list[dict[str, Any]]]],
                 tables: DeltaTables, group: str, config: SinkConfig = SinkConfig(), anchors: Anchors | None = None) -> None:
        """``fn`` makes the rows of one record read at (topic, partition, offset): ``processors.lineage.rows_of``;
        ``group`` is the step's consumer group (it names the offsets each table records); ``anchors``: where the
        chain heads of every lineage commit are also signed and kept. ``fn.columns``, when ``fn`` has it (record type
        → rows of a ``schemas.columnar`` table, each read at its topic, partition, offset), makes ``fn``'s rows
        column-wise."""
        self.tables = tables
        self.anchors = anchors
        self.group = group
        self.config = config
        self.fn = fn
        self.columns: dict[str, Callable[..., dict[str, Any]]] = getattr(fn, "columns", {})
        native()  # the chain and the column-wise reader: a missing extension fails now, not at a batch
        self.stats = SinkStats()
        self._next: dict[tuple[str, str], int] = {}  # (table, app id) → next offset the table needs
        self._chains: dict[tuple[Any, ...], tuple[int, str]] = {}
        self._commits: dict[str, int] = {}
        self._buffer: dict[str, list[Any]] = {}  # per table: rows (dicts) and, from write_many, Arrow tables of rows
        self._owners: dict[str, list[Any]] = {}  # per table, per buffered row: the message it came from (None: a table)
        self._rows = 0
        self._covered: dict[tuple[str, int], int] = {}  # source partition → next offset once the buffer is written
        self._first: dict[tuple[str, int], int] = {}  # source partition → the buffer's first offset
        self._oldest: float | None = None
        self._rejected: list[tuple[Any, Exception]] = []
        self._seen: dict[tuple[str, str], set[str]] = {}  # (table, run) → identities held or buffered
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="delta-sink")
        self._beside = ThreadPoolExecutor(1, thread_name_prefix="delta-sink-beside")  # a second table's commit
        self._inflight: tuple[Future[None], dict[tuple[str, int], int]] | None = None  # a write, its first offsets

    def assigned(self) -> None:
        """After a rebalance another member may have written partitions this one had: re-read the tables."""
        self._next.clear()
        self._chains.clear()
        self._seen.clear()

    def _seen_in(self, table: str, run_id: str) -> set[str]:
        """The identities ``table`` holds or has buffered for ``run_id`` (read from the table the first time)."""
        seen = self._seen.get((table, run_id))
        if seen is None:
            seen = self._seen[(table, run_id)] = self.tables.identities(table, run_id)
        return seen

    def _unseen(self, table: str, run_id: str, identity: str) -> bool:
        """Whether a row of ``identity`` is new to ``table`` (it is seen from now on); counts a duplicate."""
        seen = self._seen_in(table, run_id)
        if identity in seen:
            self.stats.duplicates += 1
            return False
        seen.add(identity)
        return True

    def _new(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows whose identity the table does not hold yet: a generator or labeler that crashed before its
        offset commit publishes its outputs again, under new offsets."""
        if table not in IDENTITY:
            return rows
        return [row for row in rows if self._unseen(table, row["run_id"], identity_key(row[c] for c in IDENTITY[table]))]

    def _fresh(self, table: str, data: Any) -> Any:
        """``_new`` for a pyarrow table of rows."""
        import pyarrow as pa

        if table not in IDENTITY or not data.num_rows:
            return data
        runs = data.column("run_id").unique().to_pylist()
        identities = identity_keys(data, table)
        if len(runs) == 1:  # the common case: one run, nothing seen before: no row by row
            seen, new = self._seen_in(table, runs[0]), set(identities)
            if len(new) == len(identities) and seen.isdisjoint(new):
                seen |= new
                return data
        keep = [self._unseen(table, run_id, identity)
                for run_id, identity in zip(data.column("run_id").to_pylist(), identities)]
        return data.filter(pa.array(keep))

    def due(self) -> bool:
        """A full or old buffer, or a write that has landed while nothing new came in (its offsets can be committed;
        with more coming in they are committed at the next checkpoint: the tables' versions are the truth)."""
        return self._full() or (not self._covered and self._inflight is not None and self._inflight[0].done())

    def _full(self) -> bool:
        """The buffer holds ``batch_rows`` rows, or its oldest is ``max_batch_s`` old."""
        return self._rows >= self.config.batch_rows or (
            self._oldest is not None and time.monotonic() - self._oldest >= self.config.max_batch_s)

    def _needs(self, table: str, topic: str, partition: int) -> int:
        key = (table, app_id(self.group, topic, partition))
        if key not in self._next:
            self._next[key] = self.tables.next_offset(table, key[1])
        return self._next[key]

    def write(self, message: Any, record: Record) -> None:
        """Buffer the rows of one record (raises on a record ``fn`` cannot make rows of: the runtime's policy)."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        rows = self.fn(record, topic, partition, offset)
        wrote = False
        for table, table_rows in rows.items():
            if offset < self._needs(table, topic, partition):
                continue  # this table already holds the record: written before a restart
            table_rows = self._new(table, table_rows)
            self._buffer.setdefault(table, []).extend(table_rows)
            self._owners.setdefault(table, []).extend([message] * len(table_rows))
            self._rows += len(table_rows)
            wrote = True
        if rows and not wrote:
            self.stats.skipped += 1
        self._read((topic, partition), offset, offset)

    def _read(self, tp: tuple[str, int], first: int, last: int) -> None:
        """Records ``first`` to ``last`` of partition ``tp`` are buffered (or skipped): written out with the buffer."""
        self._covered[tp] = last + 1
        self._first.setdefault(tp, first)
        if self._oldest is None:
            self._oldest = time.monotonic()

    def write_many(self, messages: list[Any], one: Callable[[Any], None],
                   carries: Callable[[str, str], bool]) -> Iterator[int]:
        """Buffer the rows of a consumed batch, in its order: column-wise what ``schemas.columnar`` decodes and
        ``columns`` makes rows of (of a type its topic ``carries``), each other message through ``one`` (the
        runtime's one-record path: decoded, checked, ``write``, or dead-lettered). Yields how many messages it has
        taken each time the buffer is full (the runtime writes it out, then resumes) and at the end."""
        import numpy as np
        import pyarrow as pa

        from schemas.columnar import decode_columns, worth_it

        values = [m.value() for m in messages]
        groups = [g for g in decode_columns(values) if g.name in self.columns] \
            if self.columns and worth_it(values) else []
        where = [(m.topic(), m.partition(), m.offset()) for m in messages]
        fast: dict[int, tuple[dict[str, Any], int]] = {}  # message → its group's rows, its row in them
        for group in groups:
            topics = [where[i][0] for i in group.index.tolist()]
            carried = {topic: carries(topic, group.name) for topic in set(topics)}
            if not all(carried.values()):
                kept = np.array([carried[topic] for topic in topics], dtype=bool)
                group = replace(group, table=group.table.filter(pa.array(kept)), index=group.index[kept])
            index = group.index.tolist()
            read = [where[i] for i in index]
            rows = self.columns[group.name](group.table, *(list(c) for c in zip(*read))) if read else {}
            fast.update(zip(index, zip(itertools.repeat(rows), itertools.count())))
        whole = len(groups) == 1 and len(fast) == len(messages)  # the usual batch: its rows in its order
        i = 0
        while i < len(messages):
            if self._full():
                yield i
            if i not in fast:
                one(messages[i])
                i += 1
                continue
            rows = fast[i][0]  # a run of one group's rows, as many as the buffer has room for
            end, most = i, i + max(1, (self.config.batch_rows - self._rows) // len(rows))
            if whole:
                end = min(len(messages), most)
            while end < len(messages) and end < most and end in fast and fast[end][0] is rows:
                end += 1
            self._write_rows(where[i:end], rows, list(range(i, end)) if whole else [fast[j][1] for j in range(i, end)])
            i = end
        yield i

    def _write_rows(self, where: list[tuple[str, int, int]], rows: dict[str, Any], take: list[int]) -> None:
        """Buffer rows ``take`` of each table's Arrow rows, made of the messages read at ``where`` (topic, partition,
        offset; one row each), like ``write``."""
        import pyarrow as pa

        lowest: dict[tuple[str, int], int] = {}
        highest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in where:  # a partition's records come in the order of their offsets
            lowest.setdefault((topic, partition), offset)
            highest[(topic, partition)] = offset
        in_order = take[-1] - take[0] == len(take) - 1  # rows take[0], take[0] + 1, …: a slice of the group's rows
        wrote = [False] * len(where)  # per message, whether any table took its rows
        for table, data in rows.items():
            needs = {tp: self._needs(table, *tp) for tp in lowest}
            if all(lowest[tp] >= n for tp, n in needs.items()):  # none written before a restart: the common case
                part = data.slice(take[0], len(take)) if in_order else data.take(pa.array(take, pa.int64()))
                wrote = [True] * len(where)
            else:
                keep = [offset >= needs[(topic, partition)] for topic, partition, offset in where]
                part = data.take(pa.array([k for k, kept in zip(take, keep) if kept], pa.int64()))
                wrote = [w or kept for w, kept in zip(wrote, keep)]
            part = self._fresh(table, part)
            if part.num_rows:
                self._buffer.setdefault(table, []).append(part)
                self._owners.setdefault(table, []).append(None)
                self._rows += part.num_rows
        self.stats.skipped += wrote.count(False)
        for tp, offset in highest.items():
            self._read(tp, lowest[tp], offset)

    def _chain(self, data: Any) -> tuple[Any, dict[str, str]]:
        """The lineage rows with their chain columns; the commit metadata that records each touched chain's new head."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        # each row's chain as a number (no name of the key holds a '|': chain_id's separator)
        ids = pc.dictionary_encode(pc.binary_join_element_wise(
            *(data.column(k).cast(pa.string()) for k in CHAIN_KEY), "|")).combine_chunks()
        keys = [(run, day, topic, int(partition)) for run, day, topic, partition in
                (name.split("|") for name in ids.dictionary.to_pylist())]
        unknown = self.tables.chain_heads([key for key in keys if key not in self._chains])
        heads = [self._chains.get(key) or unknown[key] for key in keys]
        n = data.num_rows
        seqs, previous, hashes, next_seqs, next_hashes = native().chain(  # chained() for each row, in order
            [seq for seq, _ in heads], [digest for _, digest in heads],
            ids.indices.cast(pa.uint32()).to_numpy().astype("<u4").tobytes(), *chain_content_buffers(data))
        heads = list(zip(next_seqs, next_hashes))
        self._chains.update(zip(keys, heads))
        hex_offsets = pa.py_buffer(np.arange(0, 64 * (n + 1), 64, dtype="<i4").tobytes())  # 64 hex digits each
        for name, column in zip(CHAIN_COLUMNS, (
                pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(seqs)]),
                pa.Array.from_buffers(pa.string(), n, [None, hex_offsets, pa.py_buffer(previous)]),
                pa.Array.from_buffers(pa.string(), n, [None, hex_offsets, pa.py_buffer(hashes)]))):
            data = data.append_column(TABLES["lineage"].field(name), column)
        touched = {"|".join(map(str, key)): [seq - 1, digest] for key, (seq, digest) in zip(keys, heads)}
        return data, {HEADS_KEY: json.dumps(touched)}

    @staticmethod
    def _unchained(table: str) -> Any:
        import pyarrow as pa

        return pa.schema([f for f in TABLES[table] if f.name not in CHAIN_COLUMNS])

    def _build(self) -> dict[str, tuple[Any, dict[str, str] | None]]:
        import pyarrow as pa

        out: dict[str, tuple[Any, dict[str, str] | None]] = {}
        for table, items in self._buffer.items():
            schema, parts, rows = self._unchained(table), [], []
            for item in [*items, None]:
                if isinstance(item, dict):
                    rows.append(item)
                    continue
                if rows:  # column by column: five times faster than from_pylist on the samples rows
                    parts.append(pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in schema.names}, schema=schema))
                    rows = []
                if item is not None:
                    parts.append(conform(item, schema))
            if parts:
                data = pa.concat_tables(parts)
                out[table] = self._chain(data) if table == "lineage" else (data, None)
        return out

    def _arrow(self) -> dict[str, tuple[Any, dict[str, str] | None]]:
        """Each table's buffered rows as a pyarrow table, chained, with its commit metadata.

        A record whose rows do not fit the table schema (a value out of a column's range) goes to the
        dead-letter topic, with every row it made in any table; the rest of the batch is written.
        """
        import pyarrow as pa

        chains = dict(self._chains)
        try:
            return self._build()
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            self._chains = chains  # the chains advance only by the rows that are written
        bad: dict[int, tuple[Any, Exception]] = {}
        for table, rows in self._buffer.items():
            schema = self._unchained(table)
            for row, owner in zip(rows, self._owners[table]):
                if owner is None:
                    continue  # rows made column-wise: of the table's types already
                try:
                    pa.Table.from_pylist([row], schema=schema)
                except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                    bad.setdefault(id(owner), (owner, ValueError(f"a row for table {table} does not fit its schema: {e}")))
        self._rejected += list(bad.values())
        for table in self._buffer:
            kept = [(r, o) for r, o in zip(self._buffer[table], self._owners[table]) if o is None or id(o) not in bad]
            self._buffer[table], self._owners[table] = [r for r, _ in kept], [o for _, o in kept]
        return self._build()

    def flush(self, *, wait: bool = True) -> list[tuple[Any, Exception]]:
        """Start writing every table's buffered rows, each with its offsets in the same commit, once the buffer is
        full or old (after the last write has landed; ``wait``: at once, and wait for it); the records whose rows
        did not fit a table, with why (the runtime dead-letters them before it commits the Kafka offsets).

        Raises:
            Whatever the last write raised (a disk or storage error stops the step; nothing of it is committed).
        """
        rejected: list[tuple[Any, Exception]] = []
        if self._covered and (wait or self._full()):  # a landed write's checkpoint leaves a part-filled buffer be
            # built while the last write may still run (its chains' heads are this thread's already); written after it
            built, covered = self._arrow(), self._covered
            self._settle()
            self._inflight = (self._writer.submit(self._write, built, covered), self._first)
            rejected, self._rejected = self._rejected, []
            self.stats.dead_letters += len(rejected)
            self._buffer, self._owners, self._covered, self._first, self._oldest = {}, {}, {}, {}, None
            self._rows = 0
        if wait or self._inflight is not None and self._inflight[0].done():
            self._settle()
        return rejected

    def unwritten(self) -> dict[tuple[str, int], int]:
        """Per source partition, the first offset not yet in the tables (buffered, or being written)."""
        out = dict(self._first)
        for tp, offset in (self._inflight[1] if self._inflight is not None else {}).items():
            out[tp] = min(offset, out.get(tp, offset))
        return out

    def _settle(self) -> None:
        if self._inflight is not None:
            future, self._inflight = self._inflight[0], None
            future.result()

    def _write(self, built: dict[str, tuple[Any, dict[str, str] | None]], covered: dict[tuple[str, int], int]) -> None:
        """The writer thread: one commit per table, with the offsets it now holds; two tables commit side by side
        (delta-rs writes without the GIL; each table's versions say what it holds, whichever lands first)."""
        tables = list(built)  # none: a batch of records every table held already
        beside = {table: self._beside.submit(self._commit, table, *built[table], covered) for table in tables[1:2]}
        versions = {table: self._commit(table, *built[table], covered) for table in tables if table not in beside}
        versions |= {table: future.result() for table, future in beside.items()}
        for table in built:
            for app, n in versions[table].items():
                self._next[(table, app)] = n
            self.stats.rows[table] = self.stats.rows.get(table, 0) + built[table][0].num_rows
            self.stats.commits += 1
            self.stats.last_commit_s = time.monotonic()
            self._commits[table] = self._commits.get(table, 0) + 1
            if self._commits[table] % self.config.compact_every == 0:
                self.tables.compact(table)

    def _commit(self, table: str, data: Any, metadata: dict[str, str] | None, covered: dict[tuple[str, int], int]
                ) -> dict[str, int]:
        """Append ``data`` to ``table`` with the offsets it now holds (app id → next offset: returned), and anchor the
        chain heads a lineage commit records."""
        versions = {app_id(self.group, t, p): n for (t, p), n in covered.items() if n > self._needs(table, t, p)}
        self.tables.append(table, data, versions, retries=self.config.max_commit_retries, metadata=metadata)
        if self.anchors is not None and metadata is not None:  # after the commit: an anchor names written rows
            self.anchors.append(json.loads(metadata[HEADS_KEY]))
        return versions


def delta_runner(topics: list[str], *, fn: Callable[[Record, str, int, int], dict[str, list[dict[str, Any]]]],
                 kafka: KafkaConfig, tables: DeltaTables, group: str, run_id: str,
                 config: SinkConfig = SinkConfig(), step_id: str = "lineage") -> Any:
    """A runner of a ``DeltaSink`` step over ``topics`` (``runner.step.fn.stats`` holds the rows written)."""
    from streams.config import RunnerConfig
    from streams.runtime import Runner, Step

    step = Step(step_id, tuple(topics), DeltaSink(fn=fn, tables=tables, group=group, config=config), kind="sink")
    return Runner(step, kafka=kafka, config=RunnerConfig(), group=group, run_id=run_id)
