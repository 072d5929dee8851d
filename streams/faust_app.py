"""faust-streaming wiring for the stateful processors (agents and windowed tables).

faust is imported lazily: ``streams`` imports without it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.codec import RecordCodec
from schemas.records import DeadLetter
from streams.catalog import topic as topic_spec
from streams.config import KafkaConfig, TopicConfig
from streams.dead_letter import dead_letter as letter

if TYPE_CHECKING:
    import faust

CODEC_NAME = "sdg-avro"


def _register_codec() -> None:
    from faust.serializers import codecs

    class AvroRecords(codecs.Codec):
        """faust codec: catalog records in Avro single-object encoding."""

        record_codec = RecordCodec()

        def _dumps(self, obj: Any) -> bytes:
            return self.record_codec.encode(obj)

        def _loads(self, s: bytes) -> Any:
            return self.record_codec.decode(s)

    if CODEC_NAME not in codecs.codecs:
        codecs.register(CODEC_NAME, AvroRecords())


def _credentials(kafka: KafkaConfig) -> Any:
    import faust

    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_ca_location) if "SSL" in kafka.security_protocol else None
    if context is not None and kafka.ssl_certificate_location:
        context.load_cert_chain(kafka.ssl_certificate_location, kafka.ssl_key_location)
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=password, ssl_context=context, mechanism=kafka.sasl_mechanism
        )
    return faust.SSLCredentials(context)


def faust_app(
    app_id: str, *, kafka: KafkaConfig, topics: TopicConfig, data_dir: Path, **options: Any
) -> "faust.App":
    """A faust app for one stateful processor: brokers and credentials from settings, no web server.

    Args:
        app_id: The app's id (also its consumer group and the prefix of its changelog topics).
        kafka: Connection settings.
        topics: Cluster topic settings (replication of changelog topics).
        data_dir: Where faust keeps local state.
        **options: Further ``faust.App`` settings.
    """
    import faust

    _register_codec()
    brokers = ";".join(f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(","))
    defaults: dict[str, Any] = {
        "broker": brokers,
        "broker_credentials": _credentials(kafka),
        "web_enabled": False,
        "web_bind": "127.0.0.1",
        "datadir": str(data_dir),
        "store": "memory://",
        "topic_replication_factor": topics.replication_factor,
        "topic_allow_declare": True,
        "autodiscover": False,
        "producer_acks": -1,
        "producer_max_request_size": kafka.max_record_bytes + 64 * 1024,
    }
    return faust.App(app_id, **{**defaults, **options})


def create_changelogs(app: "faust.App", *, kafka: KafkaConfig, topics: TopicConfig) -> None:
    """Create the changelog topics of the app's tables before its worker starts.

    Left to faust, a table written right after start can find its new changelog topic missing from
    the cluster metadata and crash its agent (``PartitionsMismatch``, 0 partitions).
    """
    from streams import admin
    from streams.catalog import TopicSpec

    specs = [TopicSpec(table.changelog_topic.get_topic_name(), "table key", None, table.changelog_topic.partitions,
                       f"changelog of the faust table {table.name}", {"cleanup.policy": "compact"})
             for table in app.tables.values()]
    admin.create_topics(kafka, topics, specs)


def dead_letter(event: Any, *, run_id: str, step_id: str, error: Exception, max_record_bytes: int) -> DeadLetter:
    """The dead letter of a faust event a processor could not take: its bytes, where it came from, and why."""
    message = event.message
    headers = message.headers.items() if isinstance(message.headers, dict) else message.headers or []
    return letter(run_id=run_id, step_id=step_id, error=error, topic=message.topic, partition=message.partition,
                  offset=message.offset, key=message.key, value=event.value,
                  headers={k: v or b"" for k, v in headers}, max_record_bytes=max_record_bytes)


def catalog_topic(app: "faust.App", name: str) -> Any:
    """The faust topic for catalog topic ``name``, with string keys and Avro record values."""
    topic_spec(name)
    return app.topic(name, key_type=str, key_serializer="raw", value_serializer=CODEC_NAME)


__all__ = ["CODEC_NAME", "catalog_topic", "create_changelogs", "dead_letter", "faust_app"]
