"""The label-cost experiment as a benchmark: ``sdg evaluate`` on a data source, its results kept in ``bench/results``.

Runs ``sdg.evaluate.run_evaluation`` (k = 1, 2, 5, 10, 20, 40 labels per class, extended until every arm comes
within 0.5 pt of real-full; 5 seeds; a DPT diffusion model per k) and copies ``evaluation.json`` and the accuracy
curve to ``bench/results/evaluation.json`` (digits) or ``evaluation_<source>.json``.
Usage: ``python bench/evaluation.py [--data digits|mnist|PATH] [--steps N] [--synthetic-per-class N]
[--generator-steps N] [--seeds 5] [--ks 1,2,5,10,20,40]``; one torch thread (``OMP_NUM_THREADS=1``) lets two sources run side by side.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from models.reference import DataConfig  # noqa: E402
from sdg.evaluate import EvaluationPlan, headline_sentences, run_evaluation  # noqa: E402
from sdg.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--synthetic-per-class", type=int, default=100)
    parser.add_argument("--generator-steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ks", default="1,2,5,10,20,40", help="The grid of labels per class (extended past it).")
    args = parser.parse_args()
    console = Console()
    settings = Settings(data=DataConfig(source=args.data))
    plan = EvaluationPlan(ks=tuple(int(k) for k in args.ks.split(",")), seeds=tuple(range(args.seeds)), steps=args.steps,
                          synthetic_per_class=args.synthetic_per_class, generator_steps=args.generator_steps)
    out = ROOT / "runs" / f"evaluation-{settings.run_id}"
    evaluation = run_evaluation(settings, plan, out, console=console)
    suffix = "" if args.data == "digits" else f"_{Path(args.data).name}"
    results = ROOT / "bench" / "results"
    shutil.copy(out / "evaluation.json", results / f"evaluation{suffix}.json")
    shutil.copy(out / "accuracy_vs_labels.png", results / f"evaluation{suffix}.png")
    for line in headline_sentences(evaluation):
        console.print(line)


if __name__ == "__main__":
    main()
