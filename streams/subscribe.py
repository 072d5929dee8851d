"""The public subscribe API: iterate over decoded records of one or more topics."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

from confluent_kafka import Consumer, KafkaError, Message

from schemas.codec import RecordCodec
from schemas.errors import UndecodableRecord
from schemas.records import Record
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig
from streams.errors import BrokerError

log = logging.getLogger(__name__)
ASSIGN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Received:
    """One record as it came off the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    record: Record
    message: Message | None = field(default=None, repr=False, compare=False)  # for a dead letter of it


def subscribe(
    topics: str | list[str],
    *,
    kafka: KafkaConfig,
    group: str | None = None,
    from_beginning: bool = False,
    limit: int | None = None,
    idle_timeout_s: float | None = None,
    codec: RecordCodec | None = None,
    stop: threading.Event | None = None,
    dead_letter: Callable[[Message, UndecodableRecord], None] | None = None,
) -> Iterator[Received]:
    """Yield the records of ``topics`` as they arrive.

    Args:
        topics: Catalog topic name(s).
        kafka: Connection settings.
        group: Consumer group; its offsets are committed after each record is handed over
            (at-least-once). ``None`` reads without a group of its own and commits nothing.
        from_beginning: Start at the oldest record when the group has no committed offset.
        limit: Stop after this many records.
        idle_timeout_s: Stop when no record arrived for this long (``None``: wait forever).
        codec: Record codec (default: the shipped schemas).
        stop: Stop when this event is set (another thread's way to end the iteration).
        dead_letter: Where a processor that subscribes sends the records it cannot decode (or of another type
            than their topic carries), e.g. ``RecordProducer.dead_letter``; without it they are skipped with a
            warning (a plain subscriber is not the pipeline's dead-letter path).
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    for name in names:
        topic_spec(name)
    codec = codec or RecordCodec()
    consumer = Consumer(
        kafka.librdkafka(
            **{
                "group.id": group or f"sdg-subscribe-{uuid.uuid4().hex}",
                "enable.auto.commit": group is not None,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "fetch.wait.max.ms": 100,
            }
        )
    )
    assigned_at: list[float] = []  # the idle clock starts once the group has handed out partitions
    consumer.subscribe(names, on_assign=lambda c, partitions: assigned_at.append(time.monotonic()))
    count = 0
    started = last = time.monotonic()
    try:
        while (limit is None or count < limit) and not (stop is not None and stop.is_set()):
            message = consumer.poll(0.1)
            if message is None:
                if not assigned_at:
                    if time.monotonic() - started > ASSIGN_TIMEOUT_S:
                        raise BrokerError(f"subscribe {names}: no partitions assigned within {ASSIGN_TIMEOUT_S}s")
                    continue
                last = max(last, assigned_at[-1])
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerError(f"subscribe {names}: {error.str()}")
            try:
                record = topic_spec(message.topic()).check(codec.decode(message.value()))
            except UndecodableRecord as e:
                if dead_letter is not None:
                    dead_letter(message, e)
                else:
                    log.warning("%s[%d]@%d skipped: %s", message.topic(), message.partition(), message.offset(), e)
                if group is not None:
                    consumer.store_offsets(message)
                continue
            count += 1
            yield Received(str(message.topic()), message.partition() or 0, message.offset() or 0, message.key(),
                           message.timestamp()[1], record, message)
            if group is not None:
                consumer.store_offsets(message)
    finally:
        consumer.close()
