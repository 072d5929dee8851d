"""Producing records: encode with the schema codec, check the topic's type, report delivery failures."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import RecordCodec
from schemas.records import Record
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig
from streams.dead_letter import record_bytes
from streams.errors import BrokerError, ConfigError, RecordTooLarge


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class RecordProducer:
    """A confluent-kafka producer of catalog records (idempotent, acks=all)."""

    def __init__(self, kafka: KafkaConfig, *, codec: RecordCodec | None = None, linger_ms: float = 5.0) -> None:
        self.codec = codec or RecordCodec()
        self.max_record_bytes = kafka.max_record_bytes
        self._producer = Producer(kafka.librdkafka(**{
            "enable.idempotence": True, "linger.ms": linger_ms, "acks": "all",
            # librdkafka counts a record with its framing: leave it room above the largest record we send
            "message.max.bytes": kafka.max_record_bytes + 64 * 1024,
        }))
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
        self.send_bytes(topic, _key_bytes(record.key()), self.codec.encode(record), headers=headers)

    def send_bytes(
        self, topic: str, key: bytes | None, value: bytes | None, *, headers: dict[str, bytes] | None = None
    ) -> None:
        """Queue raw bytes (dead letters, relays, tests of bad input).

        Raises:
            RecordTooLarge: key, value and headers weigh more than ``max_record_bytes`` (nothing was queued).
        """
        self.check_size(topic, key, value, headers)
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers.items()) if headers else None,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
        self._producer.poll(0)

    def check_size(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: dict[str, bytes] | None = None) -> None:
        """Raises ``RecordTooLarge`` when key, value and headers weigh more than ``max_record_bytes``."""
        size = record_bytes(key, value, headers)
        if size > self.max_record_bytes:
            raise RecordTooLarge(f"a {size:,}-byte record for {topic}; at most {self.max_record_bytes:,} bytes "
                                 "(SDG_KAFKA__MAX_RECORD_BYTES)")

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is acknowledged.

        Raises:
            BrokerError: a record could not be delivered, or the queue did not drain in time.
        """
        remaining = self._producer.flush(timeout_s)
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
            self._producer.close()

    def __enter__(self) -> RecordProducer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
