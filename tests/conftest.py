"""Fixtures: one real Apache Kafka broker per test session, on free ports, in a temporary folder."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from infra.broker import BrokerConfig, EmbeddedBroker
from streams import admin
from streams.catalog import TopicSpec
from streams.config import KafkaConfig, TopicConfig

REPO = Path(__file__).resolve().parents[1]
INTEGRATION_FIXTURES = {"broker", "kafka", "fresh_topic"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the broker is an integration test (Delta, Spark and demo tests are marked in place)."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
JARS = REPO / ".sdg" / "kafka" / "jars"  # shared with `sdg broker install`: resolved once per machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_config(**overrides: Any) -> BrokerConfig:
    # plaintext unless asked: tests of one part talk to it as anyone; the demo and test_security run it secured
    return BrokerConfig(**{"port": free_port(), "controller_port": free_port(), "jars_dir": JARS, "heap": "512m",
                           "security": "plaintext", **overrides})


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(broker_config(), tmp_path_factory.mktemp("state"))
    embedded.start()
    admin.create_topics(embedded.kafka, TopicConfig())
    yield embedded
    embedded.stop()


@pytest.fixture(scope="session")
def kafka(broker: EmbeddedBroker) -> KafkaConfig:
    return broker.kafka


@pytest.fixture
def run_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_topic(kafka: KafkaConfig):
    """Create ``sdg.replay.<uuid>`` topics (any record type) for tests that count what they read."""

    def make(partitions: int = 6) -> str:
        name = f"sdg.replay.t{uuid.uuid4().hex[:12]}"
        spec = TopicSpec(name, "sample_id", None, partitions, "test topic", {})
        admin.create_topics(kafka, TopicConfig(), [spec])
        return name

    return make


def sdg_command(*args: str) -> list[str]:
    """The ``sdg`` command line, run with this interpreter."""
    return [sys.executable, "-m", "sdg", *args]


@pytest.fixture(scope="session")
def quality_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder whose model registry holds a small trained labeler and quality extractor."""
    from rich.console import Console

    from sdg.settings import Settings
    from sdg.training import train_quality_models

    state = tmp_path_factory.mktemp("quality")
    train_quality_models(Settings(state_dir=state), extractor_steps=300, labeler_steps=600,
                         console=Console(quiet=True))
    return state


DECISIONS = ["sdg.samples.accepted", "sdg.samples.review", "sdg.samples.rejected"]


def forge(record: Any, **changes: Any) -> bytes:
    """``record``'s Avro bytes with ``changes`` that its Python type would refuse (written past validation)."""
    from schemas.codec import registry

    writer = registry().latest(record.schema_name)
    return writer.write({**record.model_dump(), "schema_version": writer.version, **changes})


def collect(topic: str, kafka: KafkaConfig, run_id: str) -> list:
    """Every record of ``run_id`` on ``topic`` so far."""
    from streams.subscribe import subscribe

    return [r.record for r in subscribe(topic, kafka=kafka, from_beginning=True, idle_timeout_s=2)
            if r.record.run_id == run_id]


def await_decisions(kafka: KafkaConfig, run_id: str, wanted: set[str], *, quality: subprocess.Popen,
                    runner: threading.Thread, timeout_s: float = 150) -> dict:
    """The gate's decisions of ``run_id`` by sample id, once every sample in ``wanted`` is decided; fails when the
    quality process or the runner thread stops first, or the time runs out."""
    deadline = time.monotonic() + timeout_s
    decided: dict = {}
    while not wanted <= set(decided):
        if time.monotonic() > deadline:
            quality.kill()
            raise AssertionError(f"{len(decided)} decided; missing {sorted(wanted - set(decided))[:10]}; quality "
                                 f"processor said: {quality.communicate()[0].decode()[-3000:]}")
        assert quality.poll() is None, quality.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        assert runner.is_alive()
        for topic in DECISIONS:
            for decision in collect(topic, kafka, run_id):
                decided[decision.sample.sample_id] = decision
    return decided
