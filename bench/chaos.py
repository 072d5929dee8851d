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
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from infra.broker import BrokerConfig, free_port_block  # noqa: E402
from processors.generate import plan_jobs  # noqa: E402
from sdg.history import query, verify_lineage  # noqa: E402
from sdg.settings import Settings  # noqa: E402
from sdg.training import train_quality_models  # noqa: E402
from streams import admin  # noqa: E402
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
    state = Path(tempfile.mkdtemp(prefix="sdg-chaos-"))
    base = free_port_block(6)
    broker = BrokerConfig(nodes=3, port=base, controller_port=base + 1, heap="384m", start_timeout_s=180,
                          jars_dir=ROOT / ".sdg" / "kafka" / "jars")
    settings = Settings(state_dir=state, broker=broker, run_id=f"chaos-{args.seed}")
    cluster = settings.embedded_broker()
    with console.status("a secured three-node cluster"):
        cluster.start()
        admin.create_topics(settings.kafka_client, settings.topics)
    train_quality_models(settings, extractor_steps=100, labeler_steps=150, console=console)
    env = {**os.environ, "SDG_STATE_DIR": str(state), "SDG_RUN_ID": settings.run_id, "SDG_SINK__MAX_BATCH_S": "1",
           **broker.environment()}
    logs = state / "logs"
    logs.mkdir()

    def launch(name: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "sdg", "run", name], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)

    running = {name: launch(name) for name in PROCESSORS}
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
                    running[name].send_signal(signal.SIGKILL)
                    running[name].wait()
                    running[name] = launch(name)
                    kills[name] += 1
                else:
                    node = rng.choice([2, 3])
                    cluster.kill(node)
                    broker_kills += 1
                    time.sleep(3)
                    cluster.start()  # brings the node back
                console.print(f"{time.monotonic() - started:5.1f}s: {event} {name if event == 'kill' else node}")
                next_event = time.monotonic() + rng.uniform(2, 5)
    tables = settings.delta_tables()
    deadline = time.monotonic() + 600
    with console.status("waiting for every planned sample's decision in the lineage table"):
        while time.monotonic() < deadline:
            if (state / "tables" / "lineage").exists():
                decided = query(tables, "SELECT count(DISTINCT seed) AS n FROM lineage WHERE run_id = ? AND stage IN "
                                "('accepted', 'review', 'rejected')", params=[settings.run_id]).to_pylist()[0]["n"]
                if decided >= len(planned):
                    break
            time.sleep(3)
        time.sleep(5)  # anything still arriving would be a duplicate: give it the chance to show
    for process in running.values():
        process.send_signal(signal.SIGTERM)
    for process in running.values():
        process.wait(60)
    rows = query(tables, "SELECT seed, stage FROM lineage WHERE run_id = ?", params=[settings.run_id]).to_pylist()
    cluster.stop()
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
