"""The one processor runtime: consume → decode → call a typed function → route → produce → checkpoint.

A ``Step`` is one of four kinds:

- ``map``: one record in, none, one or a list out (generate, passthrough, plant);
- ``batch_map``: a batch's records in, one result per record out, in order (the labeler);
- ``stateful``: one record and its partition's ``Store`` in, records out (quality, thermal). The store is a
  key → value map per input partition, written to a compacted changelog topic at every checkpoint and
  restored from it when the partition is assigned. A step with ``key_by`` first re-keys its input onto a
  repartition topic, so one worker owns each state key. Stateful checkpoints are Kafka transactions: the
  outputs, the changelog and the input offsets commit together (exactly once: a restart neither loses
  nor double-counts a record). A control loop (thermal) opts out (``exactly_once=False``): its outputs go
  out at once and a restart may repeat the last interval's;
- ``sink``: a ``Sink`` takes each batch's records and writes them out at the checkpoint, before the input
  offsets are committed (lineage to Delta, the trainer).

Column-wise batches: a sink with ``write_many`` (the lineage sink) and a map step whose function forwards records
unchanged (``fn.forwards``: the pass-through) take a consumed batch at once, decoded into Arrow columns and
checked column-wise (``schemas.columnar``); what that path does not take goes the one-record way, in its place.

Any step may have a ``punctuate`` function the runtime calls every ``punctuate_s`` (timers: windows that
are due, sensors gone silent, the plant's readings). Functions return typed records and never name a topic:
the catalog routes each record by its type (``streams.catalog.topic_of``).

Errors: a record that cannot be decoded, or that makes the function raise, is handed to the step's
``on_error`` policy: ``"dead_letter"`` sends it to ``sdg.dlq`` with its bytes and the reason and the stream
goes on; ``"raise"`` stops the process without committing anything after the last checkpoint. The default
policy (``data_error``) dead-letters bad data and raises on everything else (a broken model, broker or
disk). Between checkpoints nothing waits on the brokers.

The runtime runs on Kafka (``KafkaIO``) or in memory (``streams.memory.MemoryIO``, for tests without a
broker); both give it the same few operations.
"""

from __future__ import annotations

import gc
import itertools
import logging
import operator
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Generic,
    Iterator,
    Literal,
    Protocol,
    Sequence,
    TypeVar,
)

from schemas.codec import Encoded, RecordCodec
from schemas.errors import UndecodableRecord
from schemas.records import RECORD_TYPES, Record
from streams.catalog import TopicSpec, topic_of, topic_of_type
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig, RunnerConfig
from streams.dead_letter import DLQ_TOPIC, dead_letter
from streams.errors import BrokerError, ConfigError, RecordTooLarge, StepReturnError
from streams.producer import RecordProducer, check_size, key_bytes
from streams.throttle import RateCap

log = logging.getLogger(__name__)

Kind = Literal["map", "batch_map", "stateful", "sink"]
Policy = Literal["dead_letter", "raise"]
V = TypeVar("V")

DATA_ERRORS: tuple[type[BaseException], ...] = (UndecodableRecord, RecordTooLarge, ValueError, ArithmeticError)
"""What bad data raises (pydantic's ValidationError and UnicodeDecodeError are ValueErrors)."""


def data_error(error: BaseException, record: Record | None, step: Step) -> Policy:
    """The default error policy: bad data goes to the dead-letter topic; a broken model, broker or disk raises."""
    return "dead_letter" if isinstance(error, DATA_ERRORS) else "raise"


GC_THRESHOLD = 100_000
"""Allocations between young-generation collections in a processor (Python's default: 700). A batch makes tens of
thousands of short-lived objects that hold no cycles; at the default the collector ran every few records and cost
a sixth of the label step's time."""


def tune_gc() -> None:
    """Set a processor's garbage collection: what exists at start (modules, models) is frozen out of every
    collection, and young objects are collected every ``GC_THRESHOLD`` allocations. Idempotent."""
    if gc.get_threshold()[0] != GC_THRESHOLD:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 50)


