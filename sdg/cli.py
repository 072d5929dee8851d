"""The ``sdg`` command line."""

from __future__ import annotations

import base64
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table

from infra.broker import PLAINTEXT_WARNING
from infra.security import apply, principals
from processors.topology import ProcessorName
from schemas.errors import SdgError
from schemas.records import QualityWindow, SampleDecision
from sdg.history import ExportFormat
from sdg.settings import Settings, load_settings
from streams import admin
from streams.catalog import CATALOG

app = typer.Typer(help="sdg-edge: labeled synthetic training data for edge AI, as a stream.", no_args_is_help=True)
broker_app = typer.Typer(help="The embedded Apache Kafka broker (KRaft, single node).", no_args_is_help=True)
topics_app = typer.Typer(help="The topic catalog on the broker.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
spark_app = typer.Typer(help="Spark jobs over the Delta tables (delta-spark; local[2] unless SDG_SPARK__MASTER "
                             "is set).", no_args_is_help=True)
app.add_typer(spark_app, name="spark")
telemetry_app = typer.Typer(help="The modeled plant: live readings, alerts and caps; faults; a scenario plot.",
                            no_args_is_help=True)
app.add_typer(telemetry_app, name="telemetry")
# piped or redirected, output is as wide as it needs to be: tables keep whole topic names and ids, no "sdg.reque…"
console = Console() if sys.stdout.isatty() else Console(width=100_000)


DataOption = Annotated[Optional[str], typer.Option(
    "--data", help="The real data: digits, mnist, an image folder root/<class>/, or a Parquet/Delta table "
                   "(default: SDG_DATA__SOURCE, else digits).")]


def _settings(data: str | None = None) -> Settings:
    """The settings, with ``--data`` (when given) in place of ``SDG_DATA__SOURCE``."""
    settings = load_settings()
    if data is not None:
        from models.reference import DataConfig

        settings = settings.model_copy(update={"data": DataConfig(**{**settings.data.model_dump(), "source": data})})
    settings.private_state_dir()
    return settings


@broker_app.command("start")
def broker_start() -> None:
    """Start the embedded broker, every node of it (SDG_BROKER__NODES; resolving the jars on first use), and wait
    until all of them answer."""
    broker = _settings().embedded_broker()
    with console.status("starting Apache Kafka (KRaft)…"):
        status = broker.start()
    pids = ", ".join(map(str, status.pids))
    console.print(f"broker running: {len(status.pids)} node(s), pid {pids}, {status.bootstrap}, data in {status.data_dir}")
    if broker.secured:
        console.print(f"secured: SASL_SSL, SCRAM-SHA-512, a principal per processor with its ACLs; CA {broker.secrets.ca}, "
                      f"passwords in {broker.secrets.passwords_file} (owner-only)")
    else:
        console.print(f"[yellow]{PLAINTEXT_WARNING}[/yellow]")


@broker_app.command("install")
def broker_install() -> None:
    """Resolve the Kafka jars from Maven Central into the cache (start does this too when needed)."""
    jars = _settings().embedded_broker().ensure_jars()
    console.print(f"Kafka jars in {jars}")


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the embedded broker."""
    stopped = _settings().embedded_broker().stop()
    console.print("broker stopped" if stopped else "broker was not running")


@broker_app.command("secrets")
def broker_secrets(hosts: str = typer.Option(..., help="The nodes' host names, comma-separated, e.g. "
                                                       "kafka-1,kafka-2,kafka-3")) -> None:
    """Make a secured cluster's files for nodes on other hosts (the compose file's): the CA, a certificate for every
    host, the principals' passwords and each node's server.properties, in the state directory's kafka/security."""
    from infra.broker import write_cluster_files

    written = write_cluster_files(_settings().embedded_broker().secrets, hosts.split(","))
    console.print(f"{len(written)} files (owner-only) in {written[0].parent}")


