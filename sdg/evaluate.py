"""``sdg evaluate``: the label-cost experiment, on the real test split.

Every arm trains the same edge architecture with the same budget of steps, over several seeds:

* ``real-full``: every train label;
* ``real-few``: k labels per class;
* ``few+pseudo``: k labels plus the unlabeled real train images, FixMatch-style (the strongest arm
  that uses no generator);
* ``synthetic-only`` per generator: the generator's samples that the labeler agrees with;
* ``few+synthetic`` and ``few+synthetic+pseudo`` per generator;
* ``few+human``: k labels plus the samples people labeled in the console's review queue (when there are any).

Label accounting counts every distinct real label any part used: the edge model's, the generator's
(its conditioning, or the teacher behind its pseudo-labels) and the labeler's that filtered the
synthetic samples (with the review queue's answers, when the labeler was retrained on them), and each answer
in ``few+human``. A generator trained on all labels makes its arms cost all labels.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.reference import LabelBudget, Splits, distinct_labels, make_splits

WITHIN_PT = 0.5  # "matches real-full": mean accuracy within this many points


@dataclass(frozen=True)
class EvaluationPlan:
    ks: tuple[int, ...] = (5, 10, 20)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    synthetic_per_class: int = 200
    generators: tuple[str, ...] | None = None  # kind or kind@version; None: every one in the registry + procedural


@dataclass
class Arm:
    name: str
    k: int | None
    generator: str | None
    accuracies: list[float]
    real_labels: int  # distinct real labels across the whole pipeline
    num_classes: int = 10

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def labels_per_class(self) -> float:
        return self.real_labels / self.num_classes


@dataclass(frozen=True)
class Synthetic:
    name: str
    images: np.ndarray  # (N, H, W[, C]) in [0, 1]
    labels: np.ndarray
    budgets: list[LabelBudget]  # the generator's and the labeler's
    kept: float  # fraction the labeler agreed with


def synthetic_sets(settings: Any, plan: EvaluationPlan, console: Console) -> list[Synthetic]:
    """Samples of each generator, kept where the labeler agrees with the conditioning (the gate's first test)."""
    from sdg.training import labeler_budgets  # with the review queue's answers when the labeler learned them

    labeler, labeler_labels = settings.labeler(), labeler_budgets(settings)
    catalog, registry = settings.catalog(), settings.registry()
    wanted = plan.generators or tuple([f"{kind}@{v}" for kind in ("gan", "diffusion") for v in registry.versions(kind)]
                                      + ["procedural"])
    out = []
    for spec in wanted:
        kind, _, version = spec.partition("@")
        model = catalog.get(kind, version or None)
        classes = [c for c in labeler.classes for _ in range(plan.synthetic_per_class)]
        images = []
        with console.status(f"generating {len(classes)} samples with {kind}@{model.version}"):
            for start in range(0, len(classes), 500):
                chunk = classes[start:start + 500]
                images.append(model(list(range(start, start + len(chunk))), chunk).images)
        pixels = np.concatenate(images)
        agree = np.asarray(labeler.model.run(pixels).argmax(1)) == np.asarray(classes)
        out.append(Synthetic(f"{kind}@{model.version}", pixels[agree].astype(np.float32) / 255.0,
                             np.asarray(classes)[agree], [*model.label_budgets, *labeler_labels],
                             float(agree.mean())))
    return out


def run_evaluation(settings: Any, plan: EvaluationPlan, out: Path, *, console: Console) -> dict[str, Any]:
    """Train every arm, write ``evaluation.json`` and the report into ``out``; returns the evaluation."""
    from models.edge import EdgeConfig, accuracy, train_edge
    from models.image import sample_grid
    from sdg.training import human_answers

    out.mkdir(parents=True, exist_ok=True)
    reference = settings.reference()
    base = make_splits(reference)
    test_x, test_y = base.test_set()
    synthetic = synthetic_sets(settings, plan, console)
    human = human_answers(settings, reference)  # the review queue's answers: real labels, counted as such
    splits: dict[int, Splits] = {k: make_splits(reference, labels_per_class=k) for k in plan.ks}
    full = base.labeled("train")
    jobs: list[tuple[str, int | None, Synthetic | None, bool]] = [("real-full", None, None, False)]
    jobs += [("synthetic-only", None, s, False) for s in synthetic]
    for per_class in plan.ks:
        jobs += [("real-few", per_class, None, False), ("few+pseudo", per_class, None, True)]
        jobs += [("few+human", per_class, None, False)] if human is not None else []
        jobs += [(name, per_class, s, pseudo) for s in synthetic
                 for name, pseudo in (("few+synthetic", False), ("few+synthetic+pseudo", True))]
    arms: list[Arm] = []
    started = time.monotonic()
    with Progress(console=console) as progress:
        task = progress.add_task("training edge models (arms × seeds)", total=len(jobs) * len(plan.seeds))
        for name, k, syn, pseudo in jobs:
            if name == "real-full":
                images, labels, budgets = full.images, full.labels, [full.budget]
            elif k is None:
                images, labels, budgets = full.images[:0], full.labels[:0], []
            else:
                few = splits[k].labeled("few")
                images, labels, budgets = few.images, few.labels, [few.budget]
                if name == "few+human" and human is not None:
                    images, labels = np.concatenate([images, human.images]), np.concatenate([labels, human.labels])
                    budgets = [few.budget, human.budget]
            unlabeled = splits[k].unlabeled_images() if pseudo and k is not None else None
            accuracies = []
            for seed in plan.seeds:
                config = EdgeConfig(steps=plan.steps, seed=seed, num_classes=reference.num_classes)
                model = train_edge(images, labels, config,
                                   synthetic=(syn.images, syn.labels) if syn is not None else None, unlabeled=unlabeled)
                accuracies.append(accuracy(model, test_x, test_y))
                progress.advance(task)
            arms.append(Arm(name, k, syn.name if syn else None, accuracies,
                            distinct_labels(budgets + (syn.budgets if syn else [])), reference.num_classes))
    evaluation = _summarize(arms, plan, synthetic, time.monotonic() - started)
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    console.print(evaluation_table(arms, evaluation))
    grids = {}
    for syn in synthetic:
        grids[syn.name] = out / f"samples_{syn.name.replace('@', '_')}.png"
        grids[syn.name].write_bytes(sample_grid((syn.images * 255).astype(np.uint8), [int(c) for c in syn.labels]))
    figures = {"accuracy against real labels": accuracy_curve(evaluation, out / "accuracy_vs_labels.png")}
    windows = quality_over_time(settings, out / "quality_windows.png", run=settings.run_id)
    if windows is not None:
        figures["quality windows over time"] = windows
    if (out / "thermal.png").exists():
        figures["thermal: the demo's pump failure"] = out / "thermal.png"
    report = write_report(evaluation, out, grids=grids, figures=figures)
    console.print(f"report: {report} and {report.with_suffix('.html')}")
    return evaluation


def _summarize(arms: list[Arm], plan: EvaluationPlan, synthetic: list[Synthetic], seconds: float) -> dict[str, Any]:
    full = next(a for a in arms if a.name == "real-full")
    matching = [a for a in arms if a.name != "real-full" and a.mean >= full.mean - WITHIN_PT / 100]
    best = min(matching, key=lambda a: (a.real_labels, -a.mean)) if matching else None
    headline: dict[str, Any] = {"real_full": {"mean": full.mean, "std": full.std, "labels": full.real_labels,
                                              "labels_per_class": full.labels_per_class},
                                "labels_per_class_to_match_real_full": best.labels_per_class if best else None,
                                "matching_arm": _arm_dict(best) if best else None}
    synthetic_vs_baseline = {}
    for k in plan.ks:  # at the same count of real labels: the best arm without a generator against the best with one
        baseline = max((a for a in arms if a.k == k and a.generator is None and a.name != "few+human"),
                       key=lambda a: a.mean)
        same_budget = [a for a in arms if a.generator is not None and a.real_labels == baseline.real_labels]
        top = max(same_budget, key=lambda a: a.mean, default=None)
        if top is not None:
            synthetic_vs_baseline[str(k)] = {"no_generator": _arm_dict(baseline), "best_with_generator": _arm_dict(top),
                                             "synthetic_beats_baseline": top.mean > baseline.mean}
    headline["synthetic_vs_no_generator_baseline"] = synthetic_vs_baseline
    return {"plan": asdict(plan), "seconds": round(seconds, 1), "within_pt": WITHIN_PT, "headline": headline,
            "labels_per_class_to_match_real_full": headline["labels_per_class_to_match_real_full"],
            "synthetic": [{"generator": s.name, "kept": len(s.labels), "agreement": s.kept,
                           "real_labels": distinct_labels(s.budgets)} for s in synthetic],
            "arms": [_arm_dict(a) for a in arms]}


def _arm_dict(arm: Arm) -> dict[str, Any]:
    return {"arm": arm.name, "k": arm.k, "generator": arm.generator, "mean": arm.mean, "std": arm.std,
            "accuracies": arm.accuracies, "real_labels": arm.real_labels, "labels_per_class": arm.labels_per_class}


def evaluation_table(arms: list[Arm], evaluation: dict[str, Any]) -> Table:
    table = Table("arm", "k", "generator", "real labels (per class)", "accuracy (mean ± std)",
                  title="label cost on the real test split")
    for arm in sorted(arms, key=lambda a: (a.k or 0, a.name, a.generator or "")):
        table.add_row(arm.name, str(arm.k or "-"), arm.generator or "-",
                      f"{arm.real_labels} ({arm.labels_per_class:g})",
                      f"{100 * arm.mean:.2f} ± {100 * arm.std:.2f}%")
    match = evaluation["labels_per_class_to_match_real_full"]
    table.caption = ("no arm matches real-full within 0.5 pt" if match is None else
                     f"fewest real labels per class matching real-full within 0.5 pt: {match:g}")
    return table


def accuracy_curve(evaluation: dict[str, Any], out: Path) -> Path:
    """Accuracy against the real labels each arm cost (per class), one line per arm family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    full = evaluation["headline"]["real_full"]
    ax.axhspan(100 * (full["mean"] - WITHIN_PT / 100), 100 * full["mean"], color="tab:green", alpha=0.15,
               label=f"real-full ({full['labels_per_class']:g} labels/class) − {WITHIN_PT} pt")
    families: dict[str, list[dict[str, Any]]] = {}
    for arm in evaluation["arms"]:
        if arm["arm"] != "real-full":
            families.setdefault(arm["arm"] + (f" [{arm['generator']}]" if arm["generator"] else ""), []).append(arm)
    for name, members in sorted(families.items()):
        members.sort(key=lambda a: a["labels_per_class"])
        ax.errorbar([a["labels_per_class"] for a in members], [100 * a["mean"] for a in members],
                    yerr=[100 * a["std"] for a in members], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("real labels per class, counted across the pipeline (log)")
    ax.set_ylabel("accuracy on the real test split (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def quality_over_time(settings: Any, out: Path, *, run: str) -> Path | None:
    """FID and recall of each generator's sliding windows over the run, from the quality_windows table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdg.history import query

    tables = settings.delta_tables()
    if tables.open("quality_windows") is None:
        return None
    rows = query(tables, "SELECT generator, end_ms, metrics_json, baseline_json FROM quality_windows WHERE run_id = ? "
                 "AND kind = 'sliding' AND class_label IS NULL ORDER BY end_ms", params=[run]).to_pylist()
    if not rows:
        return None
    fig, (fid, recall) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t0 = rows[0]["end_ms"]
    for generator in sorted({r["generator"] for r in rows}):
        mine = [r for r in rows if r["generator"] == generator]
        t = [(r["end_ms"] - t0) / 1000 for r in mine]
        metrics = [json.loads(r["metrics_json"]) for r in mine]
        fid.plot(t, [m["fid"] for m in metrics], marker="o", label=generator)
        recall.plot(t, [m["recall"] for m in metrics], marker="o", label=generator)
        baseline = json.loads(mine[-1]["baseline_json"] or "null")
        if baseline:
            recall.axhline(baseline["recall"], linestyle=":", linewidth=1)
    fid.set_ylabel("FID (sliding window)")
    recall.set_ylabel("recall (dotted: real-vs-real)")
    recall.set_xlabel("s since the first window")
    fid.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(evaluation: dict[str, Any], out: Path, *, grids: dict[str, Path], figures: dict[str, Path]) -> Path:
    """``report.md`` and ``report.html`` in ``out``: the headline, the table of arms, and the pictures."""
    headline = evaluation["headline"]
    match = evaluation["labels_per_class_to_match_real_full"]
    lines = ["# sdg-edge: labels saved on real data", "",
             f"Real-full: {100 * headline['real_full']['mean']:.2f} ± {100 * headline['real_full']['std']:.2f}% "
             f"with {headline['real_full']['labels']} real labels.", "",
             ("No arm matched real-full within 0.5 pt." if match is None else
              f"Fewest real labels per class, counted across the pipeline, that match real-full within 0.5 pt: "
              f"**{match:g}** ({headline['matching_arm']['arm']}, "
              f"{headline['matching_arm']['generator'] or 'no generator'})."),
             ""]
    for k, cmp in headline["synthetic_vs_no_generator_baseline"].items():
        base, top = cmp["no_generator"], cmp["best_with_generator"]
        lines.append(f"- {base['labels_per_class']:g} real labels per class: best without a generator "
                     f"({base['arm']}, k = {k}) "
                     f"{100 * base['mean']:.2f}%; best with a generator at the same count {100 * top['mean']:.2f}% "
                     f"({top['arm']}, k = {top['k']}, {top['generator']}): synthetic data "
                     f"{'beats' if cmp['synthetic_beats_baseline'] else 'does not beat'} the baseline.")
    lines += ["", "| arm | k | generator | real labels (per class) | accuracy |", "|---|---|---|---|---|"]
    for arm in evaluation["arms"]:
        lines.append(f"| {arm['arm']} | {arm['k'] or '-'} | {arm['generator'] or '-'} | {arm['real_labels']} "
                     f"({arm['labels_per_class']:g}) | {100 * arm['mean']:.2f} ± {100 * arm['std']:.2f}% |")
    lines.append("")
    pictures = {**{f"samples: {name}": path for name, path in grids.items()}, **figures}
    for title, path in pictures.items():
        lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    import markdown

    page = markdown.markdown("\n".join(lines), extensions=["tables"])
    (out / "report.html").write_text("<!doctype html><meta charset='utf-8'><title>sdg-edge report</title>"
                                     "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
                                     "td,th{padding:2px 8px}img{max-width:100%}</style>\n" + page)
    return out / "report.md"
