"""``sdg demo``: records through every topic and a pass-through processor, then what went where."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from infra.broker import PLAINTEXT_WARNING
from schemas.examples import example, example_sample
from schemas.records import (
    DeadLetter,
    GeneratedSample,
    GenerationJob,
    QualityWindow,
    SampleDecision,
    ThermalAlert,
    Throttle,
)
from sdg.report import decisions_table, quality_table
from sdg.settings import Settings
from sdg.workers import processor
from streams import admin
from streams.catalog import CATALOG, LINEAGE_TOPICS, REPLAY_PREFIX
from streams.catalog import topic as topic_spec
from streams.dead_letter import DLQ_TOPIC
from streams.producer import RecordProducer
from streams.subscribe import subscribe

# bad input the pass-through must route to the dead-letter topic, each with a reason
POISON = {
    b"not-avro": "plain bytes",
    b"\xc3\x01" + b"\x00" * 8 + b"body": "unknown writer schema",
}


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo generates, and how long it trains generators it does not find in the registry."""

    per_class: int = 100
    gan_steps: int = 1500
    diffusion_steps: int = 400
    extractor_steps: int = 600
    labeler_steps: int = 1500
    window_size: int = 100
    max_window_s: float = 3.0
    edge_steps: int = 600  # every edge model's training steps
    detector_steps: int = 1000  # the detection task's labeler and edge detector
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # a claim needs five
    plant_time_scale: float = 10.0  # plant seconds per wall second: the fault plays out while the demo generates
    pump_failure_at_s: float = 20.0  # plant seconds after the plant starts; repaired 240 plant seconds later

    @classmethod
    def for_data(cls, image_size: int) -> DemoPlan:
        """Above 8×8 a training step costs 5–10× more on 2 cores: fewer steps and samples, so that a first run
        on MNIST (28×28), all training included, stays within 20 minutes."""
        if image_size <= 8:
            return cls()
        return cls(per_class=60, gan_steps=3000, diffusion_steps=800, extractor_steps=800, edge_steps=400)


@dataclass(frozen=True)
class DemoResult:
    growth: dict[str, int]
    generated: dict[str, int]
    grids: dict[str, Path]
    decisions: dict[str, Counter[str]] = field(default_factory=dict)
    windows: list[QualityWindow] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None


