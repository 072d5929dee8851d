"""Catalog, settings and step definitions: unknown names fail with the valid ones listed."""

from __future__ import annotations

import pytest

from processors.passthrough import passthrough
from schemas.examples import example
from schemas.records import GenerationJob, Reading
from sdg.settings import load_settings, valid_names
from streams.catalog import CATALOG, topic
from streams.errors import ConfigError, StepReturnError, UnknownTopic
from streams.runtime import Step


def test_catalog_covers_the_design_topics() -> None:
    assert set(CATALOG) == {
        "sdg.requests", "sdg.samples.raw", "sdg.samples.labeled", "sdg.samples.scored", "sdg.samples.accepted",
        "sdg.samples.review", "sdg.samples.rejected", "sdg.quality", "sdg.telemetry", "sdg.alerts", "sdg.control",
        "sdg.plant.faults", "sdg.labels.human", "sdg.dlq",
    }
    assert CATALOG["sdg.control"].config["cleanup.policy"] == "compact"
    assert all("retention.ms" in s.config for s in CATALOG.values() if s.name != "sdg.control")


def test_unknown_topic_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownTopic, match="sdg.samples.raw") as info:
        topic("sdg.samples.raww")
    assert "sdg.replay.<name>" in str(info.value)
    assert topic("sdg.replay.x").value is None
    with pytest.raises(UnknownTopic):
        topic("sdg.replay.")


def test_unknown_setting_lists_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDG_KAFKA__BOOTSTRAP_SERVER", "b:9092")
    with pytest.raises(ConfigError, match="SDG_KAFKA__BOOTSTRAP_SERVERS") as info:
        load_settings()
    assert "SDG_KAFKA__BOOTSTRAP_SERVER'" in str(info.value)


def test_invalid_setting_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDG_RUNNER__BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match="SDG_RUNNER__BATCH_SIZE: Input should be greater than or equal to 1"):
        load_settings()


@pytest.mark.parametrize("run_id", ["", "r" * 101, "../x", "a b"])
def test_a_run_id_that_cannot_name_a_partition_is_refused(monkeypatch: pytest.MonkeyPatch, run_id: str) -> None:
    monkeypatch.setenv("SDG_RUN_ID", run_id)
    with pytest.raises(ConfigError, match="SDG_RUN_ID: .*should match pattern"):
        load_settings()


def test_bootstrap_servers_select_an_external_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().embedded
    monkeypatch.setenv("SDG_BROKER__PORT", "19092")
    assert load_settings().kafka_client.bootstrap_servers == "127.0.0.1:19092"
    monkeypatch.setenv("SDG_KAFKA__BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    monkeypatch.setenv("SDG_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SDG_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SDG_KAFKA__SASL_USERNAME", "sdg")
    monkeypatch.setenv("SDG_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("SDG_KAFKA__EXTRA_CONFIG", '{"socket.keepalive.enable": "true"}')
    settings = load_settings()
    assert not settings.embedded
    conf = settings.kafka_client.librdkafka(**{"group.id": "g"})
    assert conf["bootstrap.servers"] == "k1:9093,k2:9093"
    assert conf["sasl.password"] == "s3cret" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["socket.keepalive.enable"] == "true" and conf["group.id"] == "g"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()


def test_valid_names_cover_nested_groups() -> None:
    names = valid_names()
    assert {"SDG_KAFKA__BOOTSTRAP_SERVERS", "SDG_BROKER__PORT", "SDG_RUNNER__BATCH_SIZE", "SDG_STATE_DIR"} <= set(names)


def test_step_checks_topics_kinds_and_return_shapes_and_routes_by_record_type() -> None:
    with pytest.raises(UnknownTopic):
        Step("s", ("sdg.nope",), passthrough)
    with pytest.raises(ConfigError, match="kind must be"):
        Step("s", ("sdg.requests",), passthrough, kind="window")  # type: ignore[arg-type]
    job = example(GenerationJob, 1, "r")
    step = Step("one", ("sdg.requests",), passthrough)
    assert step.outputs(job) == [job] and step.outputs(None) == [] and step.outputs([job, job]) == [job, job]
    with pytest.raises(StepReturnError, match="step one must return records"):
        step.outputs("x")
    with pytest.raises(StepReturnError):
        step.outputs([job, "x"])
    assert step.route(job) == "sdg.requests" and step.route(example(Reading, 1, "r")) == "sdg.telemetry"
    relay = Step("relay", ("sdg.requests",), passthrough, sink="sdg.replay.x")
    assert relay.route(example(Reading, 1, "r")) == "sdg.replay.x"
    with pytest.raises(StepReturnError, match="sent a Reading to sdg.requests"):
        Step("bad", ("sdg.requests",), passthrough, sink="sdg.requests").route(example(Reading, 1, "r"))
