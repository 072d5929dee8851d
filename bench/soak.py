"""Soak: the whole pipeline for half an hour at a steady rate, resident memory of every process sampled.

Generate, label, quality, lineage, the plant and the thermal processor run as ``sdg run`` processes on a secured
embedded broker; a job of procedural samples is published every few seconds. Every ``--every-s`` seconds the
resident set (``VmRSS``) of each process and of the broker's JVM is read. After ``--warmup-min`` minutes memory
must stay flat: a process is bounded when its resident set at the end (median of the last minute) exceeds the
one just after warm-up by at most 10% or 25 MB, whichever is larger. At the end every planned sample must have
its decision in the lineage table.

Writes ``bench/results/soak.json`` (per process: ``rss_after_warmup_mb``, ``rss_end_mb``, ``growth_mb``,
``slope_mb_per_min``, ``bounded``; ``planned``, ``decided``, ``lost``) and ``soak.png`` (memory over time).
Usage: ``python bench/soak.py [--minutes 30] [--rate 10] [--warmup-min 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from bench.harness import Pipeline  # noqa: E402
from processors.generate import plan_jobs  # noqa: E402
from streams.producer import RecordProducer  # noqa: E402

PROCESSORS = ("generate", "label", "quality", "lineage", "plant", "thermal")
JOB = 20  # samples a job


def rss_mb(pid: int | None) -> float | None:
    """The resident set of a live process in MiB, from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, TypeError):
        pass
    return None


def summarize(series: list[tuple[float, float]], warmup_s: float) -> dict[str, float | bool]:
    after = [(t, m) for t, m in series if t >= warmup_s]
    first = statistics.median(m for t, m in after if t < warmup_s + 60)
    last = statistics.median(m for t, m in after if t >= after[-1][0] - 60)
    slope = float(np.polyfit([t / 60 for t, _ in after], [m for _, m in after], 1)[0])
    growth = last - first
    return {"rss_after_warmup_mb": round(first, 1), "rss_end_mb": round(last, 1), "rss_peak_mb": round(
        max(m for _, m in series), 1), "growth_mb": round(growth, 1), "slope_mb_per_min": round(slope, 3),
            "bounded": growth <= max(25.0, 0.10 * first)}


def plot(series: dict[str, list[tuple[float, float]]], warmup_s: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, points in series.items():
        ax.plot([t / 60 for t, _ in points], [m for _, m in points], label=name)
    ax.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    ax.set(xlabel="minutes", ylabel="resident memory (MiB)", title="soak: resident memory of every process")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=10, help="samples a second")
    parser.add_argument("--warmup-min", type=float, default=5)
    parser.add_argument("--every-s", type=float, default=10)
    args = parser.parse_args()
    console = Console()
    pipeline = Pipeline("soak", nodes=1, console=console)
    for name in PROCESSORS:
        pipeline.launch(name)
    duration, warmup = args.minutes * 60, args.warmup_min * 60
    jobs = plan_jobs("procedural", classes=list(range(10)), per_class=int(args.rate * duration) // 10, seed=7,
                     run_id=pipeline.settings.run_id, job_size=JOB)
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in (*PROCESSORS, "broker")}
    restarts = 0
    started = time.monotonic()
    next_sample = started
    with RecordProducer(pipeline.settings.kafka_client) as producer, Progress(console=console) as progress:
        task = progress.add_task("soak", total=len(jobs))
        for i, job in enumerate(jobs):
            producer.send("sdg.requests", job)
            producer.flush()
            progress.advance(task)
            while time.monotonic() < started + (i + 1) * JOB / args.rate:
                if time.monotonic() >= next_sample:
                    t = time.monotonic() - started
                    pids = {name: p.pid for name, p in pipeline.running.items()}
                    pids["broker"] = pipeline.cluster.status().pid  # type: ignore[assignment]
                    for name, pid in pids.items():
                        if (mb := rss_mb(pid)) is not None:
                            series[name].append((t, mb))
                    for name, process in pipeline.running.items():
                        if process.poll() is not None:  # a processor that died is a failed soak: say so, go on
                            console.print(f"[red]{name} exited with {process.returncode}; restarted")
                            pipeline.launch(name)
                            restarts += 1
                    next_sample += args.every_s
                time.sleep(0.2)
    with console.status("waiting for every planned sample's decision"):
        decided = pipeline.wait_decided(sum(j.count for j in jobs), timeout_s=600)
    pipeline.stop()
    per_process = {name: summarize(points, warmup) for name, points in series.items()}
    planned = sum(j.count for j in jobs)
    result = {"minutes": args.minutes, "rate_per_s": args.rate, "warmup_min": args.warmup_min, "planned": planned,
              "decided": decided, "lost": planned - decided, "restarts": restarts,
              "all_bounded": all(p["bounded"] for p in per_process.values()), "processes": per_process}
    out = ROOT / "bench" / "results" / "soak.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(series, warmup, out.with_suffix(".png"))
    console.print(result)
    console.print(f"wrote {out.relative_to(ROOT)} and {out.with_suffix('.png').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