@broker_app.command("secure")
def broker_secure() -> None:
    """Create every principal's SCRAM credential and ACLs on the configured cluster, as its admin (the embedded
    broker does this when it starts)."""
    settings = _settings()
    count = apply(settings.kafka_client, settings.embedded_broker().secrets)
    console.print(f"{len(principals()) - 1} principals and {count} ACLs on {settings.kafka_client.bootstrap_servers}")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the embedded broker runs, where, and where its data is."""
    s = _settings().embedded_broker().status()
    pids = ", ".join("down" if p is None else str(p) for p in s.pids)
    console.print(f"{'running' if s.running else 'stopped'}: pid {pids}, {s.bootstrap}, data {s.data_dir}, {s.jars} jars")
    if not s.running:
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create every catalog topic (idempotent)."""
    settings = _settings()
    outcome = admin.create_topics(settings.kafka_client, settings.topics)
    for name, what in outcome.items():
        console.print(f"{name:24} {what}")


@topics_app.command("list")
def topics_list() -> None:
    """List the catalog with each topic's key and value type."""
    table = Table("topic", "key", "value", "partitions", "retention / compaction", "what")
    for spec in CATALOG.values():
        policy = spec.config.get("cleanup.policy", "")
        keep = "compact" if policy == "compact" else f"{int(spec.config['retention.ms']) / 86_400_000:g} d"
        table.add_row(spec.name, spec.key, spec.value.__name__ if spec.value else "any", str(spec.partitions), keep,
                      spec.description)
    console.print(table)


@topics_app.command("describe")
def topics_describe(names: Annotated[Optional[list[str]], typer.Argument(help="Topics (default: all)")] = None) -> None:
    """Partitions, replication and topic configs as the cluster has them."""
    settings = _settings()
    table = Table("topic", "partitions", "replication", "config")
    for state in admin.describe_topics(settings.kafka_client, names or None):
        table.add_row(state.name, str(state.partitions), str(state.replication),
                      ", ".join(f"{k}={v}" for k, v in sorted(state.config.items())))
    console.print(table)


def _require_broker(settings: Settings) -> None:
    """Fail with one line, within seconds, when no broker answers (a producer would retry for minutes)."""
    admin.wait_for_broker(settings.kafka_client, timeout_s=10)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@app.command()
def subscribe(
    topic: str,
    group: Annotated[Optional[str], typer.Option(help="Consumer group (commits offsets).")] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest record.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Stop after N records.")] = None,
    idle_timeout: Annotated[Optional[float], typer.Option(help="Stop after S seconds without records.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (bytes as base64).")] = False,
) -> None:
    """Print the records of TOPIC as they arrive."""
    from streams.subscribe import subscribe as records

    settings = _settings()
    for received in records(topic, kafka=settings.kafka_client, group=group, from_beginning=from_beginning,
                            limit=limit, idle_timeout_s=idle_timeout):
        fields = received.record.model_dump()
        if as_json:
            sys.stdout.write(json.dumps({"topic": received.topic, "partition": received.partition,
                                         "offset": received.offset, "type": received.record.schema_name,
                                         "value": _jsonable(fields)}) + "\n")
        else:
            shown = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in fields.items()}
            console.print(f"[bold]{received.topic}[/][{received.partition}]@{received.offset} "
                          f"{received.record.schema_name} {shown}", soft_wrap=True)


@app.command("run")
def run_processor(
    processor: Annotated[ProcessorName, typer.Argument(help="The processor (processors/topology.py).")],
    source: Annotated[Optional[str], typer.Option(help="Topic to consume (default: the processor's).")] = None,
    sink: Annotated[Optional[str], typer.Option(help="Topic to produce to (default: the processor's).")] = None,
    group: Annotated[Optional[str], typer.Option(help="Consumer group (default: sdg-<processor>).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes in the group on this machine (one per core): each "
                                                     "takes its share of the partitions and of the cores.")] = 1,
    data: DataOption = None,
) -> None:
    """Run a stream processor until SIGTERM/SIGINT (finishes its batch, checkpoints, exits 0).

    Processors (processors/topology.py): passthrough, generate, label, quality, review, thermal, plant, lineage,
    train, all on the one runtime. A broken model, broker or disk stops it with a non-zero exit and commits nothing
    after its last checkpoint; bad records go to sdg.dlq."""
    import os

    # before torch loads: its OpenMP threads sleep when idle instead of spinning for ~ms on cores the broker and the
    # other processors need (the pipeline took 0.75 of the time; a node running one generator alone can set ACTIVE)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from sdg.run_events import run_events
    from sdg.workers import datasets
    from sdg.workers import processor as make_processor

    settings = _settings(data)
    if workers > 1:
        options = [f"--{k}={v}" for k, v in {"source": source, "sink": sink, "group": group, "data": data}.items() if v]
        raise typer.Exit(_run_workers([processor, *options], workers, settings.runner.instance, settings.metrics.port))
    with make_processor(processor, settings, source=source, sink=sink, group=group) as runner:
        inputs, outputs = datasets(processor, settings, source=source, sink=sink)
        with run_events(settings.openlineage, settings.state_dir, job=processor, inputs=inputs, outputs=outputs):
            stats = runner.run(handle_signals=True)
    console.print(f"{processor}: {stats.consumed} consumed, {dict(stats.produced)} produced, "
                  f"{sum(stats.dead_letters.values())} dead letters")


