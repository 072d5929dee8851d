"""Producing records: encode with the schema codec, check the topic's type, report delivery failures."""

from __future__ import annotations

from typing import Any, Sequence

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import RecordCodec
from schemas.records import Record
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig
from streams.dead_letter import record_bytes
from streams.errors import BrokerError, ConfigError, RecordTooLarge


def key_bytes(record: Record) -> bytes | None:
    """A record's Kafka key as bytes."""
    key = record.key()
    return key.encode() if isinstance(key, str) else key


def check_size(topic: str, key: bytes | None, value: bytes | None, headers: dict[str, bytes] | None, *,
               max_record_bytes: int) -> None:
    """Raises ``RecordTooLarge`` when key, value and headers weigh more than ``max_record_bytes``."""
    size = record_bytes(key, value, headers)
    if size > max_record_bytes:
        raise RecordTooLarge(f"a {size:,}-byte record for {topic}; at most {max_record_bytes:,} bytes "
                             "(SDG_KAFKA__MAX_RECORD_BYTES)")


class RecordProducer:
    """A confluent-kafka producer of catalog records (idempotent, acks=all; transactional with an id)."""

    def __init__(self, kafka: KafkaConfig, *, codec: RecordCodec | None = None, linger_ms: float = 5.0,
                 transactional_id: str | None = None) -> None:
        self.codec = codec or RecordCodec()
        self.max_record_bytes = kafka.max_record_bytes
        conf: dict[str, Any] = {
            "enable.idempotence": True, "linger.ms": linger_ms, "acks": "all",
            # ``_on_delivery`` acts on failures only: reports of those alone, no Python call a delivered record
            "delivery.report.only.error": True, "on_delivery": self._on_delivery,
            # librdkafka counts a record with its framing: leave it room above the largest record we send
            "message.max.bytes": kafka.max_record_bytes + 64 * 1024,
        }
        if transactional_id is not None:
            # a new transaction's first records wait until the last one's commit markers are written: the broker says
            # CONCURRENT_TRANSACTIONS and the client retries after retry.backoff.ms (100 ms by default, a control loop's
            # whole budget); 5 ms, doubling up to 500, keeps back-to-back transactions close together
            conf |= {"transactional.id": transactional_id, "transaction.timeout.ms": 60_000,
                     "retry.backoff.ms": 5, "retry.backoff.max.ms": 500}
        self.client = Producer(kafka.librdkafka(**conf))  # the confluent-kafka producer (its transactions)
        self._failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def send(self, topic: str, record: Record, *, headers: dict[str, bytes] | None = None) -> None:
        """Queue ``record`` for ``topic`` (keyed by ``record.key()``).

        Raises:
            UnknownTopic: ``topic`` is not in the catalog.
            ConfigError: the record is not of the topic's value type.
        """
        spec = topic_spec(topic)
        if not spec.accepts(record):
            raise ConfigError(f"{topic} carries {spec.value.__name__ if spec.value else '?'}, not {record.schema_name}")
        self.send_bytes(topic, key_bytes(record), self.codec.encode(record), headers=headers)

    def send_bytes(self, topic: str, key: bytes | None, value: bytes | None, *,
                   headers: dict[str, bytes] | None = None, partition: int | None = None) -> None:
        """Queue raw bytes (dead letters, relays, changelogs, tests of bad input); ``partition``: this one, not the
        key's.

        Raises:
            RecordTooLarge: key, value and headers weigh more than ``max_record_bytes`` (nothing was queued).
        """
        self.check_size(topic, key, value, headers)
        self.produce(topic, key, value, headers=headers, partition=partition)
        self.client.poll(0)

    def produce(self, topic: str, key: bytes | None, value: bytes | None, *,
                headers: dict[str, bytes] | None = None, partition: int | None = None) -> None:
        """Queue bytes already checked for size (the runtime's hot path: delivery reports are served by the
        caller's ``client.poll``, once per batch)."""
        while True:
            try:
                self.client.produce(topic, value=value, key=key, headers=list(headers.items()) if headers else None,
                                    partition=-1 if partition is None else partition)  # -1: by key
                return
            except BufferError:
                self.client.poll(0.05)  # local queue full: let deliveries drain

    def produce_many(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        """``produce`` for many (topic, key, value) records, in order."""
        produce = self.client.produce
        for topic, key, value in records:
            try:
                produce(topic, value, key)
            except BufferError:
                self.produce(topic, key, value)  # waits for room

    def check_size(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: dict[str, bytes] | None = None) -> None:
        """Raises ``RecordTooLarge`` when key, value and headers weigh more than ``max_record_bytes``."""
        check_size(topic, key, value, headers, max_record_bytes=self.max_record_bytes)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is acknowledged.

        Raises:
            BrokerError: a record could not be delivered, or the queue did not drain in time.
        """
        try:
            remaining = self.client.flush(timeout_s)
        except Exception as e:  # a fatal error (no permission to write anything) surfaces oddly from confluent-kafka
            raise BrokerError(f"the producer failed: {e.__context__ or e!r}") from e
        if remaining:
            raise BrokerError(f"{remaining} records still undelivered after {timeout_s}s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise BrokerError(f"{len(failures)} records were not delivered, first: {failures[0]}")

    def close(self) -> None:
        """Flush, then release the client's connections and threads."""
        try:
            self.flush()
        finally:
            self.client.close()

    def __enter__(self) -> RecordProducer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
