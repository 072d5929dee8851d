"""Integration: the catalog, schemas, runner, dead letters and subscribe API on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.broker import free_port_block
from processors.passthrough import passthrough
from schemas.examples import example, example_sample
from schemas.records import RECORD_TYPES, DeadLetter, GeneratedSample, GenerationJob
from streams import admin
from streams.catalog import CATALOG
from streams.config import KafkaConfig, RunnerConfig, TopicConfig
from streams.dead_letter import DLQ_TOPIC
from streams.producer import RecordProducer
from streams.runtime import Runner, Step
from streams.subscribe import subscribe
from tests.conftest import sdg_command

FAST = RunnerConfig(batch_size=100, session_timeout_ms=6000, heartbeat_interval_ms=500)


def _read(kafka: KafkaConfig, topic: str | list[str], run_id: str | None = None, *, idle: float = 3.0) -> list:
    return [
        r for r in subscribe(topic, kafka=kafka, from_beginning=True, idle_timeout_s=idle)
        if run_id is None or r.record.run_id == run_id
    ]


def test_topics_create_is_idempotent_and_matches_the_catalog(kafka: KafkaConfig) -> None:
    again = admin.create_topics(kafka, TopicConfig())
    assert set(again) == set(CATALOG) and set(again.values()) == {"exists"}
    states = {s.name: s for s in admin.describe_topics(kafka, list(CATALOG))}
    for spec in CATALOG.values():
        assert states[spec.name].partitions == spec.partitions
        assert states[spec.name].replication == 1
        for key, value in spec.config.items():
            assert states[spec.name].config[key] == value, (spec.name, key)


def test_every_schema_round_trips_through_its_topic(kafka: KafkaConfig, run_id: str) -> None:
    sent = {}
    with RecordProducer(kafka) as producer:
        for spec in CATALOG.values():
            assert spec.value is not None
            sent[spec.name] = [example(spec.value, i, run_id) for i in range(3)]
            for record in sent[spec.name]:
                producer.send(spec.name, record)
    received = _read(kafka, list(CATALOG), run_id)
    for name, records in sent.items():
        got = [r for r in received if r.topic == name]
        assert sorted(repr(r.record) for r in got) == sorted(map(repr, records)), name
        assert all(r.key == r.record.key().encode() for r in got if isinstance(r.record.key(), str)), name
    assert {type(r.record) for r in received} == set(RECORD_TYPES.values())


def test_poisoned_records_go_to_the_dlq_while_good_ones_pass(kafka: KafkaConfig, run_id: str, fresh_topic) -> None:
    source, sink = fresh_topic(), fresh_topic()
    good = [example_sample(i, run_id) for i in range(50)]
    poison = {b"p-bytes": b"garbage", b"p-type": None, b"p-raise": None}
    with RecordProducer(kafka) as producer:
        for record in good[:25]:
            producer.send(source, record)
        producer.send_bytes(source, b"p-bytes", poison[b"p-bytes"])
        producer.send_bytes(source, b"p-null", None)
        producer.send(source, example(GenerationJob, 0, run_id))  # the step refuses jobs below
        for record in good[25:]:
            producer.send(source, record)

    def picky(record):
        if isinstance(record, GenerationJob):
            raise ValueError(f"no jobs here: {record.job_id}")
        return passthrough(record)

    runner = Runner(Step("picky", (source,), picky, sink=sink), kafka=kafka, config=FAST, group=f"g-{run_id}", run_id=run_id)
    stats = runner.run(max_idle_s=3)
    assert stats.consumed == 53
    assert stats.produced[sink] == 50
    relayed = _read(kafka, sink)
    assert sorted(r.record.sample_id for r in relayed) == sorted(s.sample_id for s in good)
    letters = [r.record for r in _read(kafka, DLQ_TOPIC, run_id) if r.record.topic == source]
    assert len(letters) == 3
    by_key = {letter.original_key: letter for letter in letters}
    assert by_key[b"p-bytes"].original_value == b"garbage" and by_key[b"p-bytes"].error_type == "UndecodableRecord"
    assert "not an Avro single-object record" in by_key[b"p-bytes"].error
    assert by_key[b"p-null"].original_value is None and "no value" in by_key[b"p-null"].error
    assert {letter.step_id for letter in letters} == {"picky"}
    job = next(letter for letter in letters if letter.error_type == "ValueError")
    assert job.error_type == "ValueError" and "no jobs here" in job.error
    assert job.original_value and job.offset >= 0
    assert all(isinstance(letter, DeadLetter) for letter in letters)


def _committed(kafka: KafkaConfig, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer(kafka.librdkafka(**{"group.id": group}))
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def _runner_process(kafka: KafkaConfig, source: str, sink: str, group: str, workers: int = 1,
                    metrics_port: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "SDG_RUNNER__BATCH_SIZE": "20", "SDG_RUNNER__SESSION_TIMEOUT_MS": "6000",
           "SDG_RUNNER__HEARTBEAT_INTERVAL_MS": "500", **({"SDG_METRICS__PORT": str(metrics_port)} if metrics_port else {})}
    return subprocess.Popen(sdg_command("run", "passthrough", "--source", source, "--sink", sink, "--group", group,
                                        "--workers", str(workers)),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _members(kafka: KafkaConfig, group: str) -> list[int]:
    """Partitions per member of ``group``."""
    client = AdminClient(kafka.librdkafka())  # keep a reference: a collected client never resolves its futures
    try:
        description = client.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except KafkaException:  # the group coordinator may still be loading: ask again
        return []
    return [len(m.assignment.topic_partitions) for m in description.members]


def _scrape(port: int) -> dict[str, float]:
    """A processor's /metrics: each sample's value summed over its labels, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_group_survives_a_kill_9_without_losing_records(kafka: KafkaConfig, run_id: str, fresh_topic) -> None:
    source, sink = fresh_topic(6), fresh_topic()
    group = f"g-{run_id}"
    total = 3000
    workers = [_runner_process(kafka, source, sink, group) for _ in range(2)]
    try:
        _wait(lambda: sorted(_members(kafka, group)) == [3, 3], 60, "two members sharing six partitions")
        with RecordProducer(kafka) as producer:
            for i in range(total // 3):
                producer.send(source, example_sample(i, run_id))
        _wait(lambda: _committed(kafka, group, source, 6) > 0, 30, "a first commit")
        victim, survivor = workers
        with RecordProducer(kafka) as producer:
            for i in range(total // 3, total):
                producer.send(source, example_sample(i, run_id))
                if i == total // 2:
                    victim.send_signal(signal.SIGKILL)  # mid-stream, no goodbye to the group
        victim.wait(10)
        _wait(lambda: _members(kafka, group) == [6], 60, "the survivor to take all six partitions")
        _wait(lambda: _committed(kafka, group, source, 6) == total, 60, "every record committed")
        assert survivor.poll() is None
        ids = [r.record.sample_id for r in _read(kafka, sink)]
        assert set(ids) == {f"{run_id}-s{i:06d}" for i in range(total)}  # nothing lost
        assert len(ids) >= total  # at-least-once: the killed member's uncommitted batch may repeat
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)


def test_workers_share_the_partitions_of_one_group_and_stop_together(kafka: KafkaConfig, run_id: str,
                                                                     fresh_topic) -> None:
    """``sdg run --workers 2``: two processes in one group, each with half the partitions; SIGTERM stops both.
    Each serves its Prometheus metrics on a port of its own, and the counters follow the records."""
    source, sink = fresh_topic(6), fresh_topic()
    group = f"g-{run_id}"
    port = free_port_block(2)  # a metrics port each: both must be free
    runner = _runner_process(kafka, source, sink, group, workers=2, metrics_port=port)

    def total(name: str) -> float:
        return sum(_scrape(p).get(name, 0.0) for p in (port, port + 1))

    try:
        _wait(lambda: sorted(_members(kafka, group)) == [3, 3] or runner.poll() is not None, 60,
              "two members sharing six partitions")
        assert runner.poll() is None, runner.communicate(timeout=10)[0]  # (a worker that failed to start says why)
        assert total("sdg_records_in_total") == 0
        with RecordProducer(kafka) as producer:
            for i in range(600):
                producer.send(source, example_sample(i, run_id))
        _wait(lambda: _committed(kafka, group, source, 6) == 600, 60, "every record committed")
        assert total("sdg_records_in_total") == total("sdg_records_out_total") == 600
        assert total("sdg_batch_seconds_count") >= 2 and total("sdg_consumer_lag") == 0
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
        assert runner.returncode == 0, output
        assert output.count("passthrough: ") == 2, output  # each worker reports what it did
        assert {r.record.sample_id for r in _read(kafka, sink)} == {f"{run_id}-s{i:06d}" for i in range(600)}
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.wait(10)


def test_sigterm_finishes_the_batch_commits_and_exits_0(kafka: KafkaConfig, run_id: str, fresh_topic) -> None:
    source, sink = fresh_topic(2), fresh_topic()
    group = f"g-{run_id}"
    with RecordProducer(kafka) as producer:
        for i in range(500):
            producer.send(source, example_sample(i, run_id))
    worker = _runner_process(kafka, source, sink, group)
    _wait(lambda: _committed(kafka, group, source, 2) > 0, 60, "the runner to start committing")
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    committed = _committed(kafka, group, source, 2)
    relayed = {r.record.sample_id for r in _read(kafka, sink)}
    assert len(relayed) == committed > 0  # exactly what was committed was relayed: the batch was finished
    assert "passthrough:" in output


def test_subscribe_cli_prints_json(kafka: KafkaConfig, run_id: str) -> None:
    with RecordProducer(kafka) as producer:
        for i in range(5):
            producer.send("sdg.alerts", example(RECORD_TYPES["ThermalAlert"], i, run_id))
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    import json

    result = subprocess.run(
        sdg_command("subscribe", "sdg.alerts", "--from-beginning", "--json", "--idle-timeout", "3"),
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    mine = [line for line in lines if line["value"]["run_id"] == run_id]
    assert len(mine) == 5 and {line["type"] for line in mine} == {"ThermalAlert"}


def test_subscribe_with_a_group_resumes_after_what_it_handed_over(kafka: KafkaConfig, run_id: str, fresh_topic) -> None:
    source = fresh_topic(1)
    with RecordProducer(kafka) as producer:
        for i in range(10):
            producer.send(source, example_sample(i, run_id))
    group = f"g-{run_id}"
    first = [r.record.seed for r in subscribe(source, kafka=kafka, group=group, from_beginning=True, limit=4)
             if isinstance(r.record, GeneratedSample)]
    rest = [r.record.seed for r in subscribe(source, kafka=kafka, group=group, from_beginning=True, idle_timeout_s=3)
            if isinstance(r.record, GeneratedSample)]
    assert first == [0, 1, 2, 3]
    assert rest[0] in (3, 4) and rest[-1] == 9  # at-least-once: the 4th may come again, nothing is skipped


def test_unknown_processor_and_topic_fail_at_start(kafka: KafkaConfig) -> None:
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    bad_topic = subprocess.run(sdg_command("run", "passthrough", "--source", "sdg.raw", "--sink", "sdg.dlq"),
                               env=env, capture_output=True, text=True, timeout=60)
    assert bad_topic.returncode == 2 and "sdg.samples.raw" in bad_topic.stdout
    bad_processor = subprocess.run(sdg_command("run", "labeller", "--source", "sdg.samples.raw", "--sink", "sdg.dlq"),
                                   env=env, capture_output=True, text=True, timeout=60)
    assert bad_processor.returncode == 2 and "'passthrough', 'generate'" in bad_processor.stdout + bad_processor.stderr


def test_runner_thread_stops_on_request(kafka: KafkaConfig, run_id: str, fresh_topic) -> None:
    source, sink = fresh_topic(1), fresh_topic(1)
    runner = Runner(Step("p", (source,), passthrough, sink=sink), kafka=kafka, config=FAST, group=f"g-{run_id}", run_id=run_id)
    thread = threading.Thread(target=runner.run)
    thread.start()
    time.sleep(1)
    runner.stop()
    thread.join(15)
    assert not thread.is_alive()


BROKEN_MODEL = """
import sys
from streams.config import KafkaConfig, RunnerConfig
from streams.runtime import Runner, Step

def label(batch):
    raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory")

source, sink, group, run_id, servers = sys.argv[1:]
step = Step("label", (source,), label, kind="batch_map", sink=sink)
Runner(step, kafka=KafkaConfig(bootstrap_servers=servers), config=RunnerConfig(), group=group,
       run_id=run_id).run(max_idle_s=20)
"""


def test_a_failing_model_exits_non_zero_and_commits_and_dead_letters_nothing(kafka: KafkaConfig, run_id: str,
                                                                              fresh_topic) -> None:
    """A model that raises in a batch_map step is not bad data: the process stops with a non-zero exit, and
    neither an offset nor a dead letter is committed for the records it could not take."""
    import sys

    source, sink, group = fresh_topic(), fresh_topic(), f"g-{run_id}"
    with RecordProducer(kafka) as producer:
        for i in range(20):
            producer.send(source, example_sample(i, run_id))
    done = subprocess.run([sys.executable, "-c", BROKEN_MODEL, source, sink, group, run_id, kafka.bootstrap_servers],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "out of memory" in done.stderr
    assert _committed(kafka, group, source, 6) == 0
    assert _read(kafka, sink) == []
    assert [r for r in _read(kafka, DLQ_TOPIC, run_id)] == []
