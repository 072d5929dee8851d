"""The processor runner: consume → decode → call a typed function → encode → produce → commit.

At-least-once by checkpoints: every ``commit_interval_s``, on a partition revocation and on
shutdown, the runner flushes its outputs (acknowledged by the brokers) and then commits the
input offsets they came from, so a crash replays at most what came after the last checkpoint.
Between checkpoints nothing waits on the brokers. A record that cannot
be decoded, or makes the function raise, goes to ``sdg.dlq`` with its original bytes, and the
stream goes on; a broken broker or a function that returns the wrong shape raises.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from schemas.codec import RecordCodec
from schemas.errors import UndecodableRecord
from schemas.records import Record
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig, RunnerConfig
from streams.errors import BrokerError, ConfigError, StepReturnError
from streams.producer import RecordProducer
from streams.throttle import RateCap

log = logging.getLogger(__name__)

Returns = Literal["one", "optional", "many"]


@dataclass(frozen=True)
class Step:
    """A processor function wired between a source topic and its sink topic(s).

    Args:
        step_id: Unique name; it appears in logs, metrics, lineage and dead letters.
        source: Topic to consume.
        fn: The typed processor function.
        sink: Topic to produce to, or a function choosing the topic per output record.
        returns: ``"one"`` (exactly one record), ``"optional"`` (``None`` drops) or ``"many"`` (a list).
        batched: ``fn`` takes the list of a batch's decoded records and returns one result per record, in
            order; a result that is an exception sends its record to the dead-letter topic (for models that
            run a batch at once, like the labeler).
    """

    step_id: str
    source: str
    fn: Callable[[Any], Any]
    sink: str | Callable[[Record], str]
    returns: Returns = "one"
    batched: bool = False

    def __post_init__(self) -> None:
        topic_spec(self.source)
        if isinstance(self.sink, str):
            topic_spec(self.sink)
        if self.returns not in ("one", "optional", "many"):
            raise ConfigError(f"step {self.step_id}: returns must be one, optional or many, not {self.returns!r}")

    def outputs(self, result: Any) -> list[Record]:
        """Check ``result`` against the declared return shape and list its records.

        Raises:
            StepReturnError: the function broke its declared shape.
        """
        if self.returns == "optional" and result is None:
            return []
        if self.returns == "many":
            if not isinstance(result, list) or not all(isinstance(r, Record) for r in result):
                raise StepReturnError(f"step {self.step_id} must return a list of records, got {type(result).__name__}")
            return result
        if not isinstance(result, Record):
            raise StepReturnError(
                f"step {self.step_id} must return one record{' or None' if self.returns == 'optional' else ''}, "
                f"got {type(result).__name__}"
            )
        return [result]

    def sink_of(self, record: Record) -> str:
        return self.sink if isinstance(self.sink, str) else self.sink(record)


@dataclass
class RunStats:
    """What a runner did so far."""

    consumed: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    first_batch_s: float | None = None
    last_batch_s: float | None = None

    @property
    def records_per_s(self) -> float:
        """Throughput from the first batch received to the end of the last one processed."""
        if self.first_batch_s is None or self.last_batch_s is None or self.last_batch_s <= self.first_batch_s:
            return 0.0
        return self.consumed / (self.last_batch_s - self.first_batch_s)


class Runner:
    """Runs one ``Step`` as a member of a consumer group until stopped."""

    def __init__(
        self,
        step: Step,
        *,
        kafka: KafkaConfig,
        config: RunnerConfig,
        group: str,
        run_id: str,
        codec: RecordCodec | None = None,
        rate_cap: RateCap | None = None,
        cost: Callable[[Record], int] = lambda record: 1,
    ) -> None:
        """Args (beyond the obvious): ``rate_cap`` throttles the step to units/s or pauses it;
        ``cost`` says how many units a record is (for the generate step: the job's sample count)."""
        self.step = step
        self.config = config
        self.run_id = run_id
        self.codec = codec or RecordCodec()
        self.stats = RunStats()
        self.stopping = threading.Event()
        if rate_cap is not None and step.batched:
            raise ConfigError(f"step {step.step_id}: a rate cap applies to record-at-a-time steps only")
        self.rate_cap = rate_cap
        self.cost = cost
        self._done: dict[tuple[str, int], int] = {}  # next offset to commit per partition: processed records only
        self._committed: dict[tuple[str, int], int] = {}
        self._source = topic_spec(step.source)
        self._consumer_conf = kafka.librdkafka(
            **{
                "group.id": group,
                "client.id": f"{kafka.client_id}-{step.step_id}-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": config.session_timeout_ms,
                "heartbeat.interval.ms": config.heartbeat_interval_ms,
                "fetch.wait.max.ms": config.fetch_wait_max_ms,
            }
        )
        self.producer = RecordProducer(kafka, codec=self.codec, linger_ms=config.linger_ms)

    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit and return."""
        self.stopping.set()

    def run(self, *, max_idle_s: float | None = None, handle_signals: bool = False) -> RunStats:
        """Consume until ``stop()`` (or SIGTERM/SIGINT with ``handle_signals``), or ``max_idle_s`` without records."""
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        consumer = Consumer(self._consumer_conf)
        assigned: list[float] = []  # idle time counts from the first assignment, not from a slow group join
        consumer.subscribe(
            [self.step.source],
            on_assign=lambda c, partitions: assigned.append(time.monotonic()),
            on_revoke=lambda c, partitions: self._checkpoint(c, revoked=partitions),
        )
        log.info("step %s: consuming %s", self.step.step_id, self.step.source)
        idle_since = last_checkpoint = time.monotonic()
        try:
            while not self.stopping.is_set():
                # wait for one record, then take what is already fetched: batches under load, no wait when idle
                first = consumer.poll(self.config.poll_timeout_s)
                now = time.monotonic()
                if first is not None:
                    idle_since = now
                    if self.stats.first_batch_s is None:
                        self.stats.first_batch_s = now
                    messages = [first, *consumer.consume(self.config.batch_size - 1, 0)]
                    if self.step.batched:
                        self._process_batch(messages)
                    else:
                        for message in messages:
                            if self.stopping.is_set() or not self._process(consumer, message):
                                break  # the rest of the batch is not marked done: it is consumed again later
                    self.stats.batches += 1
                    self.stats.last_batch_s = time.monotonic()
                if now - last_checkpoint >= self.config.commit_interval_s:
                    self._checkpoint(consumer)
                    last_checkpoint = now
                if first is None and max_idle_s is not None and assigned and now - max(idle_since, assigned[0]) > max_idle_s:
                    break
            self._checkpoint(consumer)
        finally:
            consumer.close()  # leaves the group at once, so the others rebalance without waiting
            self.producer.close()
        log.info("step %s: stopped after %d records", self.step.step_id, self.stats.consumed)
        return self.stats

    def _checkpoint(self, consumer: Consumer, revoked: list[TopicPartition] | None = None) -> None:
        """Flush every output, then commit the offsets of the inputs processed so far (at-least-once)."""
        pending = {tp: offset for tp, offset in self._done.items() if self._committed.get(tp) != offset}
        if pending:
            self.producer.flush()
            offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in pending.items()]
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:
                raise BrokerError(f"step {self.step.step_id}: offset commit failed: {e.args[0].str()}") from e
            self._committed.update(pending)
        for tp in revoked or []:
            self._done.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)

    def _decode(self, message: Message) -> Record | None:
        """The message's record; None after sending an undecodable or wrong-type one to the dead-letter topic."""
        try:
            return self._source.check(self.codec.decode(message.value()))
        except UndecodableRecord as e:
            self._dead_letter(message, "decode", e)
            return None

    def _check(self, message: Message) -> bool:
        """False for a partition-EOF event; raises on a consumer error."""
        error = message.error()
        if error is None:
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            return False
        raise BrokerError(f"step {self.step.step_id}: consuming {self.step.source}: {error.str()}")

    def _process_batch(self, messages: list[Message]) -> None:
        """Decode every message, call the batched function once, produce each record's outputs."""
        messages = [m for m in messages if self._check(m)]
        decoded = [(m, r) for m in messages if (r := self._decode(m)) is not None]
        results = self.step.fn([r for _, r in decoded]) if decoded else []
        if not isinstance(results, list) or len(results) != len(decoded):
            raise StepReturnError(f"step {self.step.step_id} must return one result per record of its batch")
        for (message, _), result in zip(decoded, results):
            if isinstance(result, Exception):
                self._dead_letter(message, self.step.step_id, result)
            else:
                self._produce(message, result)
        for message in messages:
            self._done[(message.topic(), message.partition())] = message.offset() + 1
        self.stats.consumed += len(messages)

    def _produce(self, message: Message, result: Any) -> None:
        try:
            outputs = [(self.step.sink_of(r), r) for r in self.step.outputs(result)]
            encoded = [(t, k.encode() if isinstance(k := r.key(), str) else k, self._encode_for(t, r)) for t, r in outputs]
            for topic, key, value in encoded:  # all or nothing: no output is sent when one cannot be
                self.producer.check_size(topic, key, value)
        except (BrokerError, StepReturnError, ConfigError):
            raise
        except Exception as e:  # the outputs cannot be routed or encoded: the input goes to the DLQ
            self._dead_letter(message, self.step.step_id, e)
            return
        for topic, key, value in encoded:
            self.producer.send_bytes(topic, key, value)
            self.stats.produced[topic] += 1

    def _process(self, consumer: Consumer, message: Message) -> bool:
        """Decode, wait for the rate cap, call, produce; False when stopped while waiting (not processed)."""
        if not self._check(message):
            return True
        record = self._decode(message)
        if record is not None and self.rate_cap is not None:
            if not self._wait_for_cap(consumer):
                return False
            self.rate_cap.book(self.cost(record))
        self.stats.consumed += 1
        self._done[(message.topic(), message.partition())] = message.offset() + 1
        if record is None:
            return True
        try:
            result = self.step.fn(record)
        except (BrokerError, StepReturnError, ConfigError):
            raise
        except Exception as e:  # the function failed on this record: the record goes to the DLQ
            self._dead_letter(message, self.step.step_id, e)
            return True
        self._produce(message, result)
        return True

    def _wait_for_cap(self, consumer: Consumer) -> bool:
        """Pause consumption until the rate cap lets the next batch start (a signal, not a sleep)."""
        assert self.rate_cap is not None
        wait = self.rate_cap.wait_s()
        if wait <= 0:
            return True
        assignment = consumer.assignment()
        consumer.pause(assignment)
        try:
            while wait > 0 and not self.stopping.is_set():
                extra = consumer.poll(min(wait, 0.1))  # keeps the group session alive
                if extra is not None and extra.error() is None:  # from a partition assigned meanwhile: later
                    consumer.seek(TopicPartition(extra.topic(), extra.partition(), extra.offset()))
                wait = self.rate_cap.wait_s()
        finally:
            consumer.resume(assignment)
        return not self.stopping.is_set()

    def _encode_for(self, topic: str, record: Record) -> bytes:
        spec = topic_spec(topic)
        if not spec.accepts(record):
            raise StepReturnError(f"step {self.step.step_id} sent a {record.schema_name} to {topic}")
        return self.codec.encode(record)

    def _dead_letter(self, message: Message, step_id: str, error: Exception) -> None:
        self.producer.dead_letter(message, error, step_id=step_id, run_id=self.run_id)
        self.stats.dead_letters[step_id] += 1


__all__ = ["RunStats", "Runner", "Step"]