def _run_workers(args: list[str], workers: int, instance: str, metrics_port: int | None) -> int:
    """``sdg run ARGS`` as ``workers`` processes of one group, each with its own transactional identity and
    ``cores // workers`` torch and ONNX Runtime threads (unless set); signals are passed on. The worst exit code."""
    import os
    import signal
    import subprocess

    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    env = {**os.environ, "SDG_WORKER__THREADS": os.environ.get("SDG_WORKER__THREADS", threads),
           "SDG_QUALITY__THREADS": os.environ.get("SDG_QUALITY__THREADS", threads)}

    def own(k: int) -> dict[str, str]:  # worker k's identity and metrics port
        port = {"SDG_METRICS__PORT": str(metrics_port + k)} if metrics_port else {}
        return {"SDG_RUNNER__INSTANCE": f"{instance}-{k}", **port}

    children = [subprocess.Popen([sys.executable, "-m", "sdg", "run", *args], env={**env, **own(k)})
                for k in range(workers)]
    def forward(received: int, _: Any) -> None:
        for child in children:
            child.send_signal(received)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


@app.command("console")
def console_app(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default SDG_CONSOLE__HOST, loopback).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default SDG_CONSOLE__PORT, 8700).")] = None,
    data: DataOption = None,
) -> None:
    """The web console: review uncertain labels (answers go to sdg.labels.human), watch the pipeline live,
    look back at runs, dataset versions, models and exports; /metrics for Prometheus."""
    from console.app import serve

    settings = _settings(data)
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update={"console": settings.console.model_copy(update=overrides)})
    _require_broker(settings)
    console.print(f"console on http://{settings.console.host}:{settings.console.port}/review")
    serve(settings)


@app.command("train-generator")
def train_generator(
    kind: Annotated[Literal["gan", "diffusion", "layout-diffusion"], typer.Argument(
        help="The generator to train (layout-diffusion draws whole scenes into boxes: the detection tasks').")],
    labels_per_class: Annotated[Optional[int], typer.Option(help="Train on K real labels per class (default: the whole train split).")] = None,
    pseudo_labels: Annotated[bool, typer.Option(help="With --labels-per-class: add unlabeled train images, labeled by a semi-supervised teacher trained on the K labels (dual pseudo training).")] = False,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    data: DataOption = None,
) -> None:
    """Train a generator on the real reference set; writes a versioned checkpoint and a sample grid."""
    from sdg.training import train_generator as train

    result = train(_settings(data), kind, labels_per_class=labels_per_class, pseudo_labels=pseudo_labels, steps=steps,
                   seed=seed, console=console)
    console.print(f"{kind} version {result.version}: {result.labels_used} real labels used; grid {result.grid}")


