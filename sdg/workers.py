"""Every processor of ``processors.topology`` wired to its function, settings and runtime options.

``processor(name, settings)`` yields the ``Runner`` that ``sdg run <name>`` runs: one runtime for all of them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from infra.security import ADMIN, principal
from processors.topology import PROCESSORS, ProcessorSpec
from schemas.records import Record
from sdg.settings import Settings
from streams.errors import ConfigError
from streams.runtime import Policy, Runner, Step, data_error, state_topics

log = logging.getLogger(__name__)

Wired = tuple[Step, dict[str, Any]]  # the step and the runner's extra options


def _step(spec: ProcessorSpec, fn: Any, source: str | None, **options: Any) -> Step:
    return Step(spec.name, (source,) if source else spec.sources, fn, kind=spec.kind, **options)


@contextmanager
def _passthrough(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
                 group: str) -> Iterator[Wired]:
    from processors.passthrough import passthrough

    if source is None or sink is None:
        raise ConfigError("passthrough needs --source and --sink")
    yield _step(spec, passthrough, source, sink=sink), {}


@contextmanager
def _generate(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
              group: str) -> Iterator[Wired]:
    """Obeys this node's caps on sdg.control (a listener beside the step)."""
    import torch

    from models.generator import GeneratorError
    from processors.generate import GenerateConfig, generate_encoded
    from streams.throttle import ControlListener, RateCap

    if settings.worker.threads:
        torch.set_num_threads(settings.worker.threads)
    catalog = settings.catalog()
    config = GenerateConfig(node_id=settings.worker.node_id, max_count=settings.worker.max_job_count,
                            image_format=settings.worker.image_format)
    cap = RateCap(settings.worker.node_id)
    listener = ControlListener(settings.kafka_as(principal("generate")), cap).start()

    def on_error(error: BaseException, record: Record | None, step: Step) -> Policy:
        """A job the generators cannot serve (an unknown generator or version, too many samples) is bad data."""
        return "dead_letter" if isinstance(error, GeneratorError) else data_error(error, record, step)

    try:
        step = _step(spec, lambda job: generate_encoded(job, generators=catalog, config=config), source, sink=sink,
                     on_error=on_error)
        yield step, {"rate_cap": cap, "cost": lambda job: job.count}
    finally:
        listener.stop()


@contextmanager
def _label(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
           group: str) -> Iterator[Wired]:
    from processors.label import label

    current = _latest_labeler(settings)
    yield _step(spec, lambda batch: label(batch, labeler=current()), source, sink=sink), {}


def _latest_labeler(settings: Settings, every_s: float = 2.0) -> Callable[[], Any]:
    """The labeler to use now: the configured one, or (by default) the registry's latest, looked up again every
    ``every_s`` so that a labeler retrained from the review queue's answers is picked up without a restart."""
    import time

    labeler = settings.labeler()
    if settings.quality.labeler is not None:
        return lambda: labeler
    latest = settings.registry().root / settings.labeler_kind / "LATEST"
    version, checked = latest.read_text().strip(), time.monotonic()

    def current() -> Any:
        nonlocal labeler, version, checked
        if time.monotonic() - checked >= every_s:
            checked = time.monotonic()
            if (now := latest.read_text().strip()) != version:
                labeler, version = settings.labeler(), now
                log.info("label: labeler %s deployed, labeling with it from now on", version)
        return labeler

    return current


@contextmanager
def _quality(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
             group: str) -> Iterator[Wired]:
    from processors.quality import QualityProcessor

    quality = QualityProcessor(settings.judge(), max_record_bytes=settings.kafka_client.max_record_bytes)
    yield _step(spec, quality.process_many, source, key_by=quality.route, punctuate=quality.tick, batch=True), {}


@contextmanager
def _review(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
            group: str) -> Iterator[Wired]:
    from processors.review import dump, join, load, state_key

    yield _step(spec, join, source, key_by=state_key, load=load, dump=dump), {}


@contextmanager
def _thermal(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
             group: str) -> Iterator[Wired]:
    from processors.thermal import ThermalProcessor, ThermalRules, dump, load

    thermal = ThermalProcessor(ThermalRules(settings.thermal, run_id=settings.run_id))
    # old readings steer nothing: a new group starts at the end; caps and alerts go out at once (at least once)
    yield _step(spec, thermal.process, source, load=load, dump=dump, punctuate=thermal.tick, punctuate_s=0.5,
                start="latest", exactly_once=False), {"metrics": _node_gauges}


