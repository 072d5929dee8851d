"""Chaos: the pipeline on a secured three-node cluster, with processors and brokers killed at random.

A stream of procedural samples (jobs published every few seconds) flows through ``sdg run generate``,
``label``, ``quality`` and ``lineage``, each a process connecting as its own principal. Meanwhile processors
are killed with SIGKILL at random moments and restarted at once, and broker nodes are killed and brought back.
At the end every planned sample must have exactly one row per stage in the lineage table (generated,
labeled, and its decision), none may be lost, and the hash chains must verify.

Writes ``bench/results/chaos.json`` (``planned``, ``kills``, ``broker_kills``, ``lost``, ``duplicates``, rows per
stage, wall time). Usage: ``python bench/chaos.py [--samples 3000] [--kills 20] [--broker-kills 2] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from bench.harness import Pipeline  # noqa: E402
from processors.generate import plan_jobs  # noqa: E402
from sdg.history import query, verify_lineage  # noqa: E402
from streams.producer import RecordProducer  # noqa: E402

PROCESSORS = ("generate", "label", "quality", "lineage")
DECISIONS = ("accepted", "review", "rejected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--broker-kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    rng = random.Random(args.seed)
    pipeline = Pipeline(f"chaos-{args.seed}", nodes=3, console=console)
    settings, cluster = pipeline.settings, pipeline.cluster
    for name in PROCESSORS:
        pipeline.launch(name)
    jobs = plan_jobs("procedural", classes=list(range(10)), per_class=args.samples // 10, seed=args.seed,
                     run_id=settings.run_id, job_size=100)
    planned = {args.seed * 10**9 + i for i in range(sum(j.count for j in jobs))}
    kills: Counter[str] = Counter()
    broker_kills = 0
    started = time.monotonic()
    events = ["kill"] * args.kills + ["broker"] * args.broker_kills
    rng.shuffle(events)
    pace = 75.0 / len(jobs)  # the stream lasts about as long as the chaos
    with RecordProducer(settings.kafka_client) as producer:
        next_job, next_event = 0, time.monotonic() + rng.uniform(2, 5)
        while next_job < len(jobs) or events:
            if next_job < len(jobs):
                producer.send("sdg.requests", jobs[next_job])
                producer.flush()
                next_job += 1
            time.sleep(pace)
            if events and time.monotonic() >= next_event:
                event = events.pop()
                if event == "kill":
                    name = rng.choice(PROCESSORS)
                    pipeline.running[name].send_signal(signal.SIGKILL)
                    pipeline.running[name].wait()
                    pipeline.launch(name)
                    kills[name] += 1
                else:
                    node = rng.choice([2, 3])
                    cluster.kill(node)
                    broker_kills += 1
                    time.sleep(3)
                    cluster.start()  # brings the node back
                console.print(f"{time.monotonic() - started:5.1f}s: {event} {name if event == 'kill' else node}")
                next_event = time.monotonic() + rng.uniform(2, 5)
    with console.status("waiting for every planned sample's decision in the lineage table"):
        pipeline.wait_decided(len(planned), timeout_s=600)
        time.sleep(5)  # anything still arriving would be a duplicate: give it the chance to show
    tables = settings.delta_tables()
    rows = query(tables, "SELECT seed, stage FROM lineage WHERE run_id = ?", params=[settings.run_id]).to_pylist()
    pipeline.stop()
    stages = Counter(r["stage"] for r in rows)
    per = Counter((r["seed"], r["stage"] if r["stage"] not in DECISIONS else "decision") for r in rows)
    decided_seeds = {seed for (seed, stage) in per if stage == "decision"}
    verified = verify_lineage(tables)
    result = {"planned": len(planned), "kills": sum(kills.values()), "kills_per_processor": dict(kills),
              "broker_kills": broker_kills, "lost": len(planned - decided_seeds),
              "duplicates": sum(n - 1 for n in per.values() if n > 1), "rows_per_stage": dict(stages),
              "chains_verify": verified.broken is None, "seconds": round(time.monotonic() - started, 1)}
    out = ROOT / "bench" / "results" / "chaos.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(result)
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