@app.command("train-labeler")
def train_labeler(
    labels_per_class: Annotated[int, typer.Option(help="Real labels per class the labeler may use.")] = 10,
    extractor_steps: Annotated[int, typer.Option(help="Contrastive training steps of the feature extractor.")] = 800,
    labeler_steps: Annotated[int, typer.Option(help="Training steps of the labeler (FixMatch).")] = 1500,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    answers: Annotated[bool, typer.Option("--answers", help="Add the labels people gave in the console's review "
                                                            "queue (from the lineage table) to the few.")] = False,
    data: DataOption = None,
) -> None:
    """Train the quality feature extractor (no labels) and the labeler (few labels); deploy both as fp32 and INT8 ONNX.
    A running label processor picks the new labeler up without a restart."""
    from sdg.training import human_answers, train_quality_models

    settings = _settings(data)
    splits = settings.splits(labels_per_class, seed)
    given = human_answers(settings, splits.reference) if answers else None
    if answers:
        console.print(f"{0 if given is None else len(given.labels)} answers from the review queue")
    result = train_quality_models(settings, splits=splits, extractor_steps=extractor_steps,
                                  labeler_steps=labeler_steps, answers=given, console=console)
    accuracy = ", ".join(f"{k} {v:.1%}" for k, v in result.test_accuracy.items())
    console.print(f"labeler {result.labeler} ({result.labels_used} real labels): real test accuracy {accuracy}")
    console.print(f"extractor {result.extractor} (0 labels)")


@app.command()
def quality(
    run: Annotated[Optional[str], typer.Option(help="Only windows of this run.")] = None,
    classes: Annotated[bool, typer.Option("--classes", help="Also show the per-class windows.")] = False,
) -> None:
    """Print the latest quality windows per generator (and class) against the real-vs-real baseline."""
    from sdg.report import quality_table
    from streams.subscribe import subscribe as records

    latest: dict[tuple[str, str, int | None, str], Any] = {}
    for received in records("sdg.quality", kafka=_settings().kafka_client, from_beginning=True, idle_timeout_s=3):
        window = received.record
        if not isinstance(window, QualityWindow):
            continue
        if (run is None or window.run_id == run) and (classes or window.class_label is None):
            latest[(window.generator, window.measured_on, window.class_label, window.kind)] = window
    if not latest:
        console.print("no quality windows yet" + (f" for run {run}" if run else ""))
        return
    console.print(quality_table([latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1], k[2] is not None,
                                                                                  k[2] or 0, k[3]))]))


@app.command("query")
def query_tables(
    sql: Annotated[str, typer.Argument(help="SQL over the tables samples, lineage, quality_windows, telemetry, "
                                            "alerts, control_actions, generator_stats")],
    as_of: Annotated[Optional[list[str]], typer.Option("--as-of", help="TABLE=VERSION (time travel).")] = None,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 50,
) -> None:
    """Run SQL (DuckDB) over the Delta tables and print the result."""
    from sdg.history import query

    versions = {}
    for item in as_of or []:
        name, _, version = item.partition("=")
        if not version.strip().isdigit():
            raise typer.BadParameter(f"{item!r}: write TABLE=VERSION, e.g. lineage=3", param_hint="--as-of")
        versions[name] = int(version)
    _print_arrow(query(_settings().delta_tables(), sql, versions=versions), limit=limit)


def _print_arrow(result: Any, *, limit: int) -> None:
    table = Table(*result.column_names, title=f"{result.num_rows} rows")
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*[f"<{len(v)} bytes>" if isinstance(v, bytes) else
                        f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()])
    console.print(table)


@spark_app.command("stats")
def spark_stats(run: Annotated[Optional[str], typer.Option(help="Only this run (default: every run).")] = None) -> None:
    """Per generator version: stage counts, acceptance rate and label budget, into the generator_stats table."""
    from sdg.history import query
    from sdg.spark import session, write_generator_stats

    settings = _settings()
    tables = settings.delta_tables()
    spark = session(settings.spark, ivy_dir=settings.state_dir / "ivy", app_name="sdg-generator-stats")
    try:
        written = write_generator_stats(spark, tables.root, run=run)
    finally:
        spark.stop()
    console.print(f"generator_stats: {written} rows written")
    where = "WHERE run_id = ?" if run else ""
    _print_arrow(query(tables, f"SELECT run_id, generator, generator_version, generated, accepted, review, rejected, "
                               f"acceptance_rate, labels_saved, labels_to_review FROM generator_stats {where} "
                               "ORDER BY run_id, generator", params=[run] if run else None), limit=100)


