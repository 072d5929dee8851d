"""One frozen settings object per process, read from ``SDG_*`` environment variables (nested with ``__``).

Nothing else in sdg-edge reads ``os.environ``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.broker import BrokerConfig, EmbeddedBroker
from infra.plant import PlantConfig
from infra.security import ADMIN, MECHANISM, BrokerSecrets
from models.reference import DataConfig, ReferenceSet, Splits, load_reference, make_splits
from models.registry import ModelRegistry
from processors.label import Labeler
from processors.quality import QualityConfig, QualityJudge
from processors.thermal import ThermalConfig
from schemas.records import NAME_PATTERN, RunId
from sdg.run_events import OpenLineageConfig
from sdg.spark import SparkConfig
from streams.anchors import Anchors
from streams.config import KafkaConfig, RunnerConfig, TopicConfig
from streams.delta_sink import DeltaTables, SinkConfig
from streams.errors import ConfigError

PREFIX = "SDG_"


def _new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class WorkerConfig(BaseModel):
    """Who this generator worker is and what it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str = "node-0"
    max_job_count: int = Field(default=4096, ge=1, description="Samples one job may ask for.")
    threads: int = Field(default=0, ge=0, description="torch threads (0: torch's default).")
    image_format: Literal["auto", "png", "raw"] = Field(default="auto", description=(
        "How samples carry their images: raw pixels (free to encode and decode), PNG (smaller), or auto: raw "
        "up to 16 KiB of pixels, PNG above."))


class MetricsConfig(BaseModel):
    """Prometheus metrics (``SDG_METRICS__*``): ``sdg run`` serves ``/metrics`` when a port is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int | None = Field(default=None, ge=1, le=65_535, description=(
        "Serve /metrics on this port (with --workers N: port, port+1, …); unset: no metrics server."))
    host: str = Field(default="127.0.0.1", description="The address to serve it on (0.0.0.0: every interface).")


class ConsoleConfig(BaseModel):
    """The console (``SDG_CONSOLE__*``): where it listens and who answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", description="Loopback: no login; any other address needs a password.")
    port: int = Field(default=8700, ge=1, le=65_535)
    reviewer: str = Field(default="reviewer", pattern=NAME_PATTERN, description=(
        "Who answers, on loopback (with a password, the login's user name)."))
    password: SecretStr | None = Field(default=None, description="Basic-auth password (required off loopback).")
    retrain_every: int = Field(default=0, ge=0, description=(
        "Retrain the labeler with the answers after this many new ones (0: only from the page's button)."))


