"""Topic administration with confluent-kafka's AdminClient: create the catalog, list, describe."""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic

from streams.catalog import CATALOG, TopicSpec
from streams.config import KafkaConfig, TopicConfig
from streams.errors import BrokerError


@dataclass(frozen=True)
class TopicState:
    """What the cluster says about one topic."""

    name: str
    partitions: int
    replication: int
    config: dict[str, str]


def admin_client(kafka: KafkaConfig) -> AdminClient:
    return AdminClient(kafka.librdkafka())


def wait_for_broker(kafka: KafkaConfig, *, timeout_s: float) -> int:
    """Block until a metadata round trip succeeds; returns the number of brokers.

    Raises:
        BrokerError: no broker answered within ``timeout_s``.
    """
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:  # a refused TCP connect is a quick, quiet "not yet" (librdkafka would log every retry)
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BrokerError(f"no Kafka broker listens at {kafka.bootstrap_servers}: {e}") from e
    try:
        metadata = admin_client(kafka).list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise BrokerError(f"no Kafka broker answered at {kafka.bootstrap_servers} within {timeout_s}s: {e}") from e
    return len(metadata.brokers)


def create_topics(
    kafka: KafkaConfig, topics: TopicConfig, specs: list[TopicSpec] | None = None, *, timeout_s: float = 30
) -> dict[str, str]:
    """Create the catalog topics (or ``specs``); existing topics are left as they are.

    Returns:
        Topic name → ``"created"`` or ``"exists"``.
    """
    client = admin_client(kafka)
    wanted = specs if specs is not None else list(CATALOG.values())
    new = [
        NewTopic(
            spec.name,
            num_partitions=max(1, math.ceil(spec.partitions * topics.partitions_scale)),
            replication_factor=topics.replication_factor,
            config=dict(spec.config),
        )
        for spec in wanted
    ]
    outcome: dict[str, str] = {}
    for name, future in client.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s).items():
        try:
            future.result()
            outcome[name] = "created"
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"could not create topic {name}: {e.args[0].str()}") from e
            outcome[name] = "exists"
    _wait_for_leaders(client, list(outcome), timeout_s=timeout_s)
    return outcome


def _wait_for_leaders(client: AdminClient, names: list[str], *, timeout_s: float) -> None:
    """Block until every partition of ``names`` has a leader (a new topic has none for a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = client.list_topics(timeout=timeout_s).topics
        leaderless = [
            n for n in names
            if n not in topics or not topics[n].partitions or any(p.leader < 0 for p in topics[n].partitions.values())
        ]
        if not leaderless:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics without a partition leader after {timeout_s}s: {leaderless}")
        time.sleep(0.1)


METADATA_LAG_S = 3.0
"""How long a topic missing from one broker's metadata is looked for again before it is called missing."""


def describe_topics(kafka: KafkaConfig, names: list[str] | None = None, *, timeout_s: float = 10) -> list[TopicState]:
    """Partitions, replication and non-default configs of ``names`` (default: every topic in the cluster)."""
    client = admin_client(kafka)
    deadline = time.monotonic() + METADATA_LAG_S
    while True:  # in a cluster, a broker's metadata may lag a topic another broker just created
        try:
            metadata = client.list_topics(timeout=timeout_s)
        except KafkaException as e:
            raise BrokerError(f"cannot list topics at {kafka.bootstrap_servers}: {e}") from e
        selected = sorted(n for n in metadata.topics if not n.startswith("__")) if names is None else names
        missing = [n for n in selected if n not in metadata.topics]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not in the cluster: {missing}; run `sdg topics create`")
        time.sleep(0.1)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in selected]
    configs = {r.name: f.result() for r, f in client.describe_configs(resources).items()} if resources else {}
    states = []
    for name in selected:
        partitions = metadata.topics[name].partitions
        replication = len(next(iter(partitions.values())).replicas) if partitions else 0
        explicit = {
            k: v.value
            for k, v in configs[name].items()
            if v.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        }
        states.append(TopicState(name, len(partitions), replication, explicit))
    return states


def _partition_ends(consumer: Consumer, names: list[str], timeout_s: float) -> list[TopicPartition]:
    metadata = consumer.list_topics(timeout=timeout_s)
    return [
        TopicPartition(name, p, _high_watermark(consumer, name, p, timeout_s))
        for name in names
        for p in (metadata.topics[name].partitions if name in metadata.topics else {})
    ]


_NOT_READY = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)


def _high_watermark(consumer: Consumer, topic: str, partition: int, timeout_s: float) -> int:
    """The partition's log end; retried while a new topic's leader is still being announced."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)[1])
        except KafkaException as e:
            if e.args[0].code() not in _NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def log_end_offsets(kafka: KafkaConfig, names: list[str], *, timeout_s: float = 10) -> dict[str, int]:
    """The number of records ever written to each topic (sum of its partitions' high watermarks)."""
    consumer = Consumer(kafka.librdkafka(**{"group.id": "sdg-watermarks", "enable.auto.commit": False}))
    try:
        totals = dict.fromkeys(names, 0)
        for end in _partition_ends(consumer, names, timeout_s):
            totals[end.topic] += end.offset
        return totals
    except KafkaException as e:
        raise BrokerError(f"cannot read the log end offsets of {names}: {e}") from e
    finally:
        consumer.close()


def start_group_at_end(kafka: KafkaConfig, group: str, names: list[str], *, timeout_s: float = 10,
                       coordinator_timeout_s: float = 90) -> None:
    """Commit the current log ends for a new ``group``: its members read only what is written from now on.

    A new broker's group coordinator loads its offsets topic first (tens of seconds on a busy machine):
    commits are retried until ``coordinator_timeout_s``.
    """
    consumer = Consumer(kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    deadline = time.monotonic() + coordinator_timeout_s
    try:
        ends = _partition_ends(consumer, names, timeout_s)
        while True:
            try:
                consumer.commit(offsets=ends, asynchronous=False)
                return
            except KafkaException as e:  # a new broker's group coordinator may still be loading
                loading = e.args[0].code() in (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR,
                                               KafkaError.COORDINATOR_NOT_AVAILABLE)
                if not (loading or e.args[0].retriable()) or time.monotonic() > deadline:
                    raise BrokerError(f"cannot set the offsets of group {group}: {e}") from e
                time.sleep(0.2)
    finally:
        consumer.close()