def run_demo(settings: Settings, *, records_per_topic: int, console: Console, plan: DemoPlan | None = None) -> DemoResult:
    """Run the demo: the backbone (every topic, the pass-through, the DLQ), then the generators (on the real data of
    ``SDG_DATA__SOURCE``, with ``DemoPlan.for_data`` unless a plan is given)."""
    reference = settings.reference()
    plan = plan or DemoPlan.for_data(reference.image_size)
    console.print(f"real data: {reference.name}, {len(reference.images)} images of {reference.image_size}×"
                  f"{reference.image_size}×{reference.channels}, {reference.num_classes} classes")
    broker = settings.embedded_broker() if settings.embedded else None
    started_here = broker is not None and broker.pid() is None
    if broker is not None:
        with console.status("starting the embedded Apache Kafka broker…"):
            status = broker.start()
        console.print(f"broker: Apache Kafka (KRaft) pid {status.pid} on {status.bootstrap}, data in {status.data_dir}, "
                      + ("SASL_SSL with a principal per processor" if broker.secured else "PLAINTEXT"))
        if not broker.secured:
            console.print(f"[yellow]{PLAINTEXT_WARNING}[/yellow]")
    kafka = settings.kafka_client
    run_id = settings.run_id
    try:
        created = admin.create_topics(kafka, settings.topics)
        console.print(f"topics: {sum(v == 'created' for v in created.values())} created, "
                      f"{sum(v == 'exists' for v in created.values())} already there")
        relay = f"{REPLAY_PREFIX}demo"
        admin.create_topics(kafka, settings.topics, [topic_spec(relay)])
        names = [*CATALOG, relay]
        before = admin.log_end_offsets(kafka, names)
        group = f"sdg-demo-{run_id}"
        admin.start_group_at_end(kafka, group, ["sdg.samples.raw"])  # the pass-through reads this run only

        published: dict[str, int] = {}
        with RecordProducer(kafka) as producer, Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing", total=records_per_topic * len(CATALOG))
            for spec in CATALOG.values():
                assert spec.value is not None  # the catalog names a type for each of its topics
                for i in range(records_per_topic):
                    record = example_sample(i, run_id) if spec.value is GeneratedSample else example(spec.value, i, run_id)
                    producer.send(spec.name, record)
                    progress.advance(task)
                published[spec.name] = records_per_topic
            wrong_type = producer.codec.encode(example(GenerationJob, 0, run_id))
            for bad in [*POISON, wrong_type]:
                producer.send_bytes("sdg.samples.raw", b"poison", bad)
        published["sdg.samples.raw"] += len(POISON) + 1

        total = published["sdg.samples.raw"]
        with processor("passthrough", settings, source="sdg.samples.raw", sink=relay, group=group) as runner, \
                console.status("pass-through processor: sdg.samples.raw → " + relay):
            thread = threading.Thread(target=runner.run, kwargs={"max_idle_s": 30}, daemon=True)
            thread.start()
            while thread.is_alive() and runner.stats.consumed < total:
                time.sleep(0.1)
            runner.stop()
            thread.join()

        after = admin.log_end_offsets(kafka, names)
        growth = {name: after[name] - before[name] for name in names}
        table = Table("topic", "published", "log grew by", "read by pass-through", title=f"what went where ({run_id})")
        for name in names:
            read = runner.stats.consumed if name == "sdg.samples.raw" else 0
            table.add_row(name, str(published.get(name, "")), str(growth[name]), str(read or ""))
        console.print(table)
        console.print(f"pass-through: {runner.stats.consumed} read, {runner.stats.produced[relay]} relayed to {relay}, "
                      f"{sum(runner.stats.dead_letters.values())} to {DLQ_TOPIC}")
        for received in subscribe(DLQ_TOPIC, kafka=kafka, from_beginning=True, idle_timeout_s=3):
            letter = received.record
            if isinstance(letter, DeadLetter) and letter.run_id == run_id and letter.step_id != "example":
                console.print(f"  dead letter from {letter.topic}[{letter.partition}]@{letter.offset} "
                              f"({len(letter.original_value or b'')} bytes kept): {letter.error}")
        generated, grids, decisions, windows, accepted = _generation(settings, plan, console)
        if settings.task == "classification":
            evaluation, report = _proof(settings, plan, accepted, console)
        else:
            evaluation, report = _detection_proof(settings, plan, accepted, console)
        return DemoResult(growth, generated, grids, decisions, windows, evaluation, report)
    finally:
        if started_here and broker is not None:
            broker.stop()
            console.print("broker stopped")


def _ensure_generators(settings: Settings, plan: DemoPlan, console: Console, train_s: dict[str, float]) -> None:
    """Train the GAN and the diffusion model once (small configs) unless the registry has them.

    They are trained the label-efficient way (dual pseudo training): on the 10 labels per class the
    labeler also uses, plus the unlabeled train images pseudo-labeled by the labeler (trained
    semi-supervised on those labels), so the whole demo costs 100 real labels.
    """
    from models.catalog import trainer
    from models.image import sample_grid, to_uint8
    from sdg.training import pseudo_labeled

    registry = settings.registry()
    reference = settings.reference()
    shape = (reference.image_size, reference.channels, reference.num_classes)
    data = None
    for kind, steps in (("gan", plan.gan_steps), ("diffusion", plan.diffusion_steps)):
        if registry.versions(kind):
            console.print(f"{kind}: using the trained model in {settings.models_dir / kind}")
            continue
        train, config = trainer(kind, *shape, steps=steps)
        if data is None:
            labeler = settings.labeler().model
            data, pseudo = pseudo_labeled(settings.splits(), teacher=lambda x: labeler.run(to_uint8(x)))  # noqa: B023
            console.print(f"labeler as teacher: pseudo-labeled {pseudo} unlabeled train images")
        started = time.monotonic()
        with Progress(console=console) as progress:
            task = progress.add_task(f"training {kind} on the few labels and the pseudo-labels", total=config.steps)
            model = train(data, config, progress=lambda n, t=task: progress.advance(t, n))
        train_s[kind] = round(time.monotonic() - started, 1)
        labels = [c for c in range(reference.num_classes) for _ in range(10)]
        version = registry.save(kind, model.weights(), model.checkpoint_config(),
                                sample_grid(model(list(range(len(labels))), labels).images, labels))
        console.print(f"{kind}: trained version {version} ({model.label_budgets[0].n_labels} real labels)")


