"""The embedded broker: jars, start, stop, restart with topics and data intact, clear errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.broker import BrokerConfig, EmbeddedBroker
from schemas.examples import example_sample
from schemas.records import GeneratedSample
from streams import admin
from streams.config import TopicConfig
from streams.errors import BrokerError
from streams.producer import RecordProducer
from streams.subscribe import subscribe
from tests.conftest import JARS, broker_config, sdg_command

pytestmark = pytest.mark.integration  # the broker, Delta tables or Spark


def _cli_env(state: Path, config: BrokerConfig) -> dict[str, str]:
    return {**os.environ, "SDG_STATE_DIR": str(state), "SDG_BROKER__PORT": str(config.port),
            "SDG_BROKER__CONTROLLER_PORT": str(config.controller_port), "SDG_BROKER__JARS_DIR": str(JARS),
            "SDG_BROKER__HEAP": "512m"}


def _sdg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(sdg_command(*args), env=env, capture_output=True, text=True, timeout=180)


def test_cli_restart_keeps_topics_and_data(tmp_path: Path) -> None:
    config = broker_config(security=BrokerConfig().security)  # as a user gets it: secured
    env = _cli_env(tmp_path, config)
    assert _sdg(env, "broker", "status").returncode == 1
    started = _sdg(env, "broker", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert _sdg(env, "topics", "create").returncode == 0
        kafka = EmbeddedBroker(config, tmp_path).kafka
        with RecordProducer(kafka) as producer:
            for i in range(20):
                producer.send("sdg.samples.raw", example_sample(i, "restart"))
        assert "broker stopped" in _sdg(env, "broker", "stop").stdout
        assert _sdg(env, "broker", "status").returncode == 1
        assert _sdg(env, "broker", "start").returncode == 0
        assert _sdg(env, "broker", "status").returncode == 0
        described = _sdg(env, "topics", "describe", "sdg.samples.raw", "sdg.control")
        assert described.returncode == 0 and "cleanup.policy=compact" in described.stdout
        seeds = sorted(r.record.seed for r in subscribe("sdg.samples.raw", kafka=kafka, from_beginning=True,
                                                        idle_timeout_s=3) if isinstance(r.record, GeneratedSample))
        assert seeds == list(range(20))
        assert set(admin.create_topics(kafka, TopicConfig()).values()) == {"exists"}
    finally:
        _sdg(env, "broker", "stop")


def test_start_is_idempotent_and_stop_reports_nothing_to_stop(broker: EmbeddedBroker) -> None:
    pid = broker.pid()
    assert pid is not None and broker.start().pid == pid
    other = EmbeddedBroker(broker.config, broker.home.parent / "elsewhere")
    assert other.stop() is False


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn
    broker = EmbeddedBroker(broker_config(jars_dir=None), tmp_path)
    with pytest.raises(BrokerError, match="needs Java 17"):
        broker.start()
    with pytest.raises(BrokerError, match="Maven"):
        broker.ensure_jars()


def test_a_taken_port_fails_with_the_log(tmp_path: Path, broker: EmbeddedBroker) -> None:
    clash = EmbeddedBroker(broker_config(start_timeout_s=30).model_copy(update={"port": broker.config.port}), tmp_path)
    with pytest.raises(BrokerError, match=f"port 127.0.0.1:{broker.config.port} is in use"):
        clash.start()
    assert clash.pid() is None
