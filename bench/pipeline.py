"""Benchmark: the whole pipeline against the bare compute it wraps, and its scaling from 1 to 2 workers.

The demo's generation phase on digits: the demo's mix of jobs (GAN, diffusion, procedural crops and scenes)
through ``sdg run generate``, ``label``, ``quality`` and ``lineage``, each its own process on the embedded broker,
timed from the first job sent until every sample is decided; against the bare compute on the same jobs in this
process: the generators' calls and the labeler's INT8 inference on their images.

``pipeline_vs_bare_ratio`` = bare seconds ÷ pipeline seconds: the accepted samples a second through the pipeline
÷ those the bare compute would give (the same samples, so the same decisions). Then the same with two generate
and two label workers in their groups (``sdg run --workers 2``: one thread each): ``workers_2_vs_1_ratio``. The CPU
seconds each processor and the broker spent while timed are kept (``pipeline_*w_cpu_s``): where the 2 cores went.

Models are trained here with a short plan first (speed does not depend on training length). Writes
``bench/results/pipeline.json``. Usage: ``python bench/pipeline.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import free_port  # noqa: E402
from infra.broker import BrokerConfig, EmbeddedBroker  # noqa: E402
from models.runtime import fit_image  # noqa: E402
from processors.generate import plan_jobs  # noqa: E402
from schemas.records import GenerationJob, SampleDecision  # noqa: E402
from sdg.demo import DECISION_TOPICS, DemoPlan, _ensure_generators, _ensure_quality_models  # noqa: E402
from sdg.settings import Settings  # noqa: E402
from streams import admin  # noqa: E402
from streams.catalog import LINEAGE_TOPICS  # noqa: E402
from streams.config import KafkaConfig  # noqa: E402
from streams.producer import RecordProducer  # noqa: E402
from streams.subscribe import subscribe  # noqa: E402

console = Console()
PROCESSORS = {"generate": ["sdg.requests"], "label": ["sdg.samples.raw"], "quality": ["sdg.samples.labeled"],
              "lineage": list(LINEAGE_TOPICS)}


def jobs_of(run_id: str, per_class: int, seed: int) -> list[GenerationJob]:
    """The demo's mix: every generator on every class, and procedural scenes."""
    jobs = [job for name in ("gan", "diffusion", "procedural")
            for job in plan_jobs(name, classes=list(range(10)), per_class=per_class, seed=seed, run_id=run_id)]
    return jobs + plan_jobs("procedural", classes=list(range(10)), per_class=1, seed=seed + 1, run_id=run_id,
                            params={"mode": "scene"})