class TrainConfig(BaseModel):
    """The edge trainer (``SDG_TRAIN__*``): what it trains on and when it retrains."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    every: int = Field(default=1000, ge=1, description="Retrain after this many new accepted samples (sdg run train).")
    steps: int = Field(default=1000, ge=1)
    real_few: bool = Field(default=True, description="Add the few real labels the labeler was trained on.")
    pseudo: bool = Field(default=True, description="Add the unlabeled real images, FixMatch-style.")


class Settings(BaseSettings):
    """Everything a process of sdg-edge can be told. Example: ``SDG_KAFKA__BOOTSTRAP_SERVERS=b1:9092,b2:9092``.

    The embedded broker is used unless ``kafka.bootstrap_servers`` is set.
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid")

    state_dir: Path = Field(default=Path(".sdg"), description="Broker data, caches and local tables.")
    run_id: RunId = Field(default_factory=_new_run_id)
    task: Literal["classification", "detection", "segmentation"] = Field(
        default="classification", description="What the run labels: one class per sample, or scenes with every "
                                              "object's box (detection) and mask (segmentation), by a detector.")
    data: DataConfig = DataConfig()
    kafka: KafkaConfig = KafkaConfig()
    broker: BrokerConfig = BrokerConfig()
    topics: TopicConfig = TopicConfig()
    runner: RunnerConfig = RunnerConfig()
    worker: WorkerConfig = WorkerConfig()
    quality: QualityConfig = QualityConfig()
    sink: SinkConfig = SinkConfig()
    openlineage: OpenLineageConfig = OpenLineageConfig()
    spark: SparkConfig = SparkConfig()
    plant: PlantConfig = PlantConfig()
    thermal: ThermalConfig = ThermalConfig()
    train: TrainConfig = TrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()
    tables_dir: Path | None = Field(default=None, description="The Delta tables (default: <state_dir>/tables).")

    @model_validator(mode="after")
    def _replicated_on_an_embedded_cluster(self) -> Settings:
        """Topics on an embedded cluster of several nodes are replicated (up to 3) unless told otherwise."""
        if self.embedded and self.broker.nodes > 1 and "topics" not in self.model_fields_set:
            object.__setattr__(self, "topics", TopicConfig(replication_factor=min(3, self.broker.nodes)))
        return self

    @property
    def embedded(self) -> bool:
        """Whether this process talks to the embedded broker (no bootstrap servers were configured)."""
        return "bootstrap_servers" not in self.kafka.model_fields_set

    @property
    def kafka_client(self) -> KafkaConfig:
        """Kafka settings with the embedded broker's address filled in when it is the one in use (and, when it
        is secured, the admin's credentials: the command line's)."""
        return self.kafka_as(ADMIN)

    def kafka_as(self, user: str) -> KafkaConfig:
        """Kafka settings for the principal ``user`` (``infra.security.principal(processor)`` for a processor):
        its own SCRAM credentials when the embedded broker is secured; on a configured SASL cluster without a
        configured user, its credentials from the cluster's secrets folder (``sdg broker secrets``, shared by the
        compose services); the configured ones otherwise."""
        if not self.embedded:
            shared = BrokerSecrets(self.state_dir / "kafka" / "security")
            if self.kafka.security_protocol.startswith("SASL") and self.kafka.sasl_username is None \
                    and shared.passwords_file.exists():
                return self.kafka.model_copy(update={
                    "sasl_mechanism": self.kafka.sasl_mechanism or MECHANISM, "sasl_username": user,
                    "sasl_password": SecretStr(shared.password(user)),
                    "ssl_ca_location": self.kafka.ssl_ca_location or str(shared.ca)})
            return self.kafka
        reach = self.embedded_broker().client(user)
        return self.kafka.model_copy(update={f: getattr(reach, f) for f in reach.model_fields_set})

    @property
    def models_dir(self) -> Path:
        """The model registry: trained generators and labelers, by kind and version; one per real data set (the
        default digits in ``models``, others in ``models-<name>-<hash of SDG_DATA__*>``)."""
        if self.data == DataConfig():
            return self.state_dir / "models"
        key = hashlib.sha256(self.data.model_dump_json().encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(self.data.source).name)[:40]
        return self.state_dir / f"models-{name}-{key}"

    def private_state_dir(self) -> Path:
        """The state directory, created owner-only (0700): it holds the broker's configuration, models and tables."""
        return private_dir(self.state_dir)

    def masked(self) -> dict[str, Any]:
        """The settings as JSON-able data with every secret masked (``SecretStr`` fields and secret-looking keys
        of ``extra_config`` / ``extra_properties``), for printing."""
        return _mask(self.model_dump(mode="json"))

    def reference(self) -> ReferenceSet:
        """The real data (``SDG_DATA__SOURCE``)."""
        return load_reference(self.data)

    def splits(self, labels_per_class: int = 10, seed: int = 0) -> Splits:
        """The real data's fixed, seeded splits (train, test, and the few labels per class)."""
        return make_splits(self.reference(), labels_per_class=labels_per_class, seed=seed)

    def registry(self) -> ModelRegistry:
        """The model registry of this data set (every kind: generators, labeler, extractor, edge)."""
        return ModelRegistry(self.models_dir)

    def model_file(self, kind: str, given: Path | None, precision: str) -> Path:
        """The user's own model file, or the registry's latest ``kind`` after checking it against its content hash."""
        return given if given is not None else self.registry().onnx(kind, precision)

    @property
    def labeler_kind(self) -> str:
        """The registry kind of the task's labeler: ``labeler`` (a classifier) or ``detector``."""
        return "labeler" if self.task == "classification" else "detector"

    def labeler(self) -> Labeler:
        """The labeler the pipeline is configured with (``SDG_QUALITY__LABELER``, else the registry's latest
        classifier, or detector for the detection and segmentation tasks)."""
        q = self.quality
        return Labeler.load(self.model_file(self.labeler_kind, q.labeler, q.labeler_precision), threads=q.threads)

    def judge(self, splits: Splits | None = None) -> QualityJudge:
        """The quality judge over the configured real data (fixed splits), re-checking every label with the
        configured labeler."""
        q = self.quality
        return QualityJudge.load(self.model_file("extractor", q.extractor, "fp32"), splits or self.splits(), q,
                                 self.labeler())

    def catalog(self) -> Any:
        """The generators of this data set: its trained GAN and diffusion models, and the procedural renderer
        drawing at the data's size, channels and polarity."""
        from models.catalog import GeneratorCatalog
        from models.render import RenderConfig

        r = self.reference()
        render = RenderConfig(image_size=r.image_size, channels=r.channels, dark_ink=r.dark_ink)
        return GeneratorCatalog(self.models_dir, render)

    def delta_tables(self) -> DeltaTables:
        return DeltaTables(self.tables_dir or self.state_dir / "tables")

    def anchors(self) -> Anchors:
        """The signed log of lineage chain heads (``<state>/anchors/lineage.jsonl``), under ``SDG_SINK__ANCHOR_KEY``
        or, without one, a random key made once in the state directory (owner-only)."""
        folder = private_dir(self.private_state_dir() / "anchors")
        if self.sink.anchor_key is not None:
            key = self.sink.anchor_key.get_secret_value().encode()
        else:
            stored = folder / "key"
            if not stored.exists():  # written whole, then linked: a process racing this one reads one key or the other
                draft = folder / f".key-{os.getpid()}"
                draft.write_bytes(secrets.token_hex(32).encode())
                draft.chmod(0o600)
                try:
                    os.link(draft, stored)
                except FileExistsError:
                    pass
                finally:
                    draft.unlink()
            key = stored.read_bytes()
        return Anchors(folder / "lineage.jsonl", key)

    def embedded_broker(self) -> EmbeddedBroker:
        return EmbeddedBroker(self.broker, self.state_dir)


