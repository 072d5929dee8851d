"""Experiment: does answering the review queue in the console's order teach the labeler faster than at random?

The queue: the real digits of the train split that carry no label (the few labels excepted), each scored by
the current labeler as the gate scores samples (label, margin, entropy). A person's answers are simulated by
the true labels (the oracle). Each round answers ``--per-round`` samples, either the top of the console's
order (``console.queue.ordered``: doubt first, spread across classes) or at random, retrains the labeler on
the few labels plus every answer so far, and measures it on the real test split. The labeler retrained here
is a multinomial logistic regression on the pixels (seconds per round, so many seeds fit); the deployed CNN
labeler would be retrained the same way from the same answers.

Both arms share each seed's split and few labels (a paired comparison). Writes
``bench/results/active_learning.json``: accuracy per round for both arms (mean, 95% interval over seeds), the
paired difference at each budget, and ``answers_to_match_random_ratio``: the answers the ordered queue needs
to reach the random queue's final accuracy, over the random queue's answers (goal ≤ 0.5).
Usage: ``python bench/active_learning.py [--seeds 5] [--rounds 10] [--per-round 10] [--few 5]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from console.queue import ordered  # noqa: E402
from models.reference import load_digits_reference, make_splits  # noqa: E402
from schemas.examples import example  # noqa: E402
from schemas.records import Gate, Label, SampleDecision  # noqa: E402
from sdg import stats  # noqa: E402


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval."""
    found = stats.interval(values.tolist())
    return found.mean, found.low, found.high


def queue_of(pool: np.ndarray, probabilities: np.ndarray, template: SampleDecision) -> list[SampleDecision]:
    """The pool as review decisions, scored by the current labeler (what the console orders)."""
    top = -np.sort(-probabilities, axis=1)
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-12, 1))).sum(axis=1)
    out = []
    for index, p, margin, h in zip(pool, probabilities, top[:, 0] - top[:, 1], entropy):
        sample = template.sample.model_copy(update={"sample_id": f"real-{index}", "generator": "real"})
        label = Label(label=int(p.argmax()), confidence=float(p.max()), margin=float(np.clip(margin, 0, 1)),
                      entropy=float(h), agrees=True, labeler="probe", labeler_version="0")
        out.append(template.model_copy(update={"sample": sample, "label": label}))
    return out


def run(seed: int, *, rounds: int, per_round: int, few: int) -> dict[str, list[float]]:
    from sklearn.linear_model import LogisticRegression

    reference = load_digits_reference()
    splits = make_splits(reference, labels_per_class=few, seed=seed)
    x = reference.images.reshape(len(reference.images), -1)
    y = reference.labels
    template = example(SampleDecision, 0, "al").model_copy(
        update={"gate": Gate(decision="review", reason="uncertain label", gate="quality")})
    curves: dict[str, list[float]] = {}
    for arm in ("ordered", "random"):
        rng = np.random.default_rng(seed)
        labeled = list(splits.few)
        pool = np.array(sorted(set(splits.train.tolist()) - set(labeled)))
        accuracy = []
        for r in range(rounds + 1):
            model = LogisticRegression(max_iter=2000, C=1.0).fit(x[labeled], y[labeled])
            accuracy.append(float(model.score(x[splits.test], y[splits.test])))
            if r == rounds:
                break
            if arm == "ordered":
                queue = queue_of(pool, model.predict_proba(x[pool]), template)
                picked = [int(d.sample.sample_id.split("-")[1]) for d in ordered(queue, reference.num_classes)[:per_round]]
            else:
                picked = rng.choice(pool, per_round, replace=False).tolist()
            labeled += picked  # the oracle's answers: the true labels
            pool = np.array(sorted(set(pool.tolist()) - set(picked)))
        curves[arm] = accuracy
    return curves


def main() -> None:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--few", type=int, default=5, help="real labels per class before any answer")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = [run(s, rounds=args.rounds, per_round=args.per_round, few=args.few)
            for s in track(range(args.seeds), description="seeds")]
    ordered_acc = np.array([r["ordered"] for r in runs])
    random_acc = np.array([r["random"] for r in runs])
    budgets = [r * args.per_round for r in range(args.rounds + 1)]
    final_random = random_acc[:, -1]
    needed = []  # per seed: answers the ordered queue needs to reach the random queue's final accuracy
    for o, target in zip(ordered_acc, final_random):
        reached = [b for b, a in zip(budgets, o) if a >= target]
        needed.append(reached[0] if reached else float("nan"))
    needed_arr = np.array(needed, dtype=float)
    per_round = []
    table = Table("answers", "ordered", "random", "ordered − random (95% CI)", title="labeler accuracy on the real test split")
    for k, budget in enumerate(budgets):
        o, lo_o, hi_o = interval(ordered_acc[:, k])
        rnd, lo_r, hi_r = interval(random_acc[:, k])
        d, lo_d, hi_d = interval(ordered_acc[:, k] - random_acc[:, k])
        verdict = "beats" if lo_d > 0 else "worse" if hi_d < 0 else "within noise"
        per_round.append({"answers": budget, "ordered": {"mean": o, "ci95": [lo_o, hi_o]},
                          "random": {"mean": rnd, "ci95": [lo_r, hi_r]},
                          "difference": {"mean": d, "ci95": [lo_d, hi_d], "verdict": verdict}})
        table.add_row(str(budget), f"{o:.1%}", f"{rnd:.1%}", f"{d:+.1%} [{lo_d:+.1%}, {hi_d:+.1%}] {verdict}")
    ratio = float(np.nanmean(needed_arr)) / budgets[-1]
    result: dict[str, Any] = {
        "source": "digits", "learner": "logistic regression on pixels (the labeler retrained each round)",
        "oracle": "true labels of real unlabeled train images", "seeds": args.seeds, "few_labels_per_class": args.few,
        "per_round": args.per_round, "rounds": args.rounds, "accuracy": per_round,
        "answers_ordered_to_match_random": needed, "random_answers": budgets[-1],
        "answers_to_match_random_ratio": ratio, "goal_ratio": 0.5, "goal_met": bool(ratio <= 0.5),
        "wall_s": time.perf_counter() - started,
    }
    out = ROOT / "bench" / "results" / "active_learning.json"
    out.write_text(json.dumps(result, indent=1))
    console = Console()
    console.print(table)
    console.print(f"the ordered queue reaches the random queue's final accuracy ({final_random.mean():.1%}) after "
                  f"{np.nanmean(needed_arr):.0f} answers against {budgets[-1]}: answers_to_match_random_ratio {ratio:.2f} "
                  f"(goal ≤ 0.5) → {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