@spark_app.command("compact")
def spark_compact(table: Annotated[str, typer.Argument(help="The table to OPTIMIZE (e.g. lineage).")]) -> None:
    """Delta OPTIMIZE (bin-packing compaction) of a table, run by Spark."""
    from sdg.spark import compact, session

    settings = _settings()
    spark = session(settings.spark, ivy_dir=settings.state_dir / "ivy", app_name=f"sdg-compact-{table}")
    try:
        metrics = compact(spark, settings.delta_tables().root, table)
    finally:
        spark.stop()
    console.print(f"{table}: {metrics['numFilesRemoved']} files compacted into {metrics['numFilesAdded']}")


@app.command()
def replay(
    to: Annotated[str, typer.Option("--to", help="Topic to publish to (sdg.samples.raw or sdg.replay.<name>).")],
    as_of: Annotated[Optional[int], typer.Option("--as-of", help="Delta version of the samples table.")] = None,
    run: Annotated[Optional[str], typer.Option(help="Only samples of this run.")] = None,
    generator: Annotated[Optional[str], typer.Option(help="Only this generator.")] = None,
    class_label: Annotated[Optional[int], typer.Option("--class", help="Only this class.")] = None,
    decision: Annotated[Optional[str], typer.Option(help="Only samples with this decision.")] = None,
    rate: Annotated[Optional[float], typer.Option(help="Samples per second (default: as fast as possible).")] = None,
    regenerate: Annotated[bool, typer.Option("--regenerate", help="Re-create the samples from provenance and "
                                                                  "check their hashes.")] = False,
) -> None:
    """Re-publish samples from the Delta history, in the order they were generated."""
    import time

    from sdg.history import regenerate as recreate
    from sdg.history import select_samples, to_sample
    from streams.producer import RecordProducer

    settings = _settings()
    rows = select_samples(settings.delta_tables(), as_of=as_of, run=run, generator=generator,
                          class_label=class_label, decision=decision)
    if regenerate:
        rows, mismatched = recreate(rows, settings.catalog())
        console.print(f"regenerated {len(rows)} samples: {len(rows) - len(mismatched)} match their stored hash"
                      + (f", [red]{len(mismatched)} do not[/]: {mismatched[:10]}" if mismatched else ""))
    started = time.monotonic()
    _require_broker(settings)
    with RecordProducer(settings.kafka_client) as producer:
        for i, row in enumerate(rows):
            if rate:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            producer.send(to, to_sample(row))
    console.print(f"replayed {len(rows)} samples to {to}")
    if regenerate and mismatched:
        raise typer.Exit(1)


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="A folder of images (any depth), a Parquet file or folder, or a Delta "
                                                "table with an image column.")],
    image_column: Annotated[str, typer.Option(help="A table's column of encoded images.")] = "image",
    limit: Annotated[Optional[int], typer.Option(help="At most this many images.")] = None,
    data: DataOption = None,
) -> None:
    """Publish real, unlabeled images on sdg.samples.raw (generator real, with their provenance): the labeler labels
    them, the gate decides, lineage records them, and exports include them, like synthetic samples."""
    from rich.progress import Progress

    from sdg.ingest import ingest as publish

    settings = _settings(data)
    sent, unreadable = 0, 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"ingesting {source}", total=None)
        for item in publish(settings, source, image_column=image_column, limit=limit):
            if isinstance(item, str):
                unreadable += 1
                console.print(f"[yellow]skipped[/] {item}")
                continue
            sent += 1
            progress.advance(task)
    console.print(f"ingested {sent} real images into sdg.samples.raw (run {settings.run_id})"
                  + (f"; {unreadable} unreadable, skipped" if unreadable else ""))


