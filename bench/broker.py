"""Benchmark: the processor runner against a raw confluent-kafka loop, measured in the same run.

For 1 KiB and 16 KiB records (100,000 and 10,000 of them) it drains the same pre-filled topic three ways, each
with a fresh consumer group, the same batching and the same checkpoints (flush, then commit, every second), each
timed from its first record to its last checkpoint done:

- raw relay: consume → produce the same bytes, flush and commit every second (the librdkafka floor);
- raw codec loop: the same, decoding and re-encoding each record by hand with the Avro codec;
- runner: ``streams.runtime.Runner`` with the pass-through step (checked column-wise by the native reader, the
  records that pass forwarded as they came).

After a warm-up round (not counted), nine rounds interleave the three; a ratio is the median over rounds of each
round's own ratio (the machine's drift hits both sides of a round alike). The broker's log lives on a tmpfs where
there is one (disk writeback stalled random rounds).

Then it measures end-to-end latency (produce → runner → sink consumer) at a fixed rate below
saturation. Writes ``bench/results/broker.json``.

Usage: ``python bench/broker.py [--quick]`` (starts its own embedded broker on free ports).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.broker import BrokerConfig, EmbeddedBroker  # noqa: E402
from processors.passthrough import passthrough  # noqa: E402
from schemas.codec import RecordCodec  # noqa: E402
from schemas.examples import example_sample  # noqa: E402
from streams import admin  # noqa: E402
from streams.catalog import TopicSpec  # noqa: E402
from streams.config import KafkaConfig, RunnerConfig, TopicConfig  # noqa: E402
from streams.producer import RecordProducer  # noqa: E402
from streams.runtime import Runner, Step  # noqa: E402

BATCH = 1000
ROUNDS = 9
CHECKPOINT_S = RunnerConfig().commit_interval_s
FETCH_WAIT_MS = 10  # both consumers' long-poll wait
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_topic(kafka: KafkaConfig, partitions: int = 6) -> str:
    name = f"sdg.replay.bench{uuid.uuid4().hex[:10]}"
    admin.create_topics(kafka, TopicConfig(), [TopicSpec(name, "sample_id", None, partitions, "bench", {})])
    return name


def prefill(kafka: KafkaConfig, topic: str, n: int, payload: int) -> int:
    codec = RecordCodec()
    with RecordProducer(kafka, codec=codec, linger_ms=20) as producer:
        for i in range(n):
            producer.send(topic, example_sample(i, "bench", payload_bytes=payload))
    return len(codec.encode(example_sample(0, "bench", payload_bytes=payload)))


def raw_loop(kafka: KafkaConfig, source: str, sink: str, n: int, codec: RecordCodec | None) -> float:
    """Records/s of a hand-written consume → (decode, encode) → produce → commit loop."""
    consumer = Consumer(kafka.librdkafka(**{"group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                            "auto.offset.reset": "earliest", "fetch.wait.max.ms": FETCH_WAIT_MS}))
    producer = Producer(kafka.librdkafka(**{"enable.idempotence": True, "linger.ms": 5, "acks": "all"}))
    consumer.subscribe([source])
    done = 0
    start: float | None = None
    last_checkpoint = time.perf_counter()
    while done < n:
        first = consumer.poll(0.1)  # the runner's batching: one record, then what is already fetched
        if first is None:
            continue
        start = start or time.perf_counter()
        messages = [first, *consumer.consume(BATCH - 1, 0)]
        for m in messages:
            value = m.value()
            if codec is not None:
                value = codec.encode(codec.decode(value))
            producer.produce(sink, value=value, key=m.key())
            producer.poll(0)
        done += len(messages)
        if time.perf_counter() - last_checkpoint >= CHECKPOINT_S or done >= n:  # the runner's checkpoints
            producer.flush()
            consumer.commit(asynchronous=False)
            last_checkpoint = time.perf_counter()
    assert start is not None
    elapsed = time.perf_counter() - start
    consumer.close()
    producer.close()
    return done / elapsed


def runner_loop(kafka: KafkaConfig, source: str, sink: str, n: int) -> float:
    """Records/s of the runner, as the raw loops are timed: from its first record to its last checkpoint done."""
    runner = Runner(Step("bench", (source,), passthrough, sink=sink), kafka=kafka,
                    config=RunnerConfig(batch_size=BATCH, fetch_wait_max_ms=FETCH_WAIT_MS), group=f"runner-{uuid.uuid4().hex}",
                    run_id="bench")
    runner.on_batch = lambda messages, seconds: runner.stop() if runner.stats.consumed >= n else None
    stats = runner.run(max_idle_s=10.0)  # stops once the topic is drained, with its final checkpoint
    assert stats.consumed == n and stats.first_batch_s is not None and stats.stopped_s is not None, stats
    return n / (stats.stopped_s - stats.first_batch_s)


def latency(kafka: KafkaConfig, rate: int, seconds: float, payload: int) -> list[float]:
    """End-to-end milliseconds from produce to a sink consumer, through a runner process (`sdg run`), at ``rate``."""
    source, sink = new_topic(kafka), new_topic(kafka)
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_RUNNER__LINGER_MS": "0"}
    runner = subprocess.Popen([sys.executable, "-m", "sdg", "run", "passthrough", "--source", source, "--sink", sink,
                               "--group", f"lat-{uuid.uuid4().hex}"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    codec = RecordCodec()
    sink_consumer = Consumer(kafka.librdkafka(**{"group.id": f"sink-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                                                 "fetch.wait.max.ms": 100}))
    sink_consumer.subscribe([sink])
    producer = Producer(kafka.librdkafka(**{"linger.ms": 0, "acks": "all"}))
    warmup = [codec.encode(example_sample(i, "warmup", payload_bytes=payload)) for i in range(rate)]
    for value in warmup:  # a second at the rate, until the runner and the sink consumer are both in place and warm
        time.sleep(1 / rate)
        producer.produce(source, value=value, key=b"warmup")
        producer.poll(0)
    producer.flush()
    seen_warmup = 0
    while seen_warmup < len(warmup):
        message = sink_consumer.poll(0.1)
        seen_warmup += message is not None and message.error() is None
    records = [codec.encode(example_sample(i, "bench", payload_bytes=payload)) for i in range(int(rate * seconds))]
    sent: list[float] = []
    latencies: list[float] = []

    def drain() -> None:
        deadline = None
        while len(latencies) < len(records):
            first = sink_consumer.poll(0.05)
            for m in [first, *sink_consumer.consume(BATCH - 1, 0)] if first is not None else []:
                index = int((m.key() or b"").rpartition(b"-s")[2])  # the runner keys records by sample_id
                latencies.append((time.perf_counter() - sent[index]) * 1000)
            if len(sent) == len(records):
                deadline = deadline or time.perf_counter() + 30
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {len(latencies)} of {len(records)} records came through")

    thread = threading.Thread(target=drain)
    thread.start()
    start = time.perf_counter()
    for i, value in enumerate(records):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent.append(time.perf_counter())
        producer.produce(source, value=value, key=str(i).encode())
        producer.poll(0)
    producer.flush()
    thread.join()
    runner.terminate()
    runner.wait(30)
    sink_consumer.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records (a smoke run)")
    args = parser.parse_args()
    # the broker's log in memory where there is a tmpfs: disk writeback stalled random rounds of all three loops
    state = Path(tempfile.mkdtemp(prefix="sdg-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    broker = EmbeddedBroker(BrokerConfig(port=free_port(), controller_port=free_port(), security="plaintext",
                                         jars_dir=ROOT / ".sdg" / "kafka" / "jars"), state)
    with console.status("starting the embedded broker"):
        broker.start()
    kafka = broker.kafka
    results: dict[str, object] = {"machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
                                   "batch_size": BATCH, "rounds": ROUNDS,
                                   "statistic": "rates: median of rounds; ratios: median of each round's own ratio"}
    table = Table("record", "raw relay rec/s", "raw codec loop rec/s", "runner rec/s", "runner / raw", "runner / codec loop")
    try:
        for label, payload, n in (("1k", 900, 100_000), ("16k", 16_200, 10_000)):
            n = n // 5 if args.quick else n
            source = new_topic(kafka)
            with console.status(f"pre-filling {n} records of ~{label}B"):
                size = prefill(kafka, source, n, payload)
            runs: dict[str, list[float]] = {"raw": [], "codec": [], "runner": []}
            with console.status(f"{ROUNDS} rounds of raw relay, raw codec loop and runner, {label}B"):
                raw_loop(kafka, source, new_topic(kafka), n, None)  # a round to warm up the broker and the clients
                runner_loop(kafka, source, new_topic(kafka), n)
                for _ in range(ROUNDS):  # interleaved, so drift in the machine hits all three alike
                    runs["raw"].append(raw_loop(kafka, source, new_topic(kafka), n, None))
                    runs["codec"].append(raw_loop(kafka, source, new_topic(kafka), n, RecordCodec()))
                    runs["runner"].append(runner_loop(kafka, source, new_topic(kafka), n))
            raw, codec_loop, runner = (statistics.median(runs[k]) for k in ("raw", "codec", "runner"))
            by_round = [r / w for r, w in zip(runs["runner"], runs["raw"])]  # paired: a round's drift hits both
            vs_raw, vs_codec = (statistics.median(by_round),
                                statistics.median(r / c for r, c in zip(runs["runner"], runs["codec"])))
            results.update({
                f"record_{label}_bytes": size,
                f"raw_relay_{label}_records_per_s": round(raw),
                f"raw_codec_loop_{label}_records_per_s": round(codec_loop),
                f"runner_{label}_records_per_s": round(runner),
                f"runner_vs_raw_{label}_ratio": round(vs_raw, 3),
                f"runner_vs_codec_loop_{label}_ratio": round(vs_codec, 3),
                f"runner_vs_raw_{label}_ratios_by_round": [round(r, 3) for r in by_round],
            })
            table.add_row(f"{label} ({size} B)", f"{raw:,.0f}", f"{codec_loop:,.0f}", f"{runner:,.0f}",
                          f"{vs_raw:.2f}", f"{vs_codec:.2f}")
        rate, seconds = 500, (4 if args.quick else 10)
        with console.status(f"latency at {rate} records/s for {seconds}s"):
            lat = sorted(latency(kafka, rate, seconds, 900))
        p50 = statistics.quantiles(lat, n=100)[49]
        p99 = statistics.quantiles(lat, n=100)[98]
        results.update({"latency_rate_records_per_s": rate, "latency_records": len(lat),
                        "e2e_1k_p50_ms": round(p50, 2), "e2e_1k_p99_ms": round(p99, 2)})
    finally:
        broker.stop()
        shutil.rmtree(state, ignore_errors=True)  # the broker's logs: gigabytes after a run
    console.print(table)
    console.print(f"end-to-end latency at {rate} rec/s (1 KiB): p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(lat)} records)")
    out = ROOT / "bench" / "results" / "broker.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