def _node_gauges(runner: Runner) -> list[Any]:
    """The thermal step's view of each node, for its /metrics: die and coolant temperature, the cap it sent."""
    from prometheus_client.core import GaugeMetricFamily

    die = GaugeMetricFamily("sdg_die_celsius", "A node's last die temperature.", labels=["node"])
    coolant = GaugeMetricFamily("sdg_coolant_celsius", "A node's last coolant temperature.", labels=["node"])
    cap = GaugeMetricFamily("sdg_node_cap_sps", "The rate cap sent to a node (+Inf: none; 0: paused).", labels=["node"])
    for store in list(runner.stores.values()):
        for node in store.keys():
            state = store.get(node)
            if state is None:
                continue
            if state.last_die is not None:
                die.add_metric([node], state.last_die)
            if state.coolant:
                coolant.add_metric([node], state.coolant[-1][1])
            sent = state.cap
            if sent is not None and sent.paused:
                cap.add_metric([node], 0.0)
            else:
                limit = sent.max_rate_sps if sent is not None else None
                cap.add_metric([node], float("inf") if limit is None else limit)
    return [die, coolant, cap]


@contextmanager
def _plant(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
           group: str) -> Iterator[Wired]:
    from processors.plant import PlantProcessor
    from streams import admin

    admin.start_group_at_end(settings.kafka_client, group, list(spec.sources))  # what happens from now on
    plant = PlantProcessor(settings.plant, run_id=settings.run_id)
    yield _step(spec, plant.take, source, punctuate=plant.tick, punctuate_s=1 / settings.plant.reading_hz,
                start="latest"), {}


@contextmanager
def _lineage(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
             group: str) -> Iterator[Wired]:
    """The Delta sink of every stage, window, reading (downsampled), alert and throttle topic."""
    from processors.lineage import downsampled, rows_of
    from streams.delta_sink import DeltaSink

    fn = downsampled(rows_of, every_s=settings.sink.telemetry_every_s)
    yield _step(spec, DeltaSink(fn=fn, tables=settings.delta_tables(), group=group, config=settings.sink,
                                     anchors=settings.anchors()), None), {}


@contextmanager
def _train(settings: Settings, spec: ProcessorSpec, source: str | None, sink: str | None,
           group: str) -> Iterator[Wired]:
    from rich.console import Console

    from processors.train import TrainSink
    from sdg.training import train_edge_model

    console = Console()

    def train(records: list[Any]) -> None:
        trained = train_edge_model(settings, records, console=console)
        console.print(f"edge {trained.version}: {trained.dataset.samples} samples, int8 accuracy "
                      f"{trained.metrics.int8_accuracy:.1%}, {trained.real_labels} real labels")

    yield _step(spec, TrainSink(train, every=settings.train.every), source, commit=False), {}


WIRING: dict[str, Callable[[Settings, ProcessorSpec, str | None, str | None, str], ContextManager[Wired]]] = {
    "passthrough": _passthrough, "generate": _generate, "label": _label, "quality": _quality,
    "review": _review, "thermal": _thermal, "plant": _plant, "lineage": _lineage, "train": _train,
}
assert set(WIRING) == set(PROCESSORS), "every processor of the topology is wired"


def spec_of(name: str) -> ProcessorSpec:
    """Raises ``ConfigError`` for an unknown processor (the message lists the valid ones)."""
    if name not in PROCESSORS:
        raise ConfigError(f"unknown processor {name!r}; valid: {', '.join(PROCESSORS)}")
    return PROCESSORS[name]


@contextmanager
def processor(name: str, settings: Settings, *, source: str | None = None, sink: str | None = None,
              group: str | None = None) -> Iterator[Runner]:
    """The runner of processor ``name`` (its state topics created first).

    Raises:
        ConfigError: an unknown processor, or a --source/--sink it does not take.
    """
    from streams import admin

    spec = spec_of(name)
    if sink is not None and "sink" not in spec.overrides:
        raise ConfigError(f"{name} routes its outputs by record type through the catalog; it takes no --sink")
    if source is not None and "source" not in spec.overrides:
        raise ConfigError(f"{name} has fixed sources; it takes no --source")
    group = group or f"sdg-{name}"
    with WIRING[name](settings, spec, source, sink, group) as (step, options):
        specs = state_topics(group, step)
        if specs:
            admin.create_topics(settings.kafka_client, settings.topics, specs)
        extra = options.pop("metrics", None)
        user = ADMIN if name == "passthrough" else principal(name)  # a relay's topics are whatever it is given
        runner = Runner(step, kafka=settings.kafka_as(user), config=settings.runner, group=group, run_id=settings.run_id,
                        **options)
        if settings.metrics.port is not None:
            from streams.metrics import serve

            serve(runner, settings.metrics.port, host=settings.metrics.host, extra=extra)
        yield runner


def datasets(name: str, settings: Settings, *, source: str | None,
             sink: str | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (namespace, name) datasets processor ``name`` reads and writes, for its OpenLineage run events."""
    spec = spec_of(name)
    kafka = f"kafka://{settings.kafka_client.bootstrap_servers.split(',')[0]}"
    inputs = [source] if source else [*spec.sources, *spec.side_inputs]
    outputs = [sink] if sink else spec.output_topics()
    tables = f"file://{Path(settings.delta_tables().root).resolve()}"
    written = [*((kafka, t) for t in outputs), *((tables, t) for t in spec.tables)]
    return [(kafka, t) for t in inputs], written