@app.command("export")
def export_dataset(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="The dataset layout.")] = "imagefolder",
    decision: Annotated[Optional[Literal["accepted", "review", "rejected"]],
                        typer.Option(help="Only samples with this decision.")] = "accepted",
    as_of: Annotated[Optional[int], typer.Option("--as-of", help="Delta version of the samples table.")] = None,
    run: Annotated[Optional[str], typer.Option(help="Only samples of this run.")] = None,
    generator: Annotated[Optional[str], typer.Option(help="Only this generator.")] = None,
) -> None:
    """Export a dataset version from the Delta history, with a manifest of the versions and hashes it came from."""
    from sdg.history import export, select_samples

    tables = _settings().delta_tables()
    filters = {"decision": decision, "run": run, "generator": generator}
    rows = select_samples(tables, as_of=as_of, run=run, generator=generator, decision=decision)
    manifest = export(tables, out, fmt=fmt, rows=rows, filters=filters, as_of=as_of)
    with (_settings().state_dir / "exports.jsonl").open("a") as log:  # the console's history lists them
        log.write(json.dumps({"out": str(out.resolve()), "format": fmt, "samples": manifest["count"],
                              "samples_version": manifest["samples_version"], "filters": filters}) + "\n")
    console.print(f"exported {manifest['count']} samples as {fmt} to {out} (samples version "
                  f"{manifest['samples_version']}, lineage version {manifest['lineage_version']})")


@app.command()
def verify(
    table: Annotated[str, typer.Option(help="The hash-chained table.")] = "lineage",
    as_of: Annotated[Optional[int], typer.Option("--as-of", help="A Delta version of the table.")] = None,
    anchors: Annotated[bool, typer.Option("--anchors", help="Also hold the table to the signed chain heads kept "
                                                            "outside it (the latest version).")] = False,
) -> None:
    """Recompute the lineage hash chains; report the first edited, removed, inserted or reordered row."""
    from sdg.history import verify_lineage

    if table != "lineage":
        raise typer.BadParameter("only the lineage table is hash-chained")
    if anchors and as_of is not None:
        raise typer.BadParameter("anchors hold the latest version; leave out --as-of", param_hint="--anchors")
    settings = _settings()
    result = verify_lineage(settings.delta_tables(), as_of=as_of, anchors=settings.anchors() if anchors else None)
    broken = result.broken
    if broken is not None:
        console.print(f"[red]{table} (version {result.version}): chain {broken.chain} breaks at seq {broken.seq} "
                      f"(sample {broken.sample_id}): {broken.reason}[/]")
        raise typer.Exit(1)
    if result.unanchored is not None:
        console.print(f"[red]{table} (version {result.version}): {result.unanchored}[/]")
        raise typer.Exit(1)
    anchored = f", held to {result.anchors} signed anchors" if result.anchors is not None else ""
    console.print(f"{table} (version {result.version}): {result.rows} rows in {result.chains} chains verify{anchored}")


@app.command()
def plan(
    generator: Annotated[Literal["gan", "diffusion", "layout-diffusion", "procedural"], typer.Option(
        help="The generator.")],
    per_class: Annotated[int, typer.Option(help="Samples per class.")] = 100,
    classes: Annotated[str, typer.Option(help="Comma-separated classes.")] = "0,1,2,3,4,5,6,7,8,9",
    seed: Annotated[int, typer.Option(help="Plan seed: the same seed names the same samples.")] = 0,
    version: Annotated[Optional[str], typer.Option(help="Generator version (default: the worker's latest).")] = None,
    job_size: Annotated[int, typer.Option(help="Samples per job (one generation batch).")] = 256,
    param: Annotated[Optional[list[str]], typer.Option(help="Generator parameter key=value (e.g. mode=scene, steps=25).")] = None,
) -> None:
    """Submit generation jobs to sdg.requests."""
    from processors.generate import plan_jobs
    from streams.producer import RecordProducer

    pairs = [p.partition("=") for p in param or []]
    bad = [key + sep + value for key, sep, value in pairs if not key or not sep]
    if bad:
        raise typer.BadParameter(f"{bad}: write key=value, e.g. steps=25", param_hint="--param")
    params = {key: value for key, _, value in pairs}
    if generator == "layout-diffusion":
        params.setdefault("mode", "scene")  # it draws scenes only
    try:
        wanted = [int(c) for c in classes.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{classes!r}: write class numbers separated by commas, e.g. 0,1,2",
                                 param_hint="--classes") from None
    settings = _settings()
    jobs = plan_jobs(generator, classes=wanted, per_class=per_class, seed=seed, version=version, job_size=job_size,
                     params=params, run_id=settings.run_id)
    _require_broker(settings)
    with RecordProducer(settings.kafka_client) as producer:
        for job in jobs:
            producer.send("sdg.requests", job)
    console.print(f"planned {sum(j.count for j in jobs)} {generator} samples in {len(jobs)} jobs (run {settings.run_id})")


