"""Option groups for the Kafka plumbing; ``sdg.settings.Settings`` composes them from the environment."""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Group):
    """How to reach the brokers. Anything librdkafka knows can be passed through ``extra_config``."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    client_id: str = "sdg-edge"
    max_record_bytes: int = Field(
        default=1_000_000, ge=64 * 1024,
        description="Largest record a processor produces (librdkafka's message.max.bytes is set just above it); "
                    "larger outputs send their input to sdg.dlq. Keep it at or below the brokers' limit.")
    extra_config: dict[str, str] = Field(default_factory=dict)

    def librdkafka(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration: connection and security, then ``extra_config``, then ``overrides``."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        conf.update(self.extra_config)
        conf.update(overrides)
        return conf


class TopicConfig(_Group):
    """Cluster-dependent topic settings (the catalog holds everything else)."""

    replication_factor: int = Field(default=1, ge=1)
    partitions_scale: float = Field(default=1.0, gt=0, description="Multiplies every catalog partition count.")


class RunnerConfig(_Group):
    """How a processor runner batches, commits and waits."""

    batch_size: int = Field(default=1000, ge=1, le=100_000)
    commit_interval_s: float = Field(default=1.0, gt=0, description="Checkpoint: flush outputs, commit inputs.")
    poll_timeout_s: float = Field(default=0.1, gt=0)
    linger_ms: float = Field(default=5.0, ge=0)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    fetch_wait_max_ms: int = Field(default=100, ge=0, description="Long-poll wait; the broker answers as soon as data is there.")
    instance: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,64}$", description=(
        "This process's name in its consumer group (default: the host name). A stateful step's transactions "
        "carry it, so a restarted process fences its predecessor at once; two processes of one group on one "
        "host need names of their own."))
