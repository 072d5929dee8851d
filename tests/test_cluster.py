"""A real three-node KRaft cluster on loopback (``SDG_BROKER__NODES=3``), secured as by default: topics are
replicated three times with a minimum ISR of two, and a node killed with SIGKILL in the middle of a stream
loses no acknowledged record; restarted, it rejoins."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker, free_port_block
from infra.security import READER, principal
from schemas.examples import example_sample
from schemas.records import GeneratedSample
from sdg.settings import Settings
from streams import admin
from streams.producer import RecordProducer
from streams.subscribe import subscribe
from tests.conftest import broker_config

pytestmark = pytest.mark.integration


def test_a_killed_node_loses_no_acknowledged_record_and_rejoins(tmp_path: Path, run_id: str) -> None:
    base = free_port_block(6)  # node i listens on base + 2i, its controller on base + 2i + 1
    config = broker_config(nodes=3, port=base, controller_port=base + 1, security="sasl_ssl", start_timeout_s=120)
    settings = Settings(state_dir=tmp_path, broker=config, run_id=run_id)
    assert settings.topics.replication_factor == 3
    cluster = EmbeddedBroker(config, tmp_path)
    status = cluster.start()
    try:
        assert status.running and len({p for p in status.pids if p is not None}) == 3
        admin.create_topics(cluster.kafka, settings.topics)
        (raw,) = admin.describe_topics(cluster.kafka, ["sdg.samples.raw"])
        assert raw.replication == 3
        with RecordProducer(cluster.client(principal("generate"))) as producer:  # acks=all, idempotent
            for i in range(300):
                producer.send("sdg.samples.raw", example_sample(i, run_id))
            producer.flush()
            assert cluster.kill(2)  # a node dies: the other two still make a quorum and the minimum ISR
            for i in range(300, 600):
                producer.send("sdg.samples.raw", example_sample(i, run_id))
            producer.flush(timeout_s=60)
        seeds = [r.record.seed for r in subscribe("sdg.samples.raw", kafka=cluster.client(READER), from_beginning=True,
                                                  idle_timeout_s=5) if isinstance(r.record, GeneratedSample)]
        assert sorted(seeds) == sorted(example_sample(i, run_id).seed for i in range(600))  # none lost, none twice
        assert cluster.status().pids[1] is None
        again = cluster.start()  # brings back the node that is down
        assert again.running and again.pids[0] == status.pids[0]
    finally:
        cluster.stop()
