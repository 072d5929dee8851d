"""An in-memory broker for the runtime: the pipeline tier of tests runs processors in seconds, without Kafka.

``MemoryBroker`` keeps topics as lists of partitions and each group's committed offsets; ``MemoryIO`` gives a
``Runner`` the same operations as ``KafkaIO``, with the same guarantees: a plain step's outputs are visible at
once, a stateful step's outputs, changelog and offsets only when its checkpoint commits (a transaction), and
a failed runner commits nothing. One member per group: it gets every partition.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from schemas.codec import RecordCodec
from schemas.records import Record
from streams.catalog import CATALOG, REPLAY_PREFIX
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig, RunnerConfig
from streams.producer import key_bytes
from streams.runtime import Runner, Step, state_topics


@dataclass(frozen=True)
class MemoryMessage:
    """A stored record, with confluent-kafka's accessor methods."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: tuple[tuple[str, bytes], ...] = ()

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return list(self._headers) or None

    def error(self) -> None:
        return None


@dataclass
class MemoryBroker:
    """Topics and committed offsets, shared by every ``MemoryIO`` of a test."""

    max_record_bytes: int = KafkaConfig().max_record_bytes
    partitions: dict[str, int] = field(default_factory=dict)  # topics outside the catalog (state topics): 1 unless set
    topics: dict[str, list[list[MemoryMessage]]] = field(default_factory=dict)
    committed: dict[tuple[str, str, int], int] = field(default_factory=dict)
    codec: RecordCodec = field(default_factory=RecordCodec)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def partitions_of(self, topic: str) -> int:
        if topic in self.partitions:
            return self.partitions[topic]
        if topic in CATALOG or topic.startswith(REPLAY_PREFIX):
            return topic_spec(topic).partitions
        return 1

    def log(self, topic: str) -> list[list[MemoryMessage]]:
        if topic not in self.topics:
            self.topics[topic] = [[] for _ in range(self.partitions_of(topic))]
        return self.topics[topic]

    def append(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
               headers: dict[str, bytes] | None = None) -> None:
        with self.lock:
            parts = self.log(topic)
            p = partition if partition is not None else (zlib.crc32(key) if key else 0) % len(parts)
            parts[p].append(MemoryMessage(topic, p, len(parts[p]), key, value, tuple((headers or {}).items())))

    def send(self, topic: str, record: Record) -> None:
        """Produce a record as a producer outside the pipeline does."""
        self.append(topic, key_bytes(record), self.codec.encode(record))

    def messages(self, topic: str) -> list[MemoryMessage]:
        return [m for part in self.log(topic) for m in part]

    def records(self, topic: str) -> list[Record]:
        return [self.codec.decode(m.value()) for m in self.messages(topic)]

    def runner(self, step: Step, *, group: str, run_id: str = "test", config: RunnerConfig | None = None,
               **options: Any) -> Runner:
        """A runner of ``step`` on this broker (its state topics sized like Kafka's)."""
        for spec in state_topics(group, step):
            self.partitions[spec.name] = spec.partitions
        io = MemoryIO(self, group, transactional=step.kind == "stateful" and step.exactly_once, start=step.start)
        return Runner(step, config=config or RunnerConfig(commit_interval_s=0.05, poll_timeout_s=0.01), group=group,
                      run_id=run_id, io=io, **options)


class MemoryIO:
    """One runner's view of a ``MemoryBroker`` (``streams.runtime.IO``)."""

    def __init__(self, broker: MemoryBroker, group: str, *, transactional: bool, start: str = "earliest") -> None:
        self.broker = broker
        self.group = group
        self.transactional = transactional
        self.start = start
        self.max_record_bytes = broker.max_record_bytes
        self.topics: list[str] = []
        self.positions: dict[tuple[str, int], int] = {}
        self._on_assign: Callable[[list[tuple[str, int]]], None] | None = None
        self._on_revoke: Callable[[list[tuple[str, int]]], None] | None = None
        self._pending: list[tuple[str, bytes | None, bytes | None, int | None, dict[str, bytes] | None]] = []

    def subscribe(self, topics: list[str], on_assign: Callable[[list[tuple[str, int]]], None],
                  on_revoke: Callable[[list[tuple[str, int]]], None]) -> None:
        self.topics = topics
        self._on_assign = on_assign
        self._on_revoke = on_revoke

    def _assign(self) -> None:
        assignment = [(t, p) for t in self.topics for p in range(len(self.broker.log(t)))]
        for t, p in assignment:
            end = len(self.broker.log(t)[p])
            self.positions[(t, p)] = self.broker.committed.get((self.group, t, p), 0 if self.start == "earliest" else end)
        assert self._on_assign is not None
        self._on_assign(assignment)

    def poll(self, max_records: int, timeout_s: float) -> list[Any]:
        if not self.positions:
            self._assign()
        out: list[Any] = []
        with self.broker.lock:
            for (t, p), position in self.positions.items():
                taken = self.broker.log(t)[p][position:position + max_records - len(out)]
                out += taken
                self.positions[(t, p)] = position + len(taken)
        if not out:
            time.sleep(min(timeout_s, 0.01))
        return out

    def send(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
             headers: dict[str, bytes] | None = None) -> None:
        if self.transactional:
            self._pending.append((topic, key, value, partition, headers))
        else:
            self.broker.append(topic, key, value, partition=partition, headers=headers)

    def send_many(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        for topic, key, value in records:
            self.send(topic, key, value)

    def checkpoint(self, offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None:
        for topic, key, value, partition, headers in self._pending:
            self.broker.append(topic, key, value, partition=partition, headers=headers)
        self._pending.clear()
        for (t, p), offset in offsets.items():
            self.broker.committed[(self.group, t, p)] = offset

    def changelog(self, topic: str, partition: int) -> Iterator[Any]:
        yield from list(self.broker.log(topic)[partition])

    def hold(self, wait_s: Callable[[], float], stopping: threading.Event) -> None:
        while (wait := wait_s()) > 0 and not stopping.is_set():
            time.sleep(min(wait, 0.05))

    def lag(self) -> dict[tuple[str, int], int]:
        return {(t, p): len(self.broker.log(t)[p]) - position for (t, p), position in self.positions.items()}

    def close(self, *, failed: bool) -> None:
        """Leave the group as confluent-kafka does (the partitions are revoked first); an open transaction is
        aborted."""
        if self._on_revoke is not None and self.positions:
            self._on_revoke(list(self.positions))
        self._pending.clear()


__all__ = ["MemoryBroker", "MemoryIO", "MemoryMessage"]
