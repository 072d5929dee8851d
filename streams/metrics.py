"""Prometheus metrics of a running processor, read from its runner when scraped (nothing on the hot path).

``serve(runner, port)`` exposes ``/metrics`` on its own thread:

- ``sdg_records_in_total{step,topic}`` / ``sdg_records_out_total{step,topic}``: records consumed and produced;
- ``sdg_dead_letters_total{step,error}``: records sent to ``sdg.dlq``, by error type;
- ``sdg_batch_seconds{step}``: a histogram of the time one consumed batch takes to process;
- ``sdg_consumer_lag{step,topic,partition}``: records between the step's position and the partition's end;
- ``sdg_rate_cap_sps{step,node}`` and ``sdg_paused{step,node}``: a generator's cap in force (+Inf: none);
- whatever the processor adds (the thermal step: each node's die and coolant temperature and its cap).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streams.runtime import Runner

log = logging.getLogger(__name__)

Extra = Callable[["Runner"], Iterable[Metric]]

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RunnerCollector(Collector):
    """The runner's counters, lag and rate cap, read when scraped."""

    def __init__(self, runner: Runner, consumed: Counter[str], extra: Extra | None = None) -> None:
        self.runner, self.consumed, self.extra = runner, consumed, extra

    def collect(self) -> Iterable[Metric]:
        runner, step = self.runner, self.runner.step.step_id
        stats = runner.stats
        records_in = CounterMetricFamily("sdg_records_in", "Records consumed.", labels=["step", "topic"])
        for topic, n in list(self.consumed.items()):
            records_in.add_metric([step, topic], n)
        records_out = CounterMetricFamily("sdg_records_out", "Records produced.", labels=["step", "topic"])
        for topic, n in list(stats.produced.items()):
            records_out.add_metric([step, topic], n)
        letters = CounterMetricFamily("sdg_dead_letters", "Records sent to sdg.dlq.", labels=["step", "error"])
        for error, n in list(stats.dead_letters.items()):
            letters.add_metric([step, error], n)
        lag = GaugeMetricFamily("sdg_consumer_lag", "Records between the step's position and the partition's end.",
                                labels=["step", "topic", "partition"])
        for (topic, partition), n in list(runner.lag.items()):  # the runner's thread measures it every second
            lag.add_metric([step, topic, str(partition)], n)
        yield from (records_in, records_out, letters, lag)
        cap = runner.rate_cap
        if cap is not None:
            rate = GaugeMetricFamily("sdg_rate_cap_sps", "The rate cap in force (+Inf: none).", labels=["step", "node"])
            paused = GaugeMetricFamily("sdg_paused", "1 while the node's generators are paused.", labels=["step", "node"])
            stopped, limit = cap.current()
            rate.add_metric([step, cap.node_id], math.inf if limit is None else limit)
            paused.add_metric([step, cap.node_id], 1.0 if stopped else 0.0)
            yield from (rate, paused)
        if self.extra is not None:
            yield from self.extra(runner)


def serve(runner: Runner, port: int, *, host: str = "127.0.0.1", extra: Extra | None = None) -> CollectorRegistry:
    """Expose the runner's metrics on ``http://host:port/metrics`` (a daemon thread); its batch timings are
    observed from now on."""
    registry = CollectorRegistry()
    consumed: Counter[str] = Counter()  # per topic: counted here, so a runner without metrics pays nothing
    registry.register(RunnerCollector(runner, consumed, extra))
    batches = Histogram("sdg_batch_seconds", "Time to process one consumed batch.", ["step"], registry=registry,
                        buckets=BATCH_BUCKETS).labels(runner.step.step_id)

    def on_batch(messages: list[Any], seconds: float) -> None:
        consumed.update(m.topic() for m in messages)
        batches.observe(seconds)

    runner.on_batch = on_batch
    start_http_server(port, addr=host, registry=registry)
    log.info("step %s: metrics on http://%s:%d/metrics", runner.step.step_id, host, port)
    return registry


__all__ = ["RunnerCollector", "serve"]
