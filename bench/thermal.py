"""Benchmark: the thermal processor (``sdg run thermal``, a stateful step) against a raw confluent-kafka relay.

Both read ``sdg.telemetry`` on the same broker in the same run:

- raw relay (the floor): consume → decode → produce a control record for every reading that asks
  for one (no rules, no state, no table);
- thermal processor: the rules, the control law and per-node state in a changelog-backed store, committed with
  its outputs in one transaction.

Latency: readings at 1,000/s across 32 nodes; every 0.1 s one node's reading moves its coolant so
the allowed power changes; the latency is from that reading's produce to its control record
arriving at a consumer. Throughput: 40,000 readings produced at once; the time until the last
node's last reading has been acted on. Writes ``bench/results/thermal.json``.

Usage: ``python bench/thermal.py [--quick]`` (starts its own embedded broker on free ports).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from bench.broker import free_port, new_topic  # noqa: E402
from infra.broker import BrokerConfig, EmbeddedBroker  # noqa: E402
from schemas.codec import RecordCodec  # noqa: E402
from schemas.records import Reading, Throttle  # noqa: E402
from streams import admin  # noqa: E402
from streams.config import KafkaConfig, TopicConfig  # noqa: E402

NODES = 32
RATE = 1000
WARMUP_S = 10.0
console = Console()
codec = RecordCodec()


def reading(node: int | str, coolant: float, *, prefix: str = "bench") -> bytes:
    name = node if isinstance(node, str) else f"{prefix}-{node:02d}"
    die = -130.0 + random.gauss(0, 0.1)  # a live (noisy) die sensor
    return codec.encode(Reading(run_id="bench", node_id=name, source="plant", ts_ms=int(time.time() * 1000),
                                die_c=die, coolant_c=coolant, power_w=700.0, bus_v=400.0, current_a=1.75,
                                flow_lpm=40.0, pue=1.07))


def marker(k: int, nth: int) -> float:
    """A coolant temperature that asks for a cap: a node's ``nth`` event alternates between two caps more than
    5% apart, the decimal (``k``: the event's global count) tells the events apart."""
    return -165.0 + (nth % 2) * 8.0 + (k % 10) * 0.1


class Arrivals:
    """Control records from the processor and the relay, by (topic, node, coolant in the reason)."""

    def __init__(self, kafka: KafkaConfig, topics: list[str]) -> None:
        self.seen: dict[tuple[str, str, str], list[float]] = {}
        self.consumer = Consumer(kafka.librdkafka(**{"group.id": f"arrivals-{uuid.uuid4().hex}",
                                                     "auto.offset.reset": "latest", "fetch.wait.max.ms": 100}))
        self.consumer.subscribe(topics)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            message = self.consumer.poll(0.05)
            if message is None or message.error():
                continue
            at = time.perf_counter()
            record = codec.decode(message.value())
            if isinstance(record, Throttle) and "coolant " in record.reason:
                coolant = record.reason.split("coolant ", 1)[1].split(" ", 1)[0]
                self.seen.setdefault((str(message.topic()), record.node_id, coolant), []).append(at)

    def wait(self, key: tuple[str, str, str], after: float, timeout_s: float = 30) -> float:
        """When the first control record for ``key`` arrived after ``after`` (perf_counter)."""
        deadline = time.monotonic() + timeout_s
        while not (found := [t for t in self.seen.get(key, []) if t >= after]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no control record for {key}")
            time.sleep(0.001)
        return found[0]


def relay(kafka: KafkaConfig, sink: str, stop: threading.Event) -> None:
    """The floor: a reading whose coolant changed since the node's last one and asks for a cap becomes a control
    record (the least state a processor can keep)."""
    consumer = Consumer(kafka.librdkafka(**{"group.id": f"relay-{uuid.uuid4().hex}", "enable.auto.commit": True,
                                            "auto.offset.reset": "latest", "fetch.wait.max.ms": 100}))
    producer = Producer(kafka.librdkafka(**{"linger.ms": 0, "acks": "all"}))
    consumer.subscribe(["sdg.telemetry"])
    last: dict[str, float | None] = {}
    while not stop.is_set():
        for message in consumer.consume(500, 0.001):
            if message.error():
                continue
            record = codec.decode(message.value())
            if not isinstance(record, Reading) or last.get(record.node_id) == record.coolant_c:
                continue
            last[record.node_id] = record.coolant_c
            if record.coolant_c is not None and record.coolant_c > -170:
                throttle = Throttle(run_id="bench", node_id=record.node_id, max_rate_sps=1.0, ttl_s=60,
                                    reason=f"thermal: coolant {record.coolant_c:.1f} °C")
                producer.produce(sink, key=record.node_id.encode(), value=codec.encode(throttle))
        producer.poll(0)
    consumer.close()
    producer.flush()


def latency(kafka: KafkaConfig, arrivals: Arrivals, relay_topic: str, seconds: float,
            rate: int) -> dict[str, list[float]]:
    """Readings at ``rate``/s over ``NODES`` nodes; ten events a second; ms from produce to control record.

    The readings' producer batches for 5 ms, as the platform's producers do: a broker on two cores spends
    a whole core on 1,000 one-record produce requests a second. Events fall on every node in turn (every
    ``rate // 10 + 1``-th reading: co-prime with 32 nodes), so a node's events are ~3 s apart, longer than its
    coolant trend window: an event closer to the last one meets the control law's hold (a cap is not lifted at
    once) and would measure the law, not the pipeline.
    """
    producer = Producer(kafka.librdkafka(**{"linger.ms": 5, "acks": "all"}))
    coolant = {n: -178.0 for n in range(NODES)}
    nth = dict.fromkeys(range(NODES), 0)
    events: list[tuple[float, str, str]] = []
    start = time.perf_counter()
    sent = k = 0
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * rate)
        while sent < due:
            node = sent % NODES
            if sent % (rate // 10 + 1) == 0:  # ten events a second, each node in turn
                coolant[node] = marker(k, nth[node])
                k, nth[node] = k + 1, nth[node] + 1
                events.append((time.perf_counter(), f"bench-{node:02d}", f"{coolant[node]:.1f}"))
            producer.produce("sdg.telemetry", key=f"bench-{node:02d}".encode(), value=reading(node, coolant[node]))
            producer.poll(0)
            sent += 1
        time.sleep(0.0005)
    producer.flush()
    out: dict[str, list[float]] = {"thermal": [], "relay": []}
    warm = start + WARMUP_S  # the first seconds warm the nodes' state and the processor's clients
    for sent_at, name, value in [e for e in events if e[0] >= warm]:
        out["thermal"].append((arrivals.wait(("sdg.control", name, value), sent_at) - sent_at) * 1000)
        out["relay"].append((arrivals.wait((relay_topic, name, value), sent_at) - sent_at) * 1000)
    return out


def throughput(kafka: KafkaConfig, arrivals: Arrivals, relay_topic: str, n: int) -> dict[str, float]:
    """Readings/s: ``n`` readings produced at once; the clock stops when the last node's last one is acted on."""
    producer = Producer(kafka.librdkafka(**{"linger.ms": 20, "acks": "all"}))
    start = time.perf_counter()
    for i in range(n):
        node = i % NODES
        value = -178.0 if i < n - NODES else -158.8  # each node's last reading asks for a cap
        producer.produce("sdg.telemetry", key=f"tp-{node:02d}".encode(), value=reading(node, value, prefix="tp"))
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush()
    rates = {}
    for name, topic in (("thermal", "sdg.control"), ("relay", relay_topic)):
        last = max(arrivals.wait((topic, f"tp-{node:02d}", "-158.8"), start, 300) for node in range(NODES))
        rates[name] = n / (last - start)
    return rates


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rates", default=f"{RATE // 2},{RATE}", help="Readings/s of the latency phases.")
    args = parser.parse_args()
    seconds, n = (25, 20_000) if args.quick else (60, 40_000)
    state = Path(tempfile.mkdtemp())
    broker = EmbeddedBroker(BrokerConfig(port=free_port(), controller_port=free_port(), security="plaintext",
                                         jars_dir=ROOT / ".sdg" / "kafka" / "jars"), state)
    with console.status("starting the embedded broker"):
        broker.start()
    kafka = broker.kafka
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(state),
           "SDG_THERMAL__CAP_TTL_S": "3600", "SDG_THERMAL__COOLANT_WINDOW_S": "1"}
    processor = None
    stop = threading.Event()
    try:
        admin.create_topics(kafka, TopicConfig())
        relay_topic = new_topic(kafka)
        group = f"bench-thermal-{uuid.uuid4().hex[:6]}"
        admin.start_group_at_end(kafka, group, ["sdg.telemetry"])
        processor = subprocess.Popen([sys.executable, "-m", "sdg", "run", "thermal", "--group", group], cwd=ROOT,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        arrivals = Arrivals(kafka, ["sdg.control", relay_topic])
        threading.Thread(target=relay, args=(kafka, relay_topic, stop), daemon=True).start()
        with console.status("waiting for the thermal processor"):
            probe = Producer(kafka.librdkafka())
            for attempt in range(600):
                probe.produce("sdg.telemetry", key=b"bench-probe", value=reading("bench-probe", marker(0, attempt)))
                probe.flush()
                time.sleep(0.2)
                if any(k[1] == "bench-probe" and k[0] == "sdg.control" for k in list(arrivals.seen)):
                    break
        lat = {}
        for rate in [int(r) for r in args.rates.split(",")]:
            with console.status(f"latency: {rate} readings/s over {NODES} nodes for {seconds} s"):
                lat[rate] = latency(kafka, arrivals, relay_topic, seconds, rate)
        with console.status(f"throughput: {n:,} readings at once"):
            rates = throughput(kafka, arrivals, relay_topic, n)
    finally:
        stop.set()
        if processor is not None:
            processor.terminate()
            processor.wait(30)
        broker.stop()
    results: dict[str, object] = {"nodes": NODES}
    table = Table("path", "readings/s", "p50 ms", "p99 ms", title="telemetry → control latency")
    for rate, by_path in lat.items():
        for name in ("relay", "thermal"):
            p50, p99 = percentile(by_path[name], 50), percentile(by_path[name], 99)
            results |= {f"{name}_{rate}_p50_ms": round(p50, 2), f"{name}_{rate}_p99_ms": round(p99, 2)}
            table.add_row(name, f"{rate:,}", f"{p50:.1f}", f"{p99:.1f}")
        results[f"latency_{rate}_p99_vs_relay_ratio"] = round(percentile(by_path["thermal"], 99) /
                                                             percentile(by_path["relay"], 99), 2)
    results |= {"events_per_rate": len(next(iter(lat.values()))["thermal"]),
                "relay_max_readings_per_s": round(rates["relay"]),
                "thermal_max_readings_per_s": round(rates["thermal"]),
                "throughput_vs_relay_ratio": round(rates["thermal"] / rates["relay"], 3)}
    console.print(table)
    console.print(f"max readings/s: thermal {rates['thermal']:,.0f}, raw relay {rates['relay']:,.0f} "
                  f"({results['throughput_vs_relay_ratio']:.2f}×); target p99 ≤ 50 ms at {RATE:,} readings/s")
    out = ROOT / "bench" / "results" / "thermal.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