@app.command("train-detector")
def train_detector(
    labels_per_class: Annotated[int, typer.Option(help="Real labelled objects per class (each a box a person "
                                                       "drew).")] = 3,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 1500,
    data: DataOption = None,
) -> None:
    """Train the detection task's labeler and edge detector (a few real objects, procedural objects and scenes);
    deploy it as fp32 and INT8 ONNX; score it with COCO mAP on real test scenes."""
    from sdg.training import train_detector_model

    result = train_detector_model(_settings(data), labels_per_class=labels_per_class, steps=steps, console=console)
    scores = ", ".join(f"{k} mAP@0.5 {v['map50']:.1%}, mAP@0.5:0.95 {v['map50_95']:.1%}"
                       for k, v in result.test_map.items())
    console.print(f"detector {result.folder} ({result.labels_used} real labels, {result.train_s:.0f} s): "
                  f"real test scenes: {scores}")


@app.command()
def demo(
    records: Annotated[int, typer.Option(help="Valid records to publish per topic.")] = 300,
    task: Annotated[Optional[Literal["classification", "detection", "segmentation"]], typer.Option(
        help="What the run labels (default SDG_TASK, else classification): detection and segmentation generate "
             "scenes and label them with a detector.")] = None,
    data: DataOption = None,
) -> None:
    """Run the platform on the embedded broker (or the configured cluster) and print what went where."""
    from sdg.demo import run_demo

    settings = _settings(data)
    run_demo(settings if task is None else settings.model_copy(update={"task": task}), records_per_topic=records,
             console=console)


@app.command("train-edge")
def train_edge(
    run: Annotated[Optional[str], typer.Option(help="Only accepted samples of this run.")] = None,
    data: DataOption = None,
) -> None:
    """Train the edge model on what sdg.samples.accepted holds now; INT8 ONNX in .sdg/models/edge, a models row."""
    from sdg.training import train_edge_model
    from streams.subscribe import subscribe

    settings = _settings(data)
    records = [r.record for r in subscribe("sdg.samples.accepted", kafka=settings.kafka_client, from_beginning=True,
                                           idle_timeout_s=5)
               if isinstance(r.record, SampleDecision) and (run is None or r.record.run_id == run)]
    if not records:
        console.print("no accepted samples" + (f" in run {run}" if run else ""))
        raise typer.Exit(1)
    trained = train_edge_model(settings, records, console=console)
    m = trained.metrics
    console.print(f"edge {trained.version} on {trained.dataset.samples} accepted samples "
                  f"({trained.real_labels} real labels behind it): real test accuracy fp32 {m.fp32_accuracy:.1%}, "
                  f"int8 {m.int8_accuracy:.1%}, {m.int8_bytes / 1024:.0f} KB, batch-1 p50 "
                  f"{m.int8_b1_p50_ms:.3f} ms, {m.int8_b256_images_per_s:,.0f} images/s at batch 256; "
                  f"checks {m.checks} → {trained.folder}")


@app.command()
def evaluate(
    ks: Annotated[str, typer.Option("--ks", help="Real labels per class of the few-label arms.")] = "1,2,5,10,20,40",
    seeds: Annotated[int, typer.Option(help="Seeds per arm (a claim needs 5 or more).")] = 5,
    steps: Annotated[int, typer.Option(help="Training steps of every edge model.")] = 1000,
    synthetic_per_class: Annotated[int, typer.Option(help="Samples per class and generator.")] = 200,
    dpt: Annotated[Optional[list[str]], typer.Option(help="Generator kinds trained per k on the teacher's labels "
                                                          "(default: diffusion; none: no DPT arm).")] = None,
    generator: Annotated[Optional[list[str]], typer.Option(help="Registry generators used as they are: kind or "
                                                                "kind@version (procedural costs no labels).")] = None,
    generator_steps: Annotated[Optional[int], typer.Option(help="Training steps of the DPT generators.")] = None,
    extend: Annotated[bool, typer.Option(help="Past the grid, double k until every arm matches real-full.")] = True,
    stream_run: Annotated[Optional[str], typer.Option(help="Add an arm with the samples this run accepted (from the "
                                                           "Delta tables).")] = None,
    data: DataOption = None,
) -> None:
    """The label-cost experiment: edge models per arm and seed on the real test split; report in runs/<run-id>/."""
    from sdg.evaluate import EvaluationPlan, headline_sentences, run_evaluation

    settings = _settings(data)
    plan = EvaluationPlan(ks=tuple(int(k) for k in ks.split(",")), seeds=tuple(range(seeds)), steps=steps,
                          synthetic_per_class=synthetic_per_class, dpt=tuple(d for d in dpt if d != "none") if dpt else ("diffusion",),
                          generators=tuple(generator or ()), generator_steps=generator_steps, extend=extend,
                          stream_run=stream_run)
    evaluation = run_evaluation(settings, plan, Path("runs") / settings.run_id, console=console)
    for line in headline_sentences(evaluation):
        console.print(line)