MASK = "**********"
_SECRET_KEY = re.compile(r"password|passwd|secret|jaas|token|credential|(^|[._-])key($|[._-])", re.IGNORECASE)


def is_secret(key: str) -> bool:
    """Whether an option named ``key`` looks like it holds a secret (a file location does not)."""
    return _SECRET_KEY.search(key) is not None and not key.lower().endswith(("location", "file", "path"))


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if is_secret(str(k)) and v is not None else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created 0700, tightened if it is ours and looser)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def _names(model: type[BaseModel], prefix: str) -> tuple[set[str], set[str]]:
    """(every variable name, the names of dict-valued settings) of ``model``."""
    names, dicts = set(), set()
    for name, field in model.model_fields.items():
        full = f"{prefix}{name.upper()}"
        names.add(full)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested, nested_dicts = _names(annotation, full + "__")
            names |= nested
            dicts |= nested_dicts
        elif getattr(annotation, "__origin__", None) is dict:
            dicts.add(full)
    return names, dicts


def valid_names() -> list[str]:
    """Every environment variable name that sdg-edge reads."""
    return sorted(_names(Settings, PREFIX)[0])


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the process environment (``overrides`` win).

    Raises:
        ConfigError: an ``SDG_*`` variable that sdg-edge does not know, or a value that does not validate.
    """
    valid, dicts = _names(Settings, PREFIX)
    unknown = [
        name
        for name in sorted(os.environ)
        if name.upper().startswith(PREFIX)
        and name.upper() not in valid
        # dict-valued settings (extra_config, extra_properties) may also be given one key at a time
        and not any(name.upper().startswith(d + "__") for d in dicts)
    ]
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; valid: {', '.join(sorted(valid))}")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{PREFIX}{'__'.join(str(part).upper() for part in error['loc'])}: "
                             f"{error['msg'].removeprefix('Value error, ')}" for error in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from e