QUALITY_APP = "sdg-quality"
DECISION_TOPICS = ["sdg.samples.accepted", "sdg.samples.review", "sdg.samples.rejected"]


def _ensure_quality_models(settings: Settings, plan: DemoPlan, console: Console, train_s: dict[str, float]) -> None:
    """Train the labeler (few labels, unlabeled images) and the quality extractor (no labels) once unless the
    registry has them."""
    from sdg.training import train_quality_models

    if (settings.models_dir / "labeler" / "LATEST").exists() and (settings.models_dir / "extractor" / "LATEST").exists():
        console.print(f"labeler and quality extractor: using the trained ones in {settings.models_dir}")
        return
    trained = train_quality_models(settings, extractor_steps=plan.extractor_steps, labeler_steps=plan.labeler_steps,
                                   console=console)
    train_s.update(trained.train_s)
    console.print(f"labeler: {trained.labels_used} real labels, real test accuracy "
                  + ", ".join(f"{k} {v:.1%}" for k, v in trained.test_accuracy.items()))


def _child_env(settings: Settings) -> dict[str, str]:
    """The environment of a processor the demo starts: this process's state, run, broker and real data (``--data``
    wins over the environment's ``SDG_DATA__*``)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("SDG_DATA__", "SDG_BROKER__"))}
    env |= {"SDG_STATE_DIR": str(settings.state_dir), "SDG_RUN_ID": settings.run_id, "SDG_TASK": settings.task}
    if settings.embedded:  # the same embedded broker: each processor connects as its own principal when secured
        env |= settings.broker.environment()
    else:
        env["SDG_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka_client.bootstrap_servers
    env |= {f"SDG_DATA__{k.upper()}": str(v) for k, v in settings.data.model_dump().items() if v is not None}
    return env


@contextmanager
def _gate_processors(settings: Settings, plan: DemoPlan, out: Path) -> Iterator[None]:
    """The label processor (a thread here) and the quality processor (a process), reading from now on."""
    kafka = settings.kafka_client
    label_group = f"sdg-label-demo-{settings.run_id}"  # a processor's groups start with its name (its ACLs)
    admin.start_group_at_end(kafka, label_group, ["sdg.samples.raw"])
    admin.start_group_at_end(kafka, QUALITY_APP, ["sdg.samples.labeled"])
    env = {**_child_env(settings), "SDG_QUALITY__WINDOW_SIZE": str(plan.window_size),
           "SDG_QUALITY__MAX_WINDOW_S": str(plan.max_window_s)}
    with open(out / "quality-processor.log", "wb") as log:
        quality = subprocess.Popen([sys.executable, "-m", "sdg", "run", "quality", "--group", QUALITY_APP],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with processor("label", settings, source=None, sink=None, group=label_group) as runner:
                thread = threading.Thread(target=runner.run, daemon=True)
                thread.start()
                try:
                    yield
                finally:
                    runner.stop()
                    thread.join()
        finally:
            quality.send_signal(signal.SIGTERM)
            quality.wait(60)


@contextmanager
def _lineage_sink(settings: Settings) -> Iterator[None]:
    """The lineage sink (a thread here) recording every stage of this run into the Delta tables."""
    group = "sdg-lineage"
    admin.start_group_at_end(settings.kafka_client, group, list(LINEAGE_TOPICS))
    with processor("lineage", settings, group=group) as sink:
        thread = threading.Thread(target=sink.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            sink.drain()  # everything this run published reaches the tables
            thread.join()


def _lineage_report(settings: Settings, console: Console) -> None:
    """Rows per stage of this run in the Delta tables, and the hash chains verified."""
    from sdg.history import query, verify_lineage

    tables = settings.delta_tables()
    counts = query(tables, "SELECT stage, count(*) AS n FROM lineage WHERE run_id = ? GROUP BY stage ORDER BY stage",
                   params=[settings.run_id]).to_pylist()
    console.print(f"lineage in {tables.root}: " + ", ".join(f"{c['stage']} {c['n']}" for c in counts))
    result = verify_lineage(tables)
    broken = result.broken
    console.print(f"sdg verify: lineage version {result.version} "
                  + ("verifies" if broken is None else f"[red]breaks at seq {broken.seq}: {broken.reason}[/]"))


@contextmanager
def _thermal_loop(settings: Settings, plan: DemoPlan, out: Path, seen: list) -> Iterator[None]:  # type: ignore[type-arg]
    """The plant (a thread here) modeling the demo's node with a scripted pump failure and repair, the thermal
    processor (a process) acting on it, and what they publish about the node collected in ``seen``."""
    from infra.plant import ScheduledFault

    kafka, node = settings.kafka_client, settings.worker.node_id
    faults = [ScheduledFault(at_s=plan.pump_failure_at_s, node_id=node, kind="pump_failure"),
              ScheduledFault(at_s=plan.pump_failure_at_s + 240, node_id=node, kind="repair")]
    config = settings.plant.model_copy(update={"nodes": [node], "time_scale": plan.plant_time_scale,
                                               "busy_window_s": 0.5, "faults": faults})
    watch = f"sdg-demo-thermal-{settings.run_id}"
    admin.start_group_at_end(kafka, watch, ["sdg.telemetry", "sdg.alerts", "sdg.control"])
    admin.start_group_at_end(kafka, "sdg-thermal", ["sdg.telemetry"])
    env = _child_env(settings)
    stop = threading.Event()

    def collect() -> None:
        for received in subscribe(["sdg.telemetry", "sdg.alerts", "sdg.control"], kafka=kafka, group=watch,
                                  stop=stop):
            if getattr(received.record, "node_id", None) == node and received.record.run_id == settings.run_id:
                seen.append(received.record)

    with open(out / "thermal-processor.log", "wb") as log, \
            processor("plant", settings.model_copy(update={"plant": config}),
                      group=f"sdg-plant-demo-{settings.run_id}") as plant:
        thermal = subprocess.Popen([sys.executable, "-m", "sdg", "run", "thermal", "--group", "sdg-thermal"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        threads = [threading.Thread(target=plant.run, daemon=True), threading.Thread(target=collect, daemon=True)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            plant.stop()
            time.sleep(2)  # the last caps and alerts reach the collector
            stop.set()
            for thread in threads:
                thread.join(30)
            thermal.send_signal(signal.SIGTERM)
            thermal.wait(60)


def _thermal_report(settings: Settings, seen: list, out: Path, console: Console) -> Path:  # type: ignore[type-arg]
    """The alerts and caps the scripted fault caused, and the plot of the node through it."""
    from sdg.telemetry import observed_trace, plot

    node = settings.worker.node_id
    table = Table("s", "what", "detail", title=f"thermal: {node} through a pump failure and its repair")
    seen = list(seen)
    t0 = min((r.created_ms for r in seen), default=0)
    for record in seen:
        if isinstance(record, ThermalAlert):
            table.add_row(f"{(record.created_ms - t0) / 1000:.1f}", f"{record.severity} {record.rule}"
                          + (" cleared" if record.cleared else ""), record.message)
        elif isinstance(record, Throttle):
            what = "pause" if record.paused else "lift" if record.max_rate_sps is None else "cap"
            rate = f"{record.max_rate_sps:.0f} samples/s: " if record.max_rate_sps is not None else ""
            table.add_row(f"{(record.created_ms - t0) / 1000:.1f}", what, rate + record.reason)
    console.print(table)
    trace = observed_trace(seen, node=node, limit_c=settings.plant.cooling.die_limit_c)
    path = plot(trace, out / "thermal.png", title=f"{node}: pump failure and repair during the demo")
    peak = max(trace.die_c, default=float("nan"))
    console.print(f"die peak {peak:.1f} °C (limit {trace.limit_c:.1f} °C); plot: {path}")
    return path


def _proof(settings: Settings, plan: DemoPlan, accepted: list[SampleDecision], console: Console) -> tuple[dict[str, Any], Path]:
    """The edge model from this run's accepted samples, then the label-cost experiment and its report."""
    from sdg.evaluate import EvaluationPlan, headline_sentences, run_evaluation
    from sdg.training import train_edge_model

    out = Path("runs") / settings.run_id
    trainable = [r for r in accepted if not r.sample.objects]
    if trainable:
        started = time.monotonic()
        trained = train_edge_model(settings.model_copy(update={"train": settings.train.model_copy(
            update={"steps": plan.edge_steps})}), trainable, console=console)
        m = trained.metrics
        console.print(f"edge model {trained.version} on {len(trainable)} accepted samples: real test accuracy "
                      f"int8 {m.int8_accuracy:.1%} (fp32 {m.fp32_accuracy:.1%}), "
                      f"{m.int8_bytes / 1024:.0f} KB, {trained.real_labels} real labels behind it")
        _record_training(settings, {"edge": round(time.monotonic() - started, 1)})
    evaluation_plan = EvaluationPlan(ks=(10,), seeds=plan.eval_seeds, steps=plan.edge_steps,
                                     dpt=(), stream_run=settings.run_id,
                                     extractor_steps=plan.extractor_steps, extend=False)
    evaluation = run_evaluation(settings, evaluation_plan, out, console=console)
    for line in headline_sentences(evaluation):
        console.print(line)
    return evaluation, out / "report.md"