class Message(Protocol):
    """A consumed record as confluent-kafka hands it over (the in-memory harness has the same methods)."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def error(self) -> Any: ...


class Store(Generic[V]):
    """One input partition's state: key → value, written to the changelog at each checkpoint.

    Values are objects (``load``/``dump`` turn them into changelog bytes); a value changed in place is
    marked with ``store[key] = value`` again. ``cache`` is the processor's scratch space for objects derived
    from the state: it lives exactly as long as the store (a rebalance gives a new store).
    """

    def __init__(self, partition: int, load: Callable[[bytes], V], dump: Callable[[V], bytes]) -> None:
        self.partition = partition
        self._load, self._dump = load, dump
        self._values: dict[str, V] = {}
        self._dirty: set[str] = set()
        self.cache: dict[str, Any] = {}

    def get(self, key: str, default: V | None = None) -> V | None:
        return self._values.get(key, default)

    def __getitem__(self, key: str) -> V:
        return self._values[key]

    def __setitem__(self, key: str, value: V) -> None:
        self._values[key] = value
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        del self._values[key]
        self._dirty.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._values)

    def restore(self, key: str, value: bytes | None) -> None:
        """Take one changelog record (``None``: a tombstone)."""
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = self._load(value)

    def changes(self) -> list[tuple[str, bytes | None]]:
        """What changed since the last checkpoint, as changelog records (and forget it)."""
        out = [(k, self._dump(self._values[k]) if k in self._values else None) for k in sorted(self._dirty)]
        self._dirty.clear()
        return out


def _raw(value: bytes) -> bytes:
    return value


class Sink(Protocol):
    """A sink step's writer: ``write`` buffers a record (raising on bad data), ``due`` asks for a checkpoint,
    ``flush`` writes the buffer out (or starts to: ``wait`` False lets the write run while the next batch comes
    in) and returns the records it could not write (with why: they go to the error policy), ``unwritten`` says
    per source partition the first offset not yet written (the runtime commits no further), ``assigned`` hears
    of a rebalance."""

    def write(self, message: Message, record: Record) -> None: ...
    def due(self) -> bool: ...
    def flush(self, *, wait: bool) -> list[tuple[Message, Exception]]: ...
    def unwritten(self) -> dict[tuple[str, int], int]: ...
    def assigned(self) -> None: ...


@dataclass(frozen=True)
class Step:
    """A processor function wired to its source topics.

    Args:
        step_id: Unique name; it appears in logs, metrics, lineage, dead letters and state topic names.
        sources: Topics to consume.
        kind: ``map``, ``batch_map``, ``stateful`` or ``sink`` (module docstring).
        fn: ``map``: record → record | list | None; ``batch_map``: records → one record, list, None or exception
            per record; ``stateful``: (record, store) → list of records; ``sink``: a ``Sink``.
        sink: A topic every output goes to, instead of the catalog's topic for its type (relays, replays).
        key_by: ``stateful``: the state key of a record, when it is not the source topic's key; it may raise to refuse a
            record (the error policy sees it with the source record), and runs again on the repartition topic's copy.
        load, dump: ``stateful``: a state value from and to its changelog bytes (default: bytes as they are).
        punctuate: Called every ``punctuate_s`` (with each partition's store for a stateful step, else None).
        start: Where a new consumer group starts: ``earliest`` or ``latest`` (old readings steer nothing).
        commit: False: never commit offsets (a step that rebuilds what it needs from the whole topic at start).
        batch: ``stateful``: ``fn`` takes each partition's records of a consumed batch at once, (records, store) → one
            result per record (a list of records, or the exception that record raised), in order.
        exactly_once: ``stateful``: checkpoints are Kafka transactions (the default). False: outputs go out at once
            and the changelog and offsets are written at the checkpoint, so a restart may send the last interval's
            outputs again (at least once): a control loop whose outputs are states (a cap, an alert), where a
            transaction's ~25 ms of commit markers are the latency that matters.
        on_error: The error policy: (error, record or None, step) → ``"dead_letter"`` or ``"raise"``.
    """

    step_id: str
    sources: tuple[str, ...]
    fn: Any
    kind: Kind = "map"
    sink: str | None = None
    key_by: Callable[[Any], str] | None = None
    load: Callable[[bytes], Any] = _raw
    dump: Callable[[Any], bytes] = _raw
    punctuate: Callable[[Store[Any] | None, int], list[Record]] | None = None
    punctuate_s: float = 1.0
    start: Literal["earliest", "latest"] = "earliest"
    commit: bool = True
    batch: bool = False
    exactly_once: bool = True
    on_error: Callable[[BaseException, Record | None, Step], Policy] = data_error

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            raise ConfigError(f"step {self.step_id}: sources is a tuple of topics, not {self.sources!r}")
        for name in self.sources:
            topic_spec(name)
        if self.sink is not None:
            topic_spec(self.sink)
        if self.kind not in ("map", "batch_map", "stateful", "sink"):
            raise ConfigError(f"step {self.step_id}: kind must be map, batch_map, stateful or sink, not {self.kind!r}")
        if (self.key_by is not None or self.batch) and self.kind != "stateful":
            raise ConfigError(f"step {self.step_id}: key_by and batch are for stateful steps")

    def outputs(self, result: Any) -> list[Record | Encoded]:
        """The records of a function's result: None, a record or a list of records (and of ``Encoded`` ones).

        Raises:
            StepReturnError: anything else (the step is broken, not the record).
        """
        if result is None:
            return []
        if isinstance(result, Record):
            return [result]
        if isinstance(result, list) and all(isinstance(r, (Record, Encoded)) for r in result):
            return result
        raise StepReturnError(f"step {self.step_id} must return records, got {type(result).__name__}")

    def route(self, record: Record) -> str:
        """The topic of an output record: the step's ``sink``, else the catalog's topic for its type."""
        if self.sink is None:
            return topic_of(record)
        if not topic_spec(self.sink).accepts(record):
            raise StepReturnError(f"step {self.step_id} sent a {record.schema_name} to {self.sink}")
        return self.sink


def changelog_topic(group: str, step_id: str) -> str:
    return f"{group}-{step_id}-changelog"


def repartition_topic(group: str, step_id: str) -> str:
    return f"{group}-{step_id}-by-key"


def state_topics(group: str, step: Step) -> list[TopicSpec]:
    """A stateful step's own topics: the repartition topic (``key_by``) and the changelog, partitioned alike."""
    if step.kind != "stateful":
        return []
    partitions = topic_spec(step.sources[0]).partitions
    specs = [TopicSpec(changelog_topic(group, step.step_id), "state key", None, partitions,
                       f"the state of step {step.step_id} (group {group})", {"cleanup.policy": "compact"})]
    if step.key_by is not None:
        kinds = {topic_spec(source).value for source in step.sources}
        specs.append(TopicSpec(repartition_topic(group, step.step_id), "state key", kinds.pop() if len(kinds) == 1 else None,
                               partitions, f"the input of step {step.step_id}, keyed by state",
                               {"cleanup.policy": "delete", "retention.ms": str(24 * 3600 * 1000)}))
    return specs


@dataclass
class RunStats:
    """What a runtime did so far."""

    consumed: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    checkpoints: int = 0
    restored: int = 0  # changelog records read back into stores
    first_batch_s: float | None = None
    last_batch_s: float | None = None
    stopped_s: float | None = None  # when the final checkpoint was done

    @property
    def records_per_s(self) -> float:
        """Throughput from the first batch received to the end of the last one processed."""
        if self.first_batch_s is None or self.last_batch_s is None or self.last_batch_s <= self.first_batch_s:
            return 0.0
        return self.consumed / (self.last_batch_s - self.first_batch_s)


class IO(Protocol):
    """What the runtime needs of a broker (``KafkaIO``, or ``streams.memory.MemoryIO`` in tests)."""

    max_record_bytes: int

    def subscribe(self, topics: list[str], on_assign: Callable[[list[tuple[str, int]]], None],
                  on_revoke: Callable[[list[tuple[str, int]]], None]) -> None: ...
    def poll(self, max_records: int, timeout_s: float) -> list[Message]: ...
    def send(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
             headers: dict[str, bytes] | None = None) -> None: ...
    def send_many(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None: ...
    def checkpoint(self, offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None: ...
    def changelog(self, topic: str, partition: int) -> Iterator[Message]: ...
    def hold(self, wait_s: Callable[[], float], stopping: threading.Event) -> None: ...
    def lag(self) -> dict[tuple[str, int], int]: ...
    def close(self, *, failed: bool) -> None: ...


class Runner:
    """Runs one ``Step`` as a member of a consumer group until stopped, on Kafka or in memory."""

    def __init__(
        self,
        step: Step,
        *,
        kafka: KafkaConfig | None = None,
        config: RunnerConfig,
        group: str,
        run_id: str,
        codec: RecordCodec | None = None,
        rate_cap: RateCap | None = None,
        cost: Callable[[Record], int] = lambda record: 1,
        io: IO | None = None,
    ) -> None:
        """Args (beyond the obvious): ``rate_cap`` throttles a map step to units/s or pauses it; ``cost`` says how
        many units a record is (for the generate step: the job's sample count); ``io`` replaces Kafka (tests)."""
        if rate_cap is not None and step.kind != "map":
            raise ConfigError(f"step {step.step_id}: a rate cap applies to map steps only")
        if hasattr(step.fn, "forwards"):  # read column-wise natively: a missing extension fails now, not at a batch
            from schemas.native import native

            native()
        self.step = step
        self.config = config
        self.group = group
        self.run_id = run_id
        self.codec = codec or RecordCodec()
        self.stats = RunStats()
        self.stopping = threading.Event()
        self.draining = threading.Event()
        self.rate_cap = rate_cap
        self.cost = cost
        self.stores: dict[int, Store[Any]] = {}
        self.on_batch: Callable[[list[Message], float], None] | None = None  # each batch and its seconds (metrics)
        self.lag: dict[tuple[str, int], int] = {}  # with metrics: records behind each partition's end, each second
        self._failed = False  # after a failure, the revocation that closing the consumer triggers commits nothing
        self._done: dict[tuple[str, int], int] = {}  # next offset to commit per partition: processed records only
        self._committed: dict[tuple[str, int], int] = {}
        self._wire: dict[int, tuple[Record, bytes]] = {}  # the batch's decoded records → their bytes (relays reuse them)
        self._checks: dict[str, Callable[[Record], Record]] = {}  # source topic → its type check
        stateful = step.kind == "stateful"
        transactional = stateful and step.exactly_once
        self._changelog = changelog_topic(group, step.step_id) if stateful else None
        self._repartition = repartition_topic(group, step.step_id) if step.key_by is not None else None
        if io is None:
            if kafka is None:
                raise ConfigError(f"step {step.step_id}: a runner needs Kafka settings or an io")
            io = KafkaIO(kafka, config, group=group, client=f"{step.step_id}",
                         transactional_id=f"{group}-{step.step_id}-{config.instance}" if transactional else None,
                         start=step.start)
        self.io = io

    def stop(self) -> None:
        """Ask the loop to finish the current batch, checkpoint and return."""
        self.stopping.set()

    def drain(self) -> None:
        """Take everything there is, then checkpoint and return once a second has passed without new records."""
        self.draining.set()

    def run(self, *, max_idle_s: float | None = None, handle_signals: bool = False) -> RunStats:
        """Consume until ``stop()`` (or SIGTERM/SIGINT with ``handle_signals``), or ``max_idle_s`` without records.

        Raises:
            Whatever the error policy says to raise; nothing after the last checkpoint is committed then.
        """
        tune_gc()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        assigned: list[float] = []  # idle time counts from the first assignment, not from a slow group join

        def on_assign(partitions: list[tuple[str, int]]) -> None:
            assigned.append(time.monotonic())
            if self.step.kind == "sink":
                self.step.fn.assigned()
            self._restore([p for t, p in partitions if t == self._state_source()])

        topics = [*self.step.sources, *([self._repartition] if self._repartition else [])]
        self.io.subscribe(topics, on_assign, self._on_revoke)
        log.info("step %s: consuming %s", self.step.step_id, ", ".join(topics))
        idle_since = last_checkpoint = last_punctuate = last_lag = time.monotonic()
        failed = True
        try:
            while not self.stopping.is_set():
                # wait for one record, then take what is already fetched: batches under load, no wait when idle
                messages = self.io.poll(self.config.batch_size, self.config.poll_timeout_s)
                now = time.monotonic()
                if messages:
                    idle_since = now
                    if self.stats.first_batch_s is None:
                        self.stats.first_batch_s = now
                    self._process(messages)
                    self.stats.batches += 1
                    self.stats.last_batch_s = time.monotonic()
                    if self.on_batch is not None:
                        self.on_batch(messages, self.stats.last_batch_s - now)
                if self.on_batch is not None and now - last_lag >= 1.0:  # the consumer is this thread's alone
                    try:
                        self.lag = self.io.lag()
                    except Exception as e:  # metrics never stop a processor
                        log.debug("step %s: lag: %s", self.step.step_id, e)
                    last_lag = now
                if self.step.punctuate is not None and now - last_punctuate >= self.step.punctuate_s:
                    self._punctuate()
                    last_punctuate = now
                if self.step.fn.due() if self.step.kind == "sink" else now - last_checkpoint >= self.config.commit_interval_s:
                    self._checkpoint()
                    last_checkpoint = now
                idle = now - max(idle_since, assigned[0]) if assigned else 0.0
                if not messages and ((max_idle_s is not None and idle > max_idle_s) or
                                     (self.draining.is_set() and idle > 1.0)):
                    break
            self._checkpoint(final=True)
            self.stats.stopped_s = time.monotonic()
            failed = False
        finally:
            self._failed = failed
            try:
                self.io.close(failed=failed)
            except Exception:
                if not failed:
                    raise
                log.exception("step %s: closing after a failure", self.step.step_id)  # the failure is what matters
        log.info("step %s: stopped after %d records", self.step.step_id, self.stats.consumed)
        return self.stats

    # --- state ---------------------------------------------------------------------------------------------

    def _state_source(self) -> str | None:
        """The topic whose partitions the stores follow: the repartition topic, else the (first) source."""
        if self.step.kind != "stateful":
            return None
        return self._repartition or self.step.sources[0]

    def _restore(self, partitions: list[int]) -> None:
        assert self._changelog is not None or not partitions
        for p in partitions:
            store: Store[Any] = Store(p, self.step.load, self.step.dump)
            for message in self.io.changelog(self._changelog, p):  # type: ignore[arg-type]
                try:  # a changelog is a topic like any other: what cannot be state goes to the error policy
                    store.restore((message.key() or b"").decode(), message.value())
                except Exception as e:
                    self._fail(message, e)
                    continue
                self.stats.restored += 1
            self.stores[p] = store
        if partitions:
            log.info("step %s: restored %d partitions (%d keys)", self.step.step_id, len(partitions),
                     sum(len(self.stores[p]) for p in partitions))

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        if not self._failed:
            self._checkpoint(final=True)  # whoever gets the partitions next finds every write landed
        for tp in partitions:
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
            if tp[0] == self._state_source():
                self.stores.pop(tp[1], None)

    def _checkpoint(self, *, final: bool = False) -> None:
        """Write the sink (``final``: and wait for it), the state changes, then commit the inputs processed and
        written so far with the outputs."""
        done = self._done
        if self.step.kind == "sink":
            for message, error in self.step.fn.flush(wait=final):
                self._fail(message, error)
            unwritten = self.step.fn.unwritten()
            done = {tp: min(offset, unwritten.get(tp, offset)) for tp, offset in done.items()}
        for p, store in self.stores.items():
            for key, value in store.changes():
                self.io.send(self._changelog, key.encode(), value, partition=p)  # type: ignore[arg-type]
        pending = {tp: offset for tp, offset in done.items()
                   if self._committed.get(tp) != offset and self.step.commit}
        # a sink's offsets are a shortcut (its tables hold the truth): committed without waiting, but for the last
        self.io.checkpoint(pending, wait=final or self.step.kind != "sink")
        self._committed.update(pending)
        self.stats.checkpoints += 1

    # --- records -------------------------------------------------------------------------------------------

    def _fail(self, message: Message | None, error: BaseException, record: Record | None = None) -> None:
        """Apply the error policy: dead-letter ``message`` or raise."""
        if message is None or self.step.on_error(error, record, self.step) == "raise":
            raise error
        headers = {k: v or b"" for k, v in message.headers() or []}
        letter = dead_letter(run_id=self.run_id, step_id=self.step.step_id, error=error,
                             topic=message.topic(), partition=message.partition(), offset=message.offset(),
                             key=message.key(), value=message.value(), headers=headers,
                             max_record_bytes=self.io.max_record_bytes)
        self.io.send(DLQ_TOPIC, key_bytes(letter), self.codec.encode(letter))
        self.stats.dead_letters[type(error).__name__] += 1

    def _decode(self, message: Message) -> Record | None:
        """The message's record; None after handing an undecodable or wrong-type one to the error policy (as
        one whose key is not its state key, on the repartition topic: anyone who can write there is a producer)."""
        topic, value = message.topic(), message.value()
        try:
            check = self._checks.get(topic)
            if check is None:
                check = self._checks[topic] = self._check_of(topic)
            record = check(self.codec.decode(value))
            if topic == self._repartition:
                assert self.step.key_by is not None
                key = self.step.key_by(record)
                if message.key() != key.encode():
                    raise UndecodableRecord(f"key {message.key()!r} is not the record's state key {key!r}")
        except Exception as e:  # undecodable, of another type, or refused by key_by: the policy decides
            self._fail(message, e)
            return None
        self._wire[id(record)] = (record, value)  # type: ignore[assignment]
        return record

    def _check_of(self, topic: str) -> Callable[[Record], Record]:
        """The type check of a source topic; the repartition topic carries what any source carries."""
        sources = self.step.sources if topic == self._repartition else (topic,)
        if len(sources) == 1:
            return topic_spec(sources[0]).check
        specs = [topic_spec(source) for source in sources]

        def check(record: Record) -> Record:
            if not any(spec.accepts(record) for spec in specs):
                raise UndecodableRecord(f"{topic} carries what {', '.join(self.step.sources)} carry, "
                                        f"not {record.schema_name}")
            return record

        return check

    def _produce(self, message: Message | None, result: Any) -> None:
        """Route, encode and size-check every output first: all or nothing."""
        try:
            encoded = []
            for record in self.step.outputs(result):
                if isinstance(record, Encoded):
                    topic = self._topic_of_type(record.type.__name__)
                    if topic is None:
                        raise StepReturnError(f"step {self.step.step_id}: no one topic for its encoded "
                                              f"{record.type.__name__} records (sink {self.step.sink})")
                    for key, value in zip(record.keys, record.values):
                        check_size(topic, key, value, None, max_record_bytes=self.io.max_record_bytes)
                        encoded.append((topic, key, value))
                    continue
                seen = self._wire.get(id(record))
                wire = seen[1] if seen is not None and seen[0] is record else None
                topic, key, value = self.step.route(record), key_bytes(record), self.codec.encode(record, wire=wire)
                check_size(topic, key, value, None, max_record_bytes=self.io.max_record_bytes)
                encoded.append((topic, key, value))
        except StepReturnError:
            raise
        except Exception as e:  # the outputs cannot be routed or encoded: the input goes to the error policy
            self._fail(message, e)
            return
        for topic, key, value in encoded:
            self.io.send(topic, key, value)
            self.stats.produced[topic] += 1

    def _mark(self, message: Message) -> None:
        self._done[(message.topic(), message.partition())] = message.offset() + 1
        self.stats.consumed += 1

    def _mark_all(self, messages: list[Message]) -> None:
        """``_mark`` each of ``messages``, in order."""
        self._done.update({(m.topic(), m.partition()): m.offset() + 1 for m in messages})
        self.stats.consumed += len(messages)

    def _process(self, messages: list[Message]) -> None:
        try:
            if self.step.kind == "batch_map":
                self._batch(messages)
            elif self.step.kind == "sink" and hasattr(self.step.fn, "write_many"):
                self._sink(messages)
            elif (self.step.kind == "map" and hasattr(self.step.fn, "forwards") and self.rate_cap is None
                  and self._repartition is None):
                self._forward(messages)
            else:
                self._each(messages)
        finally:
            self._wire.clear()

    def _carries(self, topic: str, name: str) -> bool:
        """Whether ``topic`` carries records of type ``name`` (``_decode``'s check, by type)."""
        value = topic_spec(topic).value
        return value is None or issubclass(RECORD_TYPES[name], value)

    def _forward(self, messages: list[Message]) -> None:
        """A map step that forwards records unchanged or drops them (``fn.forwards``: record type → which rows of a
        ``schemas.columnar`` table, its key column read, it forwards), on a consumed batch at once (one worth it:
        ``columnar.worth_it``): what checks column-wise is forwarded as the bytes it came in, in its place in the
        batch; the rest takes the one-record path."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from schemas.columnar import KEYS, decode_columns, worth_it

        values = [m.value() for m in messages]
        if not worth_it(values):
            self._each(messages)
            return
        fast: list[tuple[str, bytes | None] | None] = [None] * len(messages)  # its topic and key (None: dropped)
        forwards = self.step.fn.forwards
        sources = {m.topic() for m in messages}
        for group in decode_columns(values, {name: [KEYS[name]] for name in forwards}):
            topic = self._topic_of_type(group.name)
            carried = {source for source in sources if self._carries(source, group.name)}
            if topic is None or not carried:
                continue
            kept = forwards[group.name](group.table)
            keys = pc.cast(group.table.column(KEYS[group.name]), pa.binary()).to_pylist()
            if len(keys) == len(messages) and len(carried) == len(sources) and kept.all():  # the usual batch
                self._forward_run(messages, values, list(zip(itertools.repeat(topic), keys)))  # type: ignore[arg-type]
                return
            for i, key, keep in zip(group.index.tolist(), keys, kept.tolist()):
                if len(carried) == len(sources) or messages[i].topic() in carried:
                    fast[i] = (topic, key if keep else None)
        start = 0
        while start < len(messages) and not self.stopping.is_set():
            if fast[start] is None:
                self._each([messages[start]])
                start += 1
                continue
            end = start + 1
            while end < len(messages) and fast[end] is not None:
                end += 1
            self._forward_run(messages[start:end], values[start:end], fast[start:end])  # type: ignore[arg-type]
            start = end

    def _forward_run(self, messages: list[Message], values: list[bytes], routes: list[tuple[str, bytes | None]]) -> None:
        """Send consecutive checked records on as they came (those not dropped), and mark them done."""
        limit = self.io.max_record_bytes
        keys = [key for _, key in routes]
        if None not in keys and max(map(len, values)) + max(map(len, keys)) <= limit:  # type: ignore[arg-type]
            sends = [(topic, key, value) for (topic, key), value in zip(routes, values)]  # the usual run: all of it
        else:
            sends = []
            for message, value, (topic, key) in zip(messages, values, routes):
                if key is None:
                    continue
                if len(key) + len(value) > limit:  # check_size's test without a call a record; it says why
                    try:
                        check_size(topic, key, value, None, max_record_bytes=limit)
                    except RecordTooLarge as e:
                        self._fail(message, e)
                    continue
                sends.append((topic, key, value))
        self.io.send_many(sends)
        self.stats.produced.update(map(operator.itemgetter(0), sends))
        self._mark_all(messages)

    def _topic_of_type(self, name: str) -> str | None:
        """Where the step's unchanged records of type ``name`` go: its sink, else the catalog's topic of the type
        (None: decided per record, like a sample decision's topic)."""
        if self.step.sink is not None:
            return self.step.sink if self._carries(self.step.sink, name) else None
        return topic_of_type(RECORD_TYPES[name])

    def _sink(self, messages: list[Message]) -> None:
        """A sink's batch at once (``write_many``): what it takes column-wise it checks as ``_decode`` would, its
        record types against the topics'; the rest comes back here one message at a time."""
        def one(message: Message) -> None:
            record = self._decode(message)
            if record is not None:
                self._call(message, record)

        done = 0
        for taken in self.step.fn.write_many(messages, one, self._carries):  # each time the buffer is full
            self._mark_all(messages[done:taken])
            done = taken
            if self.step.fn.due():
                self._checkpoint()

    def _each(self, messages: list[Message]) -> None:
        held: dict[int, list[tuple[Message, Record]]] = {}  # a batched stateful step's records, per partition
        for message in messages:
            if self.stopping.is_set():
                break  # the rest of the batch is not marked done: it is consumed again later
            record = self._decode(message)
            if record is not None and self.rate_cap is not None:
                self.io.hold(self.rate_cap.wait_s, self.stopping)
                if self.stopping.is_set():
                    break
                self.rate_cap.book(self.cost(record))
            self._mark(message)
            if record is None:
                continue
            if self._repartition is not None and message.topic() != self._repartition:
                self._rekey(message, record)
            elif self.step.batch:
                held.setdefault(message.partition(), []).append((message, record))
            else:
                self._call(message, record)
                if self.step.kind == "sink" and self.step.fn.due():  # a full buffer is written at once
                    self._checkpoint()
        for pairs in held.values():  # marked done: processed even when stopping
            self._call_many(pairs)

    def _store(self, message: Message) -> Store[Any]:
        store = self.stores.get(message.partition())
        if store is None:
            raise BrokerError(f"step {self.step.step_id}: a record of {message.topic()}[{message.partition()}], "
                              "a partition without a restored store")
        return store

    def _call(self, message: Message, record: Record) -> None:
        store = self._store(message) if self.step.kind == "stateful" else None
        try:
            if self.step.kind == "sink":
                self.step.fn.write(message, record)
                return
            result = self.step.fn(record) if store is None else self.step.fn(record, store)
        except (BrokerError, StepReturnError, ConfigError):
            raise
        except Exception as e:
            self._fail(message, e, record)
            return
        self._produce(message, result)

    def _rekey(self, message: Message, record: Record) -> None:
        """Send a source record on, as it is, to the repartition topic under its state key."""
        assert self.step.key_by is not None and self._repartition is not None
        try:
            key = self.step.key_by(record).encode()
            check_size(str(self._repartition), key, message.value(), None, max_record_bytes=self.io.max_record_bytes)
        except Exception as e:
            self._fail(message, e, record)
            return
        self.io.send(self._repartition, key, message.value())

    def _batch(self, messages: list[Message]) -> None:
        """Decode every message, call the batched function once, produce each record's outputs."""
        decoded = [(m, r) for m in messages if (r := self._decode(m)) is not None]
        for message in messages:
            self._mark(message)
        if decoded:
            self._call_batched(decoded, lambda records: self.step.fn(records))

    def _call_many(self, pairs: list[tuple[Message, Record]]) -> None:
        store = self._store(pairs[0][0])
        self._call_batched(pairs, lambda records: self.step.fn(records, store))

    def _call_batched(self, pairs: list[tuple[Message, Record]], call: Callable[[list[Record]], Any]) -> None:
        """Call a batched function on the records of ``pairs``; produce each one's outputs or apply the policy."""
        try:
            results = call([r for _, r in pairs])
        except (BrokerError, StepReturnError, ConfigError):
            raise
        except Exception as e:  # the batch failed as a whole: bad data is told apart per record only
            if self.step.on_error(e, None, self.step) == "raise":
                raise
            results = [e] * len(pairs)
        if not isinstance(results, list) or len(results) != len(pairs):
            raise StepReturnError(f"step {self.step.step_id} must return one result per record of its batch")
        for (message, record), result in zip(pairs, results):
            if isinstance(result, BaseException):
                self._fail(message, result, record)
            else:
                self._produce(message, result)

    def _punctuate(self) -> None:
        stores: Sequence[Store[Any] | None] = list(self.stores.values()) if self.step.kind == "stateful" else [None]
        assert self.step.punctuate is not None
        for store in stores:
            self._produce(None, self.step.punctuate(store, int(time.time() * 1000)))


class KafkaIO:
    """The runtime's broker operations on confluent-kafka: a consumer, and a producer that is transactional
    for stateful steps (outputs, changelog and offsets commit together) and idempotent otherwise."""

    def __init__(self, kafka: KafkaConfig, config: RunnerConfig, *, group: str, client: str,
                 transactional_id: str | None, start: str = "earliest") -> None:
        import uuid

        from confluent_kafka import Consumer

        self.kafka = kafka
        self.group = group
        self.max_record_bytes = kafka.max_record_bytes
        self.transactional = transactional_id is not None
        self._consumer = Consumer(kafka.librdkafka(**{
            "group.id": group,
            "client.id": f"{kafka.client_id}-{client}-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": start,
            "isolation.level": "read_committed",
            "session.timeout.ms": config.session_timeout_ms,
            "heartbeat.interval.ms": config.heartbeat_interval_ms,
            "fetch.wait.max.ms": config.fetch_wait_max_ms,
        }))
        self.producer = RecordProducer(kafka, linger_ms=config.linger_ms, transactional_id=transactional_id)
        self._in_transaction = False
        if self.transactional:
            self.producer.client.init_transactions(30)  # fences (and aborts) a previous instance's open transaction
            self._begin()

    def _begin(self) -> None:
        self.producer.client.begin_transaction()
        self._in_transaction = True

    def subscribe(self, topics: list[str], on_assign: Callable[[list[tuple[str, int]]], None],
                  on_revoke: Callable[[list[tuple[str, int]]], None]) -> None:
        self._consumer.subscribe(
            topics,
            on_assign=lambda c, partitions: on_assign([(tp.topic, tp.partition) for tp in partitions]),
            on_revoke=lambda c, partitions: on_revoke([(tp.topic, tp.partition) for tp in partitions]),
        )

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        from confluent_kafka import KafkaError

        self.producer.client.poll(0)  # the last batch's delivery reports
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        batch: list[Any] = [first, *self._consumer.consume(max_records - 1, 0)]
        out = [message for message in batch if message.error() is None]
        for message in batch if len(out) < len(batch) else []:
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise BrokerError(f"consuming {message.topic()}: {error.str()}")
        return out

    def send(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
             headers: dict[str, bytes] | None = None) -> None:
        self.producer.produce(topic, key, value, headers=headers, partition=partition)  # the runtime checked sizes

    def send_many(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        """``send`` for many (topic, key, value), in order."""
        self.producer.produce_many(records)

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the position and the end of each assigned partition (the end as last fetched)."""
        out = {}
        for tp in self._consumer.position(self._consumer.assignment()):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def checkpoint(self, offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None:
        """Commit ``offsets`` with the outputs produced before them (``wait`` False: a plain consumer's offsets go
        out without waiting for the broker's answer)."""
        from confluent_kafka import KafkaException, TopicPartition

        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if self.transactional:
                if positions:
                    self.producer.client.send_offsets_to_transaction(
                        positions, self._consumer.consumer_group_metadata())
                self.producer.client.commit_transaction()
                self._in_transaction = False
                self._begin()
                return
            if positions:
                if len(self.producer.client):  # records not yet acknowledged go out before the inputs are committed
                    self.producer.flush()
                if wait:
                    self._consumer.commit(offsets=positions, asynchronous=False)
                else:
                    self._consumer.commit(offsets=positions, asynchronous=True)
        except KafkaException as e:
            raise BrokerError(f"checkpoint failed: {e.args[0].str()}") from e

    def changelog(self, topic: str, partition: int) -> Iterator[Any]:
        """Every committed record of one changelog partition, oldest first (confluent-kafka messages)."""
        import uuid

        from confluent_kafka import (
            OFFSET_BEGINNING,
            Consumer,
            KafkaError,
            TopicPartition,
        )

        reader = Consumer(self.kafka.librdkafka(**{
            "group.id": f"{self.group}-restore-{uuid.uuid4().hex}",  # under the step's group: its ACLs cover it
            "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True}))
        try:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                return
            reader.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            while True:
                message = reader.poll(1.0)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return
                    raise BrokerError(f"restoring {topic}[{partition}]: {error.str()}")
                yield message
        finally:
            reader.close()

    def hold(self, wait_s: Callable[[], float], stopping: threading.Event) -> None:
        """Pause consumption until ``wait_s()`` is 0 (a signal, not a sleep: the group session stays alive)."""
        from confluent_kafka import TopicPartition

        wait = wait_s()
        if wait <= 0:
            return
        assignment = self._consumer.assignment()
        self._consumer.pause(assignment)
        try:
            while wait > 0 and not stopping.is_set():
                extra = self._consumer.poll(min(wait, 0.1))
                if extra is not None and extra.error() is None:  # from a partition assigned meanwhile: later
                    self._consumer.seek(TopicPartition(str(extra.topic()), extra.partition() or 0,
                                                       extra.offset() or 0))
                wait = wait_s()
        finally:
            self._consumer.resume(assignment)

    def close(self, *, failed: bool) -> None:
        """Leave the group; after a failure, abort the open transaction (a plain producer's queued records are
        delivered either way: at least once)."""
        try:
            self._consumer.close()  # leaves the group at once, so the others rebalance without waiting
        finally:
            if self.transactional and self._in_transaction:
                self.producer.client.abort_transaction(10)
            elif not failed:
                self.producer.flush()
            else:  # what was not yet delivered stays undelivered: its inputs are consumed again on restart
                self.producer.client.purge()
                self.producer.client.flush(10)


__all__ = ["DATA_ERRORS", "GC_THRESHOLD", "IO", "KafkaIO", "Message", "Policy", "RunStats", "Runner", "Sink", "Step", "Store",
           "changelog_topic", "data_error", "repartition_topic", "state_topics", "tune_gc"]