@telemetry_app.command("watch")
def telemetry_watch(
    node: Annotated[Optional[str], typer.Option(help="Only this node.")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Stop after S seconds (default: at Ctrl-C).")] = None,
) -> None:
    """Live readings, alerts and rate caps per node, from sdg.telemetry, sdg.alerts and sdg.control."""
    from sdg.telemetry import watch

    watch(_settings().kafka_client, node=node, duration_s=duration, console=console)


@telemetry_app.command("fault")
def telemetry_fault(
    kind: Annotated[Literal["pump-failure", "coolant-ramp", "over-voltage", "sensor-dropout", "stuck-sensor", "repair"],
                    typer.Argument(help="The fault, or a repair.")],
    node: Annotated[str, typer.Option(help="The node.")] = "node-0",
    magnitude: Annotated[Optional[float], typer.Option(help="Flow fraction (pump-failure, 0.05), °C/min "
                                                            "(coolant-ramp, 5), volts (over-voltage, 540).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Plant seconds until it clears (default: a repair).")] = None,
) -> None:
    """Inject a fault into the modeled plant (sdg.plant.faults), or repair a node."""
    from pydantic import ValidationError

    from schemas.records import PlantFault
    from streams.producer import RecordProducer

    settings = _settings()
    try:
        fault = PlantFault(run_id=settings.run_id, node_id=node, kind=kind.replace("-", "_"),  # type: ignore[arg-type]
                           magnitude=magnitude,
                           duration_s=duration)
    except ValidationError as e:
        raise typer.BadParameter(str(e.errors()[0]["msg"])) from e
    _require_broker(settings)
    with RecordProducer(settings.kafka_client) as producer:
        producer.send("sdg.plant.faults", fault)
    console.print(f"{fault.kind} → {node}")


@telemetry_app.command("simulate")
def telemetry_simulate(
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("docs/thermal-scenario.png"),
) -> None:
    """Simulate the closed loop through a pump failure, a repair and a bus over-voltage; plot it."""
    from sdg.telemetry import PUMP_FAILURE_SCENARIO, plot, simulate

    settings = _settings()
    trace = simulate(PUMP_FAILURE_SCENARIO, duration_s=720, config=settings.thermal)
    plot(trace, out, title=f"{settings.thermal.preset} node: pump failure, repair, bus over-voltage (simulated)")
    console.print(f"die peak {max(trace.die_c):.1f} °C (limit {trace.limit_c:.1f} °C), "
                  f"lowest rate while the pump was down "
                  f"{min(r for t, r in zip(trace.t_s, trace.rate_sps) if 120 <= t < 420):.0f} samples/s → {out}")


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets masked) and every variable name that sets them."""
    from sdg.settings import valid_names

    console.print_json(data=_settings().masked())
    console.print("variables: " + " ".join(valid_names()))


def main() -> None:
    from pydantic import ValidationError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except SdgError as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True)
        sys.exit(2)
    except ValidationError as e:  # a value given on the command line that a record refuses
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or e.title}: "
                             f"{error['msg'].removeprefix('Value error, ')}" for error in e.errors())
        console.print(f"[red]error:[/] invalid {e.title}: {problems}", soft_wrap=True)
        sys.exit(2)