def _ensure_detector(settings: Settings, plan: DemoPlan, console: Console, train_s: dict[str, float]) -> None:
    """Train the detection task's labeler once unless the registry has one."""
    from sdg.training import train_detector_model

    if (settings.models_dir / "detector" / "LATEST").exists():
        console.print(f"detector: using the trained one in {settings.models_dir / 'detector'}")
        return
    trained = train_detector_model(settings, steps=plan.detector_steps, console=console)
    train_s["detector"] = trained.train_s
    console.print(f"detector labeler: {trained.labels_used} real labels; on real test scenes "
                  + ", ".join(f"{k} mAP@0.5 {v['map50']:.1%}" for k, v in trained.test_map.items()))


def annotated(sample: GeneratedSample) -> list[Any]:
    """A scene sample's objects with their masks as arrays (``models.generator.Annotated``)."""
    from models.generator import Annotated
    from models.image import decode_png

    return [Annotated(o.class_label, (o.bbox[0], o.bbox[1], o.bbox[2], o.bbox[3]),
                      decode_png(o.mask_png) > 127 if o.mask_png else np.zeros((sample.height, sample.width), bool))
            for o in sample.objects]


def _detection_proof(settings: Settings, plan: DemoPlan, accepted: list[SampleDecision],
                     console: Console) -> tuple[dict[str, Any], Path]:
    """The edge detector from this run's accepted scenes (and the labeler's few real objects), against a detector
    on those few real objects only, both scored with COCO mAP on real test scenes; a picture of its detections.
    One seed: a picture of this run, not a claim (``bench/detection.py`` measures the arms over seeds)."""
    import json

    from models.detector import DetectorConfig, composer, decode, predict, real_test, train_detector
    from models.image import sample_image
    from models.scenes import Scenes, coco_scores, scene_grid

    out = Path("runs") / settings.run_id
    splits = settings.splits(labels_per_class=3)
    r = splits.reference
    config = DetectorConfig.for_data(r.image_size, r.channels, r.num_classes, dark_ink=r.dark_ink,
                                     steps=plan.detector_steps)
    stream = [d for d in accepted if d.sample.objects and d.sample.width == config.scene_size]
    images = np.stack([sample_image(d.sample, r.channels) for d in stream]) if stream else None

    def accepted_scenes(count: int, seed: int) -> Scenes:
        assert images is not None
        pick = np.random.default_rng(seed).choice(len(stream), size=count)
        return Scenes(images[pick], [annotated(stream[i].sample) for i in pick], [])

    few = splits.labeled("few")
    real = composer(few.images, few.labels, config)
    test, truth = real_test(*splits.test_set(), config, count=200)
    arms = {"real-few": [real], **({"few+accepted-stream": [real, accepted_scenes]} if stream else {})}
    result: dict[str, Any] = {"task": settings.task, "accepted_scenes": len(stream), "real_labels": len(few.labels),
                              "test_scenes": len(test.images), "arms": {}}
    table = Table("edge detector", "trained on", "mAP@0.5", "mAP@0.5:0.95", "mask mAP@0.5:0.95",
                  title=f"edge detectors on {len(test.images)} real test scenes (one seed: see bench/detection.py)")
    best = None
    with Progress(console=console) as progress:
        for arm, sources in arms.items():
            model = train_detector(sources, config, progress=progress, description=f"edge detector: {arm}")
            found = decode(predict(model, test.images), stride=config.stride, num_classes=config.num_classes)
            scored = result["arms"][arm] = coco_scores(truth, found)
            table.add_row(arm, f"{len(few.labels)} real objects" + (f" + {len(stream)} accepted scenes"
                                                                     if arm != "real-few" else ""),
                          f"{scored['map50']:.1%}", f"{scored['map50_95']:.1%}", f"{scored['mask_map50_95']:.1%}")
            best = (model, found)
    console.print(table)
    assert best is not None
    picture = scene_grid(test.images[:12], [[d for d in best[1] if d.scene == n] for n in range(12)],
                         out / "detection.png", title="real test scenes: the edge detector's boxes and masks")
    (out / "detection.json").write_text(json.dumps(result, indent=2))
    report = out / "report.md"
    lines = [f"# {settings.task} run {settings.run_id}", "", f"{len(stream)} accepted scenes; "
             f"{len(few.labels)} real labelled objects (the detector labeler's and the edge detector's).", "",
             "| edge detector | mAP@0.5 | mAP@0.5:0.95 | mask mAP@0.5:0.95 |", "|---|---|---|---|",
             *(f"| {a} | {v['map50']:.1%} | {v['map50_95']:.1%} | {v['mask_map50_95']:.1%} |"
               for a, v in result["arms"].items()), "", "![generated scenes](samples_scenes.png)", "",
             "![real test scenes, detected](detection.png)", ""]
    report.write_text("\n".join(lines))
    console.print(f"detections: {picture}; report: {report}")
    return result, report


