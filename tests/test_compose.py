"""docker-compose.yml (the cluster path) agrees with the catalog, the settings and the processors."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.broker import EmbeddedBroker, write_cluster_files
from infra.security import BrokerSecrets, principal
from processors.topology import PROCESSORS
from schemas.examples import example
from schemas.records import SampleDecision, Throttle
from sdg.cli import app
from sdg.settings import load_settings, valid_names
from streams import admin
from streams.catalog import topic
from streams.config import KafkaConfig
from streams.errors import BrokerError
from streams.producer import RecordProducer
from tests.conftest import broker_config, free_port

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KAFKA = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("apache/kafka")}
SDG = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("sdg-edge")
       and s["command"][1] != "spark"}  # the Spark job reaches no broker
SECRETS = "/var/lib/sdg/kafka/security"


def test_kafka_is_a_secured_three_broker_kraft_quorum(tmp_path: Path) -> None:
    """Every node starts from the server.properties `sdg broker secrets` makes (the `secrets` service)."""
    assert len(KAFKA) == 3
    assert SERVICES["secrets"]["command"] == ["sdg", "broker", "secrets", "--hosts", ",".join(KAFKA)]
    written = {p.name: p for p in write_cluster_files(BrokerSecrets(tmp_path), list(KAFKA))}
    for i, (name, service) in enumerate(KAFKA.items(), start=1):
        env = service["environment"]
        assert env["SDG_NODE_PROPERTIES"] == f"{SECRETS}/node-{i}.properties"
        assert f"secrets:{SECRETS}:ro" in service["volumes"]
        assert "kafka-storage.sh format" in service["command"][2] and "--add-scram" in service["command"][2]
        assert "client.properties" in service["healthcheck"]["test"][1]
        properties = dict(line.split("=", 1) for line in written[f"node-{i}.properties"].read_text().splitlines())
        assert properties["node.id"] == str(i)
        assert properties["controller.quorum.voters"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert properties["advertised.listeners"] == f"SASL_SSL://{name}:9092"
        assert properties["allow.everyone.if.no.acl.found"] == "false"
        assert properties["offsets.topic.replication.factor"] == "3" and properties["min.insync.replicas"] == "2"
    assert {"client.properties", "admin-scram"} <= set(written)


@pytest.mark.parametrize("name", list(SDG))
def test_sdg_services_use_valid_settings_and_reach_every_broker(name: str) -> None:
    env = SDG[name]["environment"]
    unknown = [key for key in env if key.startswith("SDG_") and key not in valid_names()]
    assert unknown == []
    assert set(env["SDG_KAFKA__BOOTSTRAP_SERVERS"].split(",")) == {f"{k}:9092" for k in KAFKA}
    assert int(env["SDG_TOPICS__REPLICATION_FACTOR"]) == len(KAFKA)
    assert env["SDG_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert any(v.startswith(f"secrets:{SECRETS}") for v in SDG[name]["volumes"])


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


@pytest.mark.integration
def test_the_cluster_files_start_a_secured_broker_whose_acls_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  run_id: str) -> None:
    """What the compose services do, on loopback without Docker: `sdg broker secrets`, then a node formatted with
    the admin's SCRAM credential and started from its properties, then `sdg broker secure` and `sdg topics
    create`; a processor then connects as its own principal, with its password from the secrets folder."""
    port, controller = free_port(), free_port()
    monkeypatch.setenv("SDG_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SDG_KAFKA__BOOTSTRAP_SERVERS", f"localhost:{port}")
    monkeypatch.setenv("SDG_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    settings = load_settings()
    secrets = settings.embedded_broker().secrets
    write_cluster_files(secrets, ["localhost"], port=port, controller_port=controller, log_dir=tmp_path / "data",
                        bind="127.0.0.1")
    classpath = str(EmbeddedBroker(broker_config(), tmp_path / "jars-only").ensure_jars() / "*")
    node = str(secrets.folder / "node-1.properties")
    subprocess.run(["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                    "--cluster-id", KAFKA["kafka-1"]["environment"]["CLUSTER_ID"], "--config", node,
                    "--add-scram", (secrets.folder / "admin-scram").read_text()], check=True, capture_output=True)
    with open(tmp_path / "kafka.log", "wb") as log:
        kafka = subprocess.Popen(["java", "-Xmx384m", "-cp", classpath, "kafka.Kafka", node], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:  # the admin, over TLS, once the node is up
            assert kafka.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
            try:
                assert admin.wait_for_broker(settings.kafka_client, timeout_s=2) == 1
                break
            except BrokerError:
                assert time.monotonic() < deadline, (tmp_path / "kafka.log").read_text()[-3000:]
                time.sleep(0.5)
        for command in (["broker", "secure"], ["topics", "create"]):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, result.output
        generator = settings.kafka_as(principal("generate"))
        assert generator.sasl_username == "sdg-generate"
        with RecordProducer(generator) as producer:
            producer.send("sdg.samples.raw", example(SampleDecision, 0, run_id).sample)
            producer.flush()
        with pytest.raises(BrokerError, match="(?i)authoriz"), RecordProducer(generator) as producer:
            producer.send("sdg.control", Throttle(node_id="node-0", run_id=run_id, max_rate_sps=None,
                                                  reason="forged", ttl_s=60.0))
            producer.flush(timeout_s=15)
        stranger = KafkaConfig(bootstrap_servers=f"localhost:{port}")
        with pytest.raises(BrokerError):
            admin.wait_for_broker(stranger, timeout_s=3)
    finally:
        kafka.terminate()
        kafka.wait(60)