def bare(settings: Settings, jobs: list[GenerationJob]) -> float:
    """Seconds of the generators and the labeler's inference alone on ``jobs`` (one process, torch's threads)."""
    from models.catalog import GeneratorCatalog

    catalog = GeneratorCatalog(settings.models_dir)
    labeler = settings.labeler()
    models = {job.generator: catalog.get(job.generator) for job in jobs}
    for model in models.values():  # warm-up
        model([0], [0])
    start = time.perf_counter()
    for job in jobs:
        seeds = [job.seed_start + i for i in range(job.count)]
        classes = [job.classes[i % len(job.classes)] for i in range(job.count)]
        images = models[job.generator](seeds, classes, **job.params).images
        labeler.model.run(np.stack([fit_image(image, labeler.image_size, labeler.channels) for image in images]))
    return time.perf_counter() - start


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children so far (0 once it is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # the process, or one it started (--workers)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def through_pipeline(settings: Settings, env: dict[str, str], jobs: list[GenerationJob], workers: int,
                     logs: Path, broker_pid: int) -> tuple[float, float, Counter[str], dict[str, float]]:
    """Seconds from the first job sent until every sample is decided, with ``workers`` generate and label
    processes; seconds from the first decision to the last (the pipeline full: its throughput); the decisions; the
    CPU seconds each processor and the broker spent in between."""
    kafka = settings.kafka_client
    tag = uuid.uuid4().hex[:6]
    groups = {name: f"bench-{name}-{tag}" for name in PROCESSORS}
    for name, topics in PROCESSORS.items():
        admin.start_group_at_end(kafka, groups[name], topics)
    watch = f"bench-watch-{tag}"
    admin.start_group_at_end(kafka, watch, DECISION_TOPICS)
    children = []
    for name in PROCESSORS:
        n = workers if name in ("generate", "label") else 1
        with open(logs / f"{name}-{tag}.log", "wb") as log:
            children.append(subprocess.Popen([sys.executable, "-m", "sdg", "run", name, "--group", groups[name],
                                              "--workers", str(n)], cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT))
    decided: Counter[str] = Counter()
    try:
        warmup = jobs_of(f"{settings.run_id}-warmup", 1, 999)  # every generator loaded before the clock starts
        expected = {settings.run_id: sum(j.count for j in jobs), warmup[0].run_id: sum(j.count for j in warmup)}
        with RecordProducer(kafka) as producer:
            for job in warmup:  # every process has joined its group and loaded its models (a job per generator)
                producer.send("sdg.requests", job)
        seen: Counter[str] = Counter()
        start = first = 0.0
        pids = {**{name: child.pid for name, child in zip(PROCESSORS, children)}, "broker": broker_pid}
        cpu: dict[str, float] = {}
        for received in subscribe(DECISION_TOPICS, kafka=kafka, group=watch, idle_timeout_s=120):
            record = received.record
            if not isinstance(record, SampleDecision) or record.run_id not in expected:
                continue
            seen[record.run_id] += 1
            if record.run_id == settings.run_id:
                decided[record.gate.decision] += 1
                first = first or time.perf_counter()
            if record.run_id != settings.run_id and seen[record.run_id] == expected[record.run_id]:
                start = time.perf_counter()
                cpu = {name: cpu_s(pid) for name, pid in pids.items()}
                with RecordProducer(kafka) as producer:
                    for job in jobs:
                        producer.send("sdg.requests", job)
            if seen[settings.run_id] == expected[settings.run_id]:
                spent = {name: round(cpu_s(pid) - cpu[name], 1) for name, pid in pids.items()}
                return time.perf_counter() - start, time.perf_counter() - first, decided, spent
        raise RuntimeError(f"only {dict(seen)} of {expected} samples were decided")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args()
    per_class = 30 if args.quick else 300  # ~10 s of bare compute: long against the pipeline's fill (~2 s)
    state = Path(tempfile.mkdtemp(prefix="sdg-bench-pipeline-"))
    broker = EmbeddedBroker(BrokerConfig(port=free_port(), controller_port=free_port(), security="plaintext",
                                         jars_dir=ROOT / ".sdg" / "kafka" / "jars"), state / "broker")
    with console.status("starting the embedded broker"):
        broker.start()
    env = {**os.environ, "SDG_STATE_DIR": str(state), "SDG_KAFKA__BOOTSTRAP_SERVERS": broker.kafka.bootstrap_servers,
           "SDG_QUALITY__WINDOW_SIZE": "100", "SDG_QUALITY__MAX_WINDOW_S": "3"}
    results: dict[str, object] = {"machine": f"{os.uname().machine}, {len(os.sched_getaffinity(0))} cores",
                                  "data": "digits", "per_class": per_class}
    table = Table("path", "workers", "samples", "accepted", "seconds", "accepted/s", "÷ bare",
                  title="the demo's generation phase, end to end")
    try:
        settings = Settings(state_dir=state, kafka=KafkaConfig(bootstrap_servers=broker.kafka.bootstrap_servers))
        admin.create_topics(settings.kafka_client, settings.topics)
        plan = DemoPlan(gan_steps=300, diffusion_steps=60, extractor_steps=200, labeler_steps=300)
        _ensure_quality_models(settings, plan, console, {})
        _ensure_generators(settings, plan, console, {})
        seed = int(time.time()) % 100_000 * 2
        total = 0
        for workers in (1, 2):
            run_settings = settings.model_copy(update={"run_id": f"bench-{workers}w-{uuid.uuid4().hex[:6]}"})
            jobs = jobs_of(run_settings.run_id, per_class, seed + 10 * workers)
            total = sum(job.count for job in jobs)
            with console.status("the bare compute: generators and labeler in this process"):
                bare_s = bare(run_settings, jobs)
            with console.status(f"the pipeline: {workers} generate and label workers, quality, lineage"):
                pipeline_s, full_s, decided, cpu = through_pipeline(
                    run_settings, env | {"SDG_RUN_ID": run_settings.run_id}, jobs, workers, state, broker.pid() or 0)
            accepted = decided["accepted"]
            results |= {f"pipeline_{workers}w_seconds": round(pipeline_s, 2), f"bare_{workers}w_seconds": round(bare_s, 2),
                        f"pipeline_{workers}w_accepted_per_s": round(accepted / pipeline_s, 1),
                        f"bare_{workers}w_accepted_per_s": round(accepted / bare_s, 1),
                        f"pipeline_{workers}w_decisions": dict(decided),
                        f"pipeline_{workers}w_cpu_s": cpu,
                        f"pipeline_{workers}w_full_vs_bare_ratio": round(bare_s / full_s, 3),  # fill time left out
                        f"pipeline_{workers}w_vs_bare_ratio": round(bare_s / pipeline_s, 3)}
            table.add_row("bare", "-", f"{total:,}", f"{accepted:,}", f"{bare_s:.1f}", f"{accepted / bare_s:,.0f}", "1.00")
            table.add_row("pipeline", str(workers), f"{total:,}", f"{accepted:,}", f"{pipeline_s:.1f}",
                          f"{accepted / pipeline_s:,.0f}", f"{bare_s / pipeline_s:.2f}")
        results["samples"] = total
        results["pipeline_vs_bare_ratio"] = results["pipeline_1w_vs_bare_ratio"]
        results["workers_2_vs_1_ratio"] = round(float(results["pipeline_1w_seconds"])  # type: ignore[arg-type]
                                                / float(results["pipeline_2w_seconds"]), 3)  # type: ignore[arg-type]
    finally:
        broker.stop()
    console.print(table)
    console.print(f"pipeline ÷ bare: {results['pipeline_vs_bare_ratio']}; 2 workers ÷ 1: {results['workers_2_vs_1_ratio']}")
    out = ROOT / "bench" / "results" / "pipeline.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