def _generation(
    settings: Settings, plan: DemoPlan, console: Console
) -> tuple[dict[str, int], dict[str, Path], dict[str, Counter[str]], list[QualityWindow], list[SampleDecision]]:
    """Plan a mix of all three generators; generate, label and gate them; show what arrived and what passed."""
    from models.image import sample_grid, sample_image
    from models.scenes import scene_grid
    from processors.generate import plan_jobs

    train_s: dict[str, float] = {}  # seconds per model trained in this run

    def train() -> None:
        _ensure_quality_models(settings, plan, console, train_s)
        if settings.task == "classification":
            _ensure_generators(settings, plan, console, train_s)
        else:
            _ensure_detector(settings, plan, console, train_s)

    _in_passing_thread(train)
    _record_training(settings, train_s)
    kafka = settings.kafka_client
    run_id = settings.run_id
    group = f"sdg-generate-demo-{run_id}"
    admin.start_group_at_end(kafka, group, ["sdg.requests"])
    watch = f"sdg-demo-watch-{run_id}"
    admin.start_group_at_end(kafka, watch, [*DECISION_TOPICS, "sdg.quality"])
    # a plan seed of its own per run: new samples each run (the same seed would name the same samples again)
    seed = int(hashlib.sha256(run_id.encode()).hexdigest()[:6], 16) * 2
    classes = list(range(settings.reference().num_classes))
    scenes = plan_jobs("procedural", classes=classes, per_class=1 if settings.task == "classification" else
                       plan.per_class // 2, seed=seed + 1, run_id=run_id, params={"mode": "scene"})
    jobs = [job for name in ("gan", "diffusion", "procedural")
            for job in plan_jobs(name, classes=classes, per_class=plan.per_class, seed=seed, run_id=run_id)
            if settings.task == "classification"] + scenes
    expected = sum(job.count for job in jobs)
    planned = {(run_id, job.job_id) for job in jobs}
    arrived: dict[str, list] = {}
    out = Path("runs") / run_id
    out.mkdir(parents=True, exist_ok=True)
    decisions: dict[str, Counter[str]] = {}
    reasons: dict[str, Counter[str]] = {}
    windows: dict[str, QualityWindow] = {}
    accepted: list[SampleDecision] = []
    thermal: list = []  # type: ignore[type-arg]
    with _lineage_sink(settings), _gate_processors(settings, plan, out), _thermal_loop(settings, plan, out, thermal), \
            processor("generate", settings, source=None, sink=None, group=group) as runner:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            with RecordProducer(kafka) as producer:
                for job in jobs:
                    producer.send("sdg.requests", job)
            console.print(f"planned {expected} samples in {len(jobs)} jobs: " + (
                "gan, diffusion, procedural (crops, scenes)" if settings.task == "classification" else
                f"procedural scenes with every object's box and mask ({settings.task})"))
            with Progress(console=console) as progress:
                task = progress.add_task("samples arriving on sdg.samples.raw", total=expected)
                for received in subscribe("sdg.samples.raw", kafka=kafka, from_beginning=True, idle_timeout_s=60):
                    sample = received.record
                    if not isinstance(sample, GeneratedSample) or (sample.run_id, sample.job_id) not in planned:
                        continue
                    arrived.setdefault(_kind(sample), []).append(sample)
                    progress.advance(task)
                    if sum(map(len, arrived.values())) >= expected:
                        break
        finally:
            runner.stop()
            thread.join()
        with Progress(console=console) as progress:
            task = progress.add_task("labeled and gated (accepted / review / rejected)", total=expected)
            for received in subscribe([*DECISION_TOPICS, "sdg.quality"], kafka=kafka, group=watch,
                                      idle_timeout_s=60):
                record = received.record
                if record.run_id != run_id:
                    continue
                if isinstance(record, QualityWindow):
                    if record.kind == "sliding" and record.class_label is None:  # keyed like _kind
                        windows[record.generator + WINDOW_KINDS[record.measured_on]] = record
                elif isinstance(record, SampleDecision):
                    decisions.setdefault(_kind(record.sample), Counter())[record.gate.decision] += 1
                    if record.gate.decision == "accepted":
                        accepted.append(record)
                    reasons.setdefault(_kind(record.sample), Counter())[record.gate.reason.split(":")[0]] += 1
                    progress.advance(task)
                done = sum(sum(c.values()) for c in decisions.values()) >= expected
                if done and set(decisions) <= set(windows):  # windows may come after
                    break

    table = Table("generator", "version", "samples", "classes", "scheduler", "per-sample ms", title="samples arrived")
    grids = {}
    for key, samples in sorted(arrived.items()):
        first = samples[0]
        per_sample = sum(s.timings_ms.get("per_sample", 0) for s in samples) / len(samples)
        table.add_row(key, first.generator_version, str(len(samples)),
                      str(len({s.conditioning.class_label for s in samples})),
                      f"{first.scheduler or '-'}{'/' + str(first.steps) if first.steps else ''}", f"{per_sample:.2f}")
        if not first.objects:
            images = np.stack([sample_image(s) for s in samples])
            grids[key] = out / f"samples_{key}.png"
            grids[key].write_bytes(sample_grid(images, [s.conditioning.class_label for s in samples]))
        elif settings.task != "classification":
            shown = samples[:12]
            grids[key] = scene_grid(np.stack([sample_image(s) for s in shown]), [annotated(s) for s in shown],
                                    out / "samples_scenes.png", title="generated scenes with their boxes and masks")
    console.print(table)
    console.print("sample grids: " + ", ".join(str(p) for p in grids.values()))
    console.print(decisions_table(decisions, reasons))
    latest = [windows[g] for g in sorted(windows)]
    if latest:
        console.print(quality_table(latest, title="latest sliding window per generator (value / real-vs-real baseline)"))
    _thermal_report(settings, thermal, out, console)
    _lineage_report(settings, console)
    return {key: len(samples) for key, samples in arrived.items()}, grids, decisions, latest, accepted


def _in_passing_thread(fn: Callable[[], None]) -> None:
    """``fn()`` in a thread that ends with it (its exception raised here).

    torch's OpenMP threads belong to the thread that first runs parallel work on them and end with it. While one thread
    holds them, torch in any other thread of the process runs 20-80% slower (libgomp, managing more threads than there
    are cores, stops spinning between parallel regions): models trained in the main thread would slow the generate
    processor's thread by a fifth (diffusion, measured). ``sdg run`` runs its processor in the main thread. The thread
    is a daemon: Ctrl-C stops the demo without waiting for the training to end."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # raised again in the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run, name="train", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _record_training(settings: Settings, train_s: dict[str, float]) -> None:
    """Add seconds per model trained to ``runs/<run-id>/training.json``."""
    import json

    path = Path("runs") / settings.run_id / "training.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    before = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**before, **train_s}, indent=2))


WINDOW_KINDS = {"samples": "", "objects": "/scene", "scenes": "/scene/whole"}  # a window's key, like _kind's


def _kind(sample: GeneratedSample) -> str:
    return sample.generator + ("/scene" if sample.objects else "")
