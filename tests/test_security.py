"""The secured embedded broker (``SDG_BROKER__SECURITY=sasl_ssl``): TLS, a SCRAM principal per processor, and
ACLs from the topology, checked against a real Kafka broker: strangers and wrong passwords are refused, a
processor's principal writes only its own outputs (nothing forged lands), and a processor runs secured."""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from typing import Iterator

import pytest
from pydantic import SecretStr

from infra.broker import EmbeddedBroker
from infra.security import ADMIN, READER, principal
from schemas.examples import example
from schemas.records import Gate, HumanLabel, SampleDecision, Throttle
from sdg.settings import Settings
from sdg.workers import processor
from streams import admin
from streams.config import KafkaConfig, TopicConfig
from streams.errors import BrokerError
from streams.producer import RecordProducer
from streams.subscribe import subscribe
from tests.conftest import broker_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(broker_config(security="sasl_ssl"), tmp_path_factory.mktemp("secured"))
    embedded.start()
    admin.create_topics(embedded.kafka, TopicConfig())
    yield embedded
    embedded.stop()


def landed(broker: EmbeddedBroker, topic: str) -> list[object]:
    return [r.record for r in subscribe(topic, kafka=broker.kafka, from_beginning=True, idle_timeout_s=3)]


def test_secrets_are_private_and_strangers_and_wrong_passwords_are_refused(secured: EmbeddedBroker) -> None:
    folder = secured.secrets.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    assert admin.wait_for_broker(secured.kafka, timeout_s=10) == 1  # the admin gets in, over TLS
    stranger = KafkaConfig(bootstrap_servers=secured.config.bootstrap)  # plaintext, no name
    with pytest.raises(BrokerError):
        admin.wait_for_broker(stranger, timeout_s=3)
    wrong = secured.client(principal("generate")).model_copy(update={"sasl_password": SecretStr("guess")})
    with pytest.raises(BrokerError):
        admin.wait_for_broker(wrong, timeout_s=3)
    untrusted = secured.client(ADMIN).model_copy(update={"ssl_ca_location": None})  # the system CAs: not ours
    with pytest.raises(BrokerError):
        admin.wait_for_broker(untrusted, timeout_s=3)


def test_a_generator_writes_samples_but_cannot_forge_caps_or_decisions(secured: EmbeddedBroker, run_id: str) -> None:
    generator = secured.client(principal("generate"))
    with RecordProducer(generator) as producer:
        producer.send("sdg.samples.raw", example(SampleDecision, 0, run_id).sample)
        producer.flush()
    for topic, forged in (("sdg.control", Throttle(node_id="node-0", run_id=run_id, max_rate_sps=None, reason="forged",
                                                    ttl_s=60.0)),
                          ("sdg.samples.accepted", example(SampleDecision, 1, run_id))):
        with pytest.raises(BrokerError, match="(?i)authoriz"), RecordProducer(generator) as producer:
            producer.send(topic, forged)
            producer.flush(timeout_s=15)
    assert [r.run_id for r in landed(secured, "sdg.samples.raw")] == [run_id]  # type: ignore[attr-defined]
    assert landed(secured, "sdg.control") == [] and landed(secured, "sdg.samples.accepted") == []
    # a reader (a trainer, `sdg subscribe`) reads but writes nothing
    assert len([r for r in subscribe("sdg.samples.raw", kafka=secured.client(READER), from_beginning=True,
                                     idle_timeout_s=3)]) == 1
    with pytest.raises(BrokerError), RecordProducer(secured.client(READER)) as producer:  # no idempotent-write right
        producer.send("sdg.samples.raw", example(SampleDecision, 2, run_id).sample)
        producer.flush(timeout_s=15)
    assert len(landed(secured, "sdg.samples.raw")) == 1


def test_a_stateful_processor_runs_exactly_once_as_its_own_principal(secured: EmbeddedBroker, run_id: str,
                                                                    tmp_path: Path) -> None:
    """The review join: its group, changelog topic and transactional producer, all under its own ACLs."""
    queued = [example(SampleDecision, i, run_id) for i in range(3)]
    queued = [q.model_copy(update={"gate": Gate(decision="review", reason="uncertain", gate="example")}) for q in queued]
    with RecordProducer(secured.kafka) as producer:
        for q in queued:
            producer.send("sdg.samples.review", q)
            producer.send("sdg.labels.human", HumanLabel(run_id=run_id, sample_id=q.sample.sample_id, label=4,
                                                         rejected=False, reviewer="ada"))
    settings = Settings(state_dir=secured.home.parent, broker=secured.config, tables_dir=tmp_path / "tables")

    def run() -> int:
        with processor("review", settings) as runner:
            thread = threading.Thread(target=runner.run, kwargs={"max_idle_s": 5.0})
            thread.start()
            thread.join(120)
        assert not thread.is_alive()
        return runner.stats.restored

    assert run() == 0
    accepted = [r for r in landed(secured, "sdg.samples.accepted") if r.run_id == run_id]  # type: ignore[attr-defined]
    assert sorted(r.sample.sample_id for r in accepted) == sorted(q.sample.sample_id for q in queued)  # type: ignore[attr-defined]
    assert all(r.reviewer == "ada" and r.label.label == 4 for r in accepted)  # type: ignore[attr-defined]
    with RecordProducer(secured.kafka) as producer:  # a correction: the restarted join restores its queue
        producer.send("sdg.labels.human", HumanLabel(run_id=run_id, sample_id=queued[0].sample.sample_id, label=7,
                                                     rejected=False, reviewer="bob"))
    assert run() > 0  # its changelog, read back under its own group's ACLs
    corrected = [r for r in landed(secured, "sdg.samples.accepted") if r.run_id == run_id and r.reviewer == "bob"]  # type: ignore[attr-defined]
    assert [r.label.label for r in corrected] == [7]  # type: ignore[attr-defined]
