"""docker-compose.yml (the cluster path) agrees with the catalog, the settings and the processors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from processors.topology import PROCESSORS
from sdg.cli import app
from sdg.settings import valid_names
from streams.catalog import topic

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KAFKA = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("apache/kafka")}
SDG = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("sdg-edge")}


def test_kafka_is_a_three_broker_kraft_quorum() -> None:
    assert len(KAFKA) == 3
    voters = {s["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for s in KAFKA.values()}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert sorted(s["environment"]["KAFKA_NODE_ID"] for s in KAFKA.values()) == ["1", "2", "3"]
    for name, service in KAFKA.items():
        env = service["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert "ZOOKEEPER" not in " ".join(env)


@pytest.mark.parametrize("name", list(SDG))
def test_sdg_services_use_valid_settings_and_reach_every_broker(name: str) -> None:
    env = SDG[name]["environment"]
    unknown = [key for key in env if key.startswith("SDG_") and key not in valid_names()]
    assert unknown == []
    assert set(env["SDG_KAFKA__BOOTSTRAP_SERVERS"].split(",")) == {f"{k}:9092" for k in KAFKA}
    assert int(env["SDG_TOPICS__REPLICATION_FACTOR"]) == len(KAFKA)


@pytest.mark.parametrize("name", list(SDG))
def test_sdg_service_commands_are_valid(name: str) -> None:
    command = SDG[name]["command"]
    assert command[0] == "sdg"
    if command[1] == "run":
        assert command[2] in PROCESSORS
        options = dict(zip(command[3::2], command[4::2]))
        for name in ("--source", "--sink"):
            if name in options:
                topic(options[name])
    # every sub-command exists and accepts these options
    help_run = CliRunner().invoke(app, [*command[1:3], "--help"] if command[1] == "run" else [*command[1:], "--help"])
    assert help_run.exit_code == 0, help_run.output


def test_every_processor_has_a_service() -> None:
    run = {s["command"][2] for s in SDG.values() if s["command"][1] == "run"}
    assert run == set(PROCESSORS)


def test_the_readme_shows_the_topology() -> None:
    from processors.topology import markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split("<!-- processors:begin -->\n", 1)[1].split("\n<!-- processors:end -->", 1)[0]
    assert shown == markdown(), "README's processor table is stale: paste `python -m processors.topology`"
