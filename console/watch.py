"""What the console knows of the pipeline: one consumer (no group, it commits nothing) following its topics.

The review queue and the slow topics (quality windows, alerts, caps, dead letters, human answers) are read from
their start; the busy ones (samples, decisions, telemetry) from ``window_s`` ago. Consumer lag of every
processor's group is asked of the brokers every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

from console.queue import ReviewQueue
from processors.topology import SPECS
from schemas.codec import RecordCodec
from schemas.records import (
    DeadLetter,
    GeneratedSample,
    HumanLabel,
    QualityWindow,
    Reading,
    Record,
    SampleDecision,
    ThermalAlert,
    Throttle,
)
from streams.config import KafkaConfig

log = logging.getLogger(__name__)

FROM_START = ("sdg.samples.review", "sdg.labels.human", "sdg.quality", "sdg.alerts", "sdg.control", "sdg.dlq")
RECENT = ("sdg.samples.raw", "sdg.samples.accepted", "sdg.samples.rejected", "sdg.telemetry")
RATE_S = 10  # generation rates are counted over the last 10 seconds


class Watcher:
    """The pipeline as the pages show it; ``take`` folds one record in (the consumer thread, or a test)."""

    def __init__(self, kafka: KafkaConfig | None = None, *, window_s: float = 600.0) -> None:
        self.kafka, self.window_s = kafka, window_s
        self.lock = threading.Lock()
        self.queue = ReviewQueue()
        self.seen: Counter[str] = Counter()
        self.generated: Counter[str] = Counter()
        self.decided: dict[str, Counter[str]] = defaultdict(Counter)
        self.recent: dict[str, deque[float]] = defaultdict(deque)  # generator → arrival times of its samples
        self.windows: dict[tuple[str, int | None], QualityWindow] = {}
        self.nodes: dict[str, dict[str, Any]] = defaultdict(dict)
        self.alerts: deque[ThermalAlert] = deque(maxlen=20)
        self.dead_letters: Counter[tuple[str, str]] = Counter()
        self.human: Counter[str] = Counter()  # reviewer → answers
        self.lag: dict[str, int] = {}  # processor group → records behind
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._codec = RecordCodec()

    # --- folding records in ---------------------------------------------------------------------------------

    def take(self, topic: str, record: Record) -> None:
        with self.lock:
            self.seen[topic] += 1
            if isinstance(record, SampleDecision):
                if record.label_source == "human":
                    self.queue.answer(record.sample.sample_id)
                if topic == "sdg.samples.review":
                    self.queue.queued(record)
                self.decided[record.sample.generator][record.gate.decision] += 1
            elif isinstance(record, GeneratedSample):
                self.generated[record.generator] += 1
                self.recent[record.generator].append(time.time())
            elif isinstance(record, HumanLabel):
                self.queue.answer(record.sample_id)
                self.human[record.reviewer] += 1
            elif isinstance(record, QualityWindow):
                self.windows[(record.generator + (" scenes" if record.scenes else ""), record.class_label)] = record
            elif isinstance(record, Reading) and record.source == "plant":
                self.nodes[record.node_id].update(die_c=record.die_c, coolant_c=record.coolant_c,
                                                  power_w=record.power_w, ts_ms=record.ts_ms)
            elif isinstance(record, ThermalAlert):
                self.alerts.append(record)
            elif isinstance(record, Throttle):
                self.nodes[record.node_id].update(cap_sps=record.max_rate_sps, paused=record.paused,
                                                  cap_reason=record.reason)
            elif isinstance(record, DeadLetter):
                self.dead_letters[(record.step_id, record.error_type)] += 1

    def snapshot(self) -> dict[str, Any]:
        """The live page's data (JSON)."""
        now = time.time()
        with self.lock:
            rates = {}
            for generator, times in self.recent.items():
                while times and times[0] < now - RATE_S:
                    times.popleft()
                rates[generator] = len(times) / RATE_S
            generators = {g: {"generated": self.generated[g], "rate_sps": rates.get(g, 0.0),
                              **{d: self.decided[g][d] for d in ("accepted", "review", "rejected")},
                              "acceptance": (self.decided[g]["accepted"] / max(1, sum(self.decided[g].values())))}
                          for g in sorted(set(self.generated) | set(self.decided))}
            windows = [{"generator": g, "window": w.window_id.split(":", 1)[-1], "n": w.metrics.n,
                        "fid": w.metrics.fid, "fid_baseline": w.baseline.fid if w.baseline else None,
                        "recall": w.metrics.recall, "recall_baseline": w.baseline.recall if w.baseline else None,
                        "gate": w.gate_state} for (g, c), w in sorted(self.windows.items(), key=lambda kv: kv[0][0])
                       if c is None]
            return {"time": now, "generators": generators, "windows": windows,
                    "nodes": {n: dict(v) for n, v in sorted(self.nodes.items())},
                    "alerts": [{"node": a.node_id, "rule": a.rule, "severity": a.severity, "message": a.message,
                                "cleared": a.cleared} for a in reversed(self.alerts)],
                    "dead_letters": sum(self.dead_letters.values()),
                    "dead_letters_by": [{"step": s, "error": e, "n": n} for (s, e), n in self.dead_letters.most_common()],
                    "review_waiting": len(self.queue.waiting), "human_answers": sum(self.human.values()),
                    "lag": dict(self.lag)}

    # --- the consumer ---------------------------------------------------------------------------------------

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, name="console-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        assert self.kafka is not None
        groups: dict[str, Any] = {}  # processor group → a consumer that only reads its committed offsets
        consumer = Consumer(self.kafka.librdkafka(**{"group.id": "sdg-console", "enable.auto.commit": False,
                                                     "isolation.level": "read_committed"}))
        try:
            topics = consumer.list_topics(timeout=10).topics
            since = int((time.time() - self.window_s) * 1000)
            start = [TopicPartition(t, p, OFFSET_BEGINNING) for t in FROM_START if t in topics for p in topics[t].partitions]
            recent = [TopicPartition(t, p, since) for t in RECENT if t in topics for p in topics[t].partitions]
            found = consumer.offsets_for_times(recent, timeout=10) if recent else []
            consumer.assign(start + [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else -1)
                                     for tp in found])  # -1: the end, nothing that recent
            last_lag = 0.0
            while not self._stop.is_set():
                for message in consumer.consume(500, 0.2):
                    if message.error() is not None:
                        continue
                    try:
                        record = self._codec.decode(message.value())
                    except Exception:  # the pipeline dead-letters what it cannot read; the console skips it
                        continue
                    self.take(message.topic() or "", record)
                if time.monotonic() - last_lag > 5:
                    self._measure_lag(consumer, groups, topics)
                    last_lag = time.monotonic()
        except Exception:
            log.exception("the console's consumer stopped")
        finally:
            for member in [consumer, *groups.values()]:
                member.close()

    def _measure_lag(self, consumer: Any, groups: dict[str, Any], topics: Any) -> None:
        """Each processor group's committed offsets (asked with a consumer of that group that never joins it)
        against the ends of its source partitions."""
        from confluent_kafka import Consumer, TopicPartition

        assert self.kafka is not None
        lag: dict[str, int] = {}
        for spec in SPECS:
            partitions = [TopicPartition(t, p) for t in spec.sources if t in topics for p in topics[t].partitions]
            if not partitions:
                continue
            group = f"sdg-{spec.name}"
            if group not in groups:
                groups[group] = Consumer(self.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
            try:
                committed = [tp for tp in groups[group].committed(partitions, timeout=5) if tp.offset >= 0]
                if committed:
                    lag[group] = sum(max(0, consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                                           timeout=5)[1] - tp.offset)
                                     for tp in committed)
            except Exception as e:  # the brokers are busy or gone: no lag this time
                log.debug("lag of %s: %s", group, e)
        with self.lock:
            self.lag = lag
