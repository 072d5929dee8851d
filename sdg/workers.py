"""The stream processors the command line can run, each wired to its topics and runner options."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sdg.settings import Settings
from streams.delta_sink import DeltaSink
from streams.errors import ConfigError
from streams.runner import Runner, Step
from streams.throttle import ControlListener, RateCap

log = logging.getLogger(__name__)


@contextmanager
def _passthrough(settings: Settings, source: str | None, sink: str | None, group: str) -> Iterator[Runner]:
    from processors.passthrough import passthrough

    if source is None or sink is None:
        raise ConfigError("passthrough needs --source and --sink")
    yield Runner(Step("passthrough", source, passthrough, sink), kafka=settings.kafka_client,
                 config=settings.runner, group=group, run_id=settings.run_id)


@contextmanager
def _generate(settings: Settings, source: str | None, sink: str | None, group: str) -> Iterator[Runner]:
    """sdg.requests → sdg.samples.raw (+ load on sdg.telemetry), obeying this node's caps on sdg.control."""
    import torch

    from processors.generate import GenerateConfig, generate, sink_of

    if sink is not None:
        raise ConfigError("generate writes to sdg.samples.raw and sdg.telemetry; it takes no --sink")
    if settings.worker.threads:
        torch.set_num_threads(settings.worker.threads)
    catalog = settings.catalog()
    config = GenerateConfig(node_id=settings.worker.node_id, max_count=settings.worker.max_job_count)
    cap = RateCap(settings.worker.node_id)
    listener = ControlListener(settings.kafka_client, cap).start()
    try:
        step = Step("generate", source or "sdg.requests",
                    lambda job: generate(job, generators=catalog, config=config), sink_of, returns="many")
        yield Runner(step, kafka=settings.kafka_client, config=settings.runner, group=group,
                     run_id=settings.run_id, rate_cap=cap, cost=lambda job: job.count)
    finally:
        listener.stop()


@contextmanager
def _label(settings: Settings, source: str | None, sink: str | None, group: str) -> Iterator[Runner]:
    """sdg.samples.raw → sdg.samples.labeled, a batch at a time through the ONNX labeler."""
    from processors.label import label
    from sdg.labeling import load_labeler

    labeler = load_labeler(settings)
    step = Step("label", source or "sdg.samples.raw", lambda batch: label(batch, labeler=labeler),
                sink or "sdg.samples.labeled", batched=True)
    yield Runner(step, kafka=settings.kafka_client, config=settings.runner, group=group, run_id=settings.run_id)


PROCESSORS: dict[str, Callable[[Settings, str | None, str | None, str], AbstractContextManager[Runner]]] = {
    "passthrough": _passthrough,
    "generate": _generate,
    "label": _label,
}


def _quality(settings: Settings, group: str) -> None:
    from sdg.quality_app import run_quality

    run_quality(settings, app_id=group)


def lineage_sink(settings: Settings, group: str) -> DeltaSink:
    """The Delta sink of every stage, window, reading (downsampled), alert and throttle topic."""
    from processors.lineage import downsampled, rows_of

    fn = downsampled(rows_of, every_s=settings.sink.telemetry_every_s)
    return DeltaSink(LINEAGE_TOPICS, fn=fn, kafka=settings.kafka_client, tables=settings.delta_tables(),
                     group=group, run_id=settings.run_id, config=settings.sink)


def _lineage(settings: Settings, group: str) -> None:
    """Every stage, window, reading, alert and throttle topic → the Delta tables, exactly once per table."""
    stats = lineage_sink(settings, group).run(handle_signals=True)
    log.info("lineage: %d records, rows %s, %d commits", stats.consumed, stats.rows, stats.commits)


def _thermal(settings: Settings, group: str) -> None:
    from sdg.thermal_app import run_thermal

    run_thermal(settings, app_id=group)


def _plant(settings: Settings, group: str) -> None:
    """The modeled plant of ``SDG_PLANT__NODES``: generator load and faults in, sensor readings out."""
    from sdg.telemetry import PlantService

    PlantService(settings.plant, kafka=settings.kafka_client, run_id=settings.run_id, group=group).run(
        handle_signals=True)


def _train(settings: Settings, group: str) -> None:
    """sdg.samples.accepted → an edge model (INT8 ONNX) after every ``train.every`` new samples."""
    from rich.console import Console

    from sdg.training import run_trainer

    run_trainer(settings, group, console=Console())


LINEAGE_TOPICS = ["sdg.samples.raw", "sdg.samples.labeled", "sdg.samples.scored", "sdg.samples.accepted",
                  "sdg.samples.review", "sdg.samples.rejected", "sdg.quality", "sdg.telemetry", "sdg.alerts",
                  "sdg.control"]

# processors with a loop of their own (a faust app, a sink with Delta commits): they run in the
# foreground until SIGTERM; the group is their consumer group (for faust: the app id)
SERVICES: dict[str, Callable[[Settings, str], None]] = {
    "quality": _quality,
    "lineage": _lineage,
    "thermal": _thermal,
    "plant": _plant,
    "train": _train,
}


def processor(
    name: str, settings: Settings, *, source: str | None, sink: str | None, group: str | None
) -> AbstractContextManager[Runner]:
    """A context manager yielding the runner of processor ``name``.

    Raises:
        ConfigError: an unknown processor (the message lists the valid ones) or missing topics.
    """
    if name not in PROCESSORS:
        raise ConfigError(f"unknown processor {name!r}; valid: {', '.join([*PROCESSORS, *SERVICES])}")
    return PROCESSORS[name](settings, source, sink, group or f"sdg-{name}")


def datasets(name: str, settings: Settings, *, source: str | None,
             sink: str | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (namespace, name) datasets processor ``name`` reads and writes, for its OpenLineage run events."""
    from schemas.tables import TABLES

    topics: dict[str, tuple[list[str], list[str]]] = {
        "passthrough": ([source or ""], [sink or ""]),
        "generate": (["sdg.requests", "sdg.control"], ["sdg.samples.raw", "sdg.telemetry"]),
        "label": (["sdg.samples.raw"], ["sdg.samples.labeled"]),
        "quality": (["sdg.samples.labeled"], ["sdg.samples.scored", "sdg.samples.accepted", "sdg.samples.review",
                                              "sdg.samples.rejected", "sdg.quality"]),
        "lineage": (LINEAGE_TOPICS, []),
        "thermal": (["sdg.telemetry"], ["sdg.alerts", "sdg.control"]),
        "plant": (["sdg.telemetry", "sdg.plant.faults"], ["sdg.telemetry"]),
        "train": (["sdg.samples.accepted"], []),
    }
    kafka = f"kafka://{settings.kafka_client.bootstrap_servers.split(',')[0]}"
    inputs, outputs = topics[name]
    inputs = [source] if source and name != "passthrough" else inputs
    outputs = [sink] if sink and name != "passthrough" else outputs
    written = [(kafka, t) for t in outputs]
    if name == "lineage":
        written = [(f"file://{Path(settings.delta_tables().root).resolve()}", t) for t in TABLES]
    return [(kafka, t) for t in inputs], written
