"""``sdg evaluate``: the label-cost experiment, on the real test split.

Every arm trains the same edge network (the contrastive extractor's trunk, trained on the unlabeled train images,
as its start) with the same budget of steps, on the same seeds; seed s of every arm sees the same split, the same
few labels and the same initialisation, so arms compare seed by seed (``sdg.stats``):

* ``real-full``: every train label;
* ``real-few``: k labels per class;
* ``few+pseudo``: k labels plus the unlabeled real train images, FixMatch-style: the semi-supervised learner
  that uses no generator. Its seed-0 model is also the *teacher* at k;
* ``few+pseudo+<generator>``: the same, plus generated samples the quality gate accepted. For each kind in
  ``dpt`` a generator is trained per k the DPT way: the teacher labels every unlabeled train image and the
  generator learns from all of them (it costs only the k labels behind the teacher); the teacher, deployed as
  INT8 ONNX, is the gate's labeler. ``generators`` adds registry generators as they are (their labels count);
* ``few+<generator>``: the same accepted samples with the k labels and no unlabeled images (real-few plus the
  generator), so a generator arm is measured apart from the semi-supervised learner too;
* ``few+pseudo+stream``: the same, plus the samples a run of the pipeline accepted (``stream_run``: generated and
  ingested real ones, labeled and gated by the stream's processors, read from the Delta tables), at the k of the
  pipeline's labeler; its labeler's, generators' and reviewers' labels count;
* ``few+human``: k labels plus the samples people labeled in the console's review queue (when there are any).

Label accounting counts every distinct real label any part used: the edge model's, the generator's and the
teacher's. For each arm the experiment finds the fewest labels per class whose mean accuracy is within
``WITHIN_PT`` of real-full: it runs the ``ks`` grid, stops an arm once it matches, and past the grid doubles
k for the arms that have not matched yet, up to every train label.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.reference import LabelBudget, LabeledData, Splits, distinct_labels, make_splits
from sdg.stats import MIN_SEEDS, interval, paired

WITHIN_PT = 0.5  # "matches real-full": mean accuracy within this many points
BASELINE = "few+pseudo"  # the semi-supervised learner without a generator, and the teacher behind the generators
STREAM = f"{BASELINE}+stream"  # with a run's accepted samples, as the pipeline labeled and gated them


@dataclass(frozen=True)
class EvaluationPlan:
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 40)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 1000
    synthetic_per_class: int = 200
    dpt: tuple[str, ...] = ("diffusion",)  # generator kinds trained per k on the teacher's labels
    generators: tuple[str, ...] = ()  # registry generators (kind or kind@version), used as they are
    generator_steps: int | None = None  # the DPT generators' training steps (default: the kind's)
    stream_run: str | None = None  # a run whose accepted samples (from the Delta tables) make an arm, at its k
    extractor_steps: int = 800
    extend: bool = True  # past the grid, double k for the arms that have not matched real-full


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
    name: str  # kind@version
    kind: str  # what names its arms across k: the DPT kind, a registry kind[@version], or "stream"
    images: np.ndarray  # (N, H, W[, C]) in [0, 1]
    labels: np.ndarray
    budgets: list[LabelBudget]  # the generator's and the gate labeler's
    accepted: float  # fraction of the generated samples the gate accepted


@dataclass
class Experiment:
    """What every arm shares: the data, the extractor whose trunk starts every edge model, the teachers."""

    settings: Any
    plan: EvaluationPlan
    out: Path
    console: Console
    base: Splits
    extractor: Any  # FeatureExtractor: its trunk starts every edge model
    width: int  # the extractor's width, so the edge models' too
    extractor_onnx: Path  # the quality gate's extractor
    teachers: dict[int, Any] = field(default_factory=dict)  # k → the seed-0 few+pseudo model

    @property
    def num_classes(self) -> int:
        return self.base.reference.num_classes

    def splits(self, k: int) -> Splits:
        return make_splits(self.base.reference, labels_per_class=k)  # nested: k's few labels hold each smaller k's

    def train(self, data: LabeledData, seed: int, *, synthetic: Synthetic | None = None,
              unlabeled: np.ndarray | None = None) -> Any:
        from models.edge import EdgeConfig, train_edge

        config = EdgeConfig(steps=self.plan.steps, seed=seed, num_classes=self.num_classes,
                            width=self.width)
        return train_edge(data.images, data.labels, config, init=self.extractor.net, unlabeled=unlabeled,
                          synthetic=(synthetic.images, synthetic.labels) if synthetic is not None else None)


def run_evaluation(settings: Any, plan: EvaluationPlan, out: Path, *, console: Console) -> dict[str, Any]:
    """Train every arm, write ``evaluation.json`` and the report into ``out``; returns the evaluation."""
    from models.edge import accuracy
    from models.features import ExtractorConfig, train_extractor
    from models.image import sample_grid
    from models.labeler import deploy
    from sdg.training import extractor_spec, human_answers

    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reference = settings.reference()
    base = make_splits(reference)
    test_x, test_y = base.test_set()
    with console.status("contrastive extractor on the unlabeled train images (costs no labels)"):
        e_config = ExtractorConfig(steps=plan.extractor_steps)
        extractor = train_extractor(reference.images[base.train], e_config)
        onnx = deploy(extractor.net, out / "models" / "extractor", extractor_spec(reference.image_size, reference.channels),
                      calibration=reference.images[base.train][:512], config={"kind": "features"}).fp32
    experiment = Experiment(settings, plan, out, console, base, extractor, e_config.width, onnx)
    human = human_answers(settings, reference)  # the review queue's answers: real labels, counted as such
    max_k = int(min(np.bincount(reference.labels[base.train], minlength=reference.num_classes)))
    arms: list[Arm] = []
    synthetic: list[Synthetic] = []
    kinds = [*plan.dpt, *plan.generators]
    families = ["real-few", BASELINE, *(f"{base}+{g}" for g in kinds for base in (BASELINE, "few"))]
    families += ["few+human"] if human is not None else []
    stream_k = settings.splits().labels_per_class if plan.stream_run is not None else None
    families += [STREAM] if plan.stream_run is not None else []
    with Progress(console=console, transient=True) as progress:
        seeds = progress.add_task("edge models (arms × seeds)", total=None)

        def trained(name: str, k: int | None, data: LabeledData, *, syn: Synthetic | None = None,
                    unlabeled: np.ndarray | None = None, extra: tuple[LabelBudget, ...] = ()) -> Arm:
            base = BASELINE if unlabeled is not None else "real-few"
            twin = next((a for a in arms if a.name == base and a.k == k), None)
            if syn is not None and not len(syn.labels) and twin is not None:
                accuracies = list(twin.accuracies)  # the gate accepted nothing: its twin's training, seed for seed
            else:
                accuracies = []
                for seed in plan.seeds:
                    model = experiment.train(data, seed, synthetic=syn, unlabeled=unlabeled)
                    if name == BASELINE and seed == plan.seeds[0] and k is not None:
                        experiment.teachers[k] = model
                    accuracies.append(accuracy(model, test_x, test_y))
                    progress.advance(seeds)
            budgets = [data.budget, *extra, *(syn.budgets if syn is not None else [])]
            arm = Arm(name, k, syn.name if syn else None, accuracies, distinct_labels(budgets), reference.num_classes)
            arms.append(arm)
            return arm

        full = trained("real-full", None, base.labeled("train"))
        threshold = full.mean - WITHIN_PT / 100
        matched: set[str] = set()
        ks = sorted(plan.ks)
        while ks:
            k = ks.pop(0)
            if k > max_k:
                break
            splits = experiment.splits(k)
            few, unlabeled = splits.labeled("few"), splits.unlabeled_images()
            wanted = [f for f in families if f not in matched]
            progress.update(seeds, description=f"k = {k}: {', '.join(wanted)}")
            done = [trained("real-few", k, few)] if "real-few" in wanted else []
            generated = [g for g in kinds if {f"{BASELINE}+{g}", f"few+{g}"} & set(wanted)]
            if BASELINE in wanted or generated or (k == stream_k and STREAM in wanted):  # the teacher at k
                done.append(trained(BASELINE, k, few, unlabeled=unlabeled))
            if "few+human" in wanted and human is not None:
                both = LabeledData(np.concatenate([few.images, human.images]),
                                   np.concatenate([few.labels, human.labels]), few.budget)
                done.append(trained("few+human", k, both, extra=(human.budget,)))
            if k == stream_k and STREAM in wanted and (syn := accepted_stream(settings, plan.stream_run or "")):
                synthetic.append(syn)
                done.append(trained(STREAM, k, few, syn=syn, unlabeled=unlabeled))
            for kind in generated:
                syn = gated_synthetic(experiment, splits, kind, dpt=kind in plan.dpt)
                synthetic.append(syn)
                if f"{BASELINE}+{kind}" in wanted:
                    done.append(trained(f"{BASELINE}+{kind}", k, few, syn=syn, unlabeled=unlabeled))
                if f"few+{kind}" in wanted:  # the same accepted samples without the unlabeled images
                    done.append(trained(f"few+{kind}", k, few, syn=syn))
            matched |= {a.name for a in done if a.mean >= threshold}
            partial = summarize(arms, plan, synthetic, time.monotonic() - started) | {"complete": False}
            (out / "evaluation.json").write_text(json.dumps(partial, indent=2))  # what is done survives a crash
            if not ks and plan.extend and k < max_k and any(f not in matched for f in families):
                ks.append(min(2 * k, max_k))
    evaluation = summarize(arms, plan, synthetic, time.monotonic() - started) | {"complete": True}
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    console.print(evaluation_table(arms, evaluation))
    grids = {}
    for syn in (s for s in synthetic if len(s.labels)):
        grids[syn.name] = out / f"samples_{syn.name.replace('@', '_')}.png"
        grids[syn.name].write_bytes(sample_grid((syn.images[:400] * 255).astype(np.uint8),
                                                [int(c) for c in syn.labels[:400]]))
    figures = {"accuracy against real labels": accuracy_curve(evaluation, out / "accuracy_vs_labels.png")}
    windows = quality_over_time(settings, out / "quality_windows.png", run=settings.run_id)
    if windows is not None:
        figures["quality windows over time"] = windows
    if (out / "thermal.png").exists():
        figures["thermal: the demo's pump failure"] = out / "thermal.png"
    report = write_report(evaluation, out, grids=grids, figures=figures)
    console.print(f"report: {report} and {report.with_suffix('.html')}")
    return evaluation


def accepted_stream(settings: Any, run: str) -> Synthetic | None:
    """The single-object samples of ``run`` whose last decision is accepted (the gate's, or a person's), as the
    pipeline labeled them, with every real label behind them; None when there are none."""
    from sdg.history import query
    from sdg.training import decided_samples, stream_budgets

    rows, images, labels = decided_samples(settings, settings.reference(), "d.decision = 'accepted' AND s.run_id = ?",
                                           [run])
    if not rows:
        return None
    decided = query(settings.delta_tables(), "SELECT count(DISTINCT sample_id) AS n FROM lineage WHERE run_id = ? AND "
                    "decision IS NOT NULL", params=[run]).to_pylist()[0]["n"]
    budgets = stream_budgets(settings, {f"{r['generator']}@{r['generator_version']}" for r in rows},
                             [str(r["sample_id"]) for r in rows if r["decided_by"] == "human"])
    return Synthetic(f"stream@{run}", "stream", images, labels, budgets, len(rows) / max(decided, 1))


def gated_synthetic(experiment: Experiment, splits: Splits, kind: str, *, dpt: bool) -> Synthetic:
    """Generated samples of ``kind`` that the quality gate accepts, with the teacher at ``splits``' k as the gate's
    labeler. With ``dpt`` a generator is trained first on every unlabeled train image, labeled by the teacher."""
    from models.catalog import GeneratorCatalog, trainer
    from models.edge import probabilities
    from models.labeler import LabelerConfig, deploy, labeler_spec
    from models.render import RenderConfig
    from processors.generate import GenerateConfig, generate, plan_jobs
    from processors.label import Labeler
    from processors.quality import QualityJudge, gate_offline
    from schemas.records import GeneratedSample, SampleDecision
    from sdg.training import accepted_dataset

    k, plan, reference, spec_name = splits.labels_per_class, experiment.plan, splits.reference, kind
    teacher = experiment.teachers[k]
    few, unlabeled = splits.labeled("few"), splits.unlabeled_images()
    folder = experiment.out / "models" / f"teacher-k{k}"
    onnx = labeler_spec(LabelerConfig(num_classes=reference.num_classes), reference.image_size, reference.channels)
    labeler = Labeler.load(deploy(teacher, folder, onnx, calibration=reference.images[splits.train][:512], config={
        "kind": "labeler", "label_budgets": [few.budget.as_dict()]}).int8)
    render = RenderConfig(image_size=reference.image_size, channels=reference.channels, dark_ink=reference.dark_ink)
    catalog = GeneratorCatalog(experiment.out / "models", render) if dpt else experiment.settings.catalog()
    version = None
    if dpt:  # DPT: the teacher labels every unlabeled image; the generator learns from all of them
        data = LabeledData(np.concatenate([few.images, unlabeled]),
                           np.concatenate([few.labels, probabilities(teacher, unlabeled).argmax(1)]), few.budget)
        steps: dict[str, Any] = {} if plan.generator_steps is None else {"steps": plan.generator_steps}
        train, config = trainer(kind, reference.image_size, reference.channels, reference.num_classes, seed=0, **steps)
        with experiment.console.status(f"k = {k}: {kind} on {len(data.labels)} teacher-labeled images (DPT)"):
            model = train(data, config)
        version = catalog.registry.save(kind, model.weights(), model.checkpoint_config())
    else:
        kind, _, version = kind.partition("@")
    jobs = plan_jobs(kind, classes=list(range(reference.num_classes)), per_class=plan.synthetic_per_class, seed=k,
                     run_id="evaluate", version=version or None)
    samples = [r for job in jobs for r in generate(job, generators=catalog, config=GenerateConfig())
               if isinstance(r, GeneratedSample)]
    judge = QualityJudge.load(experiment.extractor_onnx, splits, experiment.settings.quality, labeler)
    decisions = [d for d in gate_offline(judge, labeler, samples)
                 if isinstance(d, SampleDecision) and d.gate.decision == "accepted"]
    images, labels = (accepted_dataset(decisions, reference.channels)[:2] if decisions else
                      (reference.images[:0], reference.labels[:0]))
    generator = catalog.get(kind, version or None)
    return Synthetic(f"{kind}@{generator.version}", spec_name, images, labels,
                     [*generator.label_budgets, few.budget], len(decisions) / max(len(samples), 1))


def summarize(arms: list[Arm], plan: EvaluationPlan, synthetic: list[Synthetic], seconds: float) -> dict[str, Any]:
    """The headline: labels per class to match real-full per arm, the label-saving factor for the best arm with a
    generator and the best without, and every comparison with a generator as paired differences per seed."""
    full = next(a for a in arms if a.name == "real-full")
    threshold = full.mean - WITHIN_PT / 100
    families: dict[str, list[Arm]] = {}
    for arm in arms:
        if arm.k is not None:
            families.setdefault(arm.name, []).append(arm)
    to_match: dict[str, dict[str, Any] | None] = {}
    for family, members in families.items():
        hit = min((a for a in members if a.mean >= threshold), key=lambda a: a.real_labels, default=None)
        to_match[family] = None if hit is None else {
            "labels_per_class": hit.labels_per_class, "k": hit.k, "mean": hit.mean,
            "label_saving_factor": full.real_labels / hit.real_labels}

    def best(with_generator: bool) -> dict[str, Any] | None:
        found = [(v["labels_per_class"], -v["mean"], f, v) for f, v in to_match.items()
                 if v is not None and any(a.generator is not None for a in families[f]) == with_generator
                 and f != "few+human"]
        return {"arm": min(found)[2], **min(found)[3]} if found else None

    comparisons = []  # each generator arm against the same arm without the generator, at the same k and seeds
    for arm in arms:
        base = BASELINE if arm.name.startswith(f"{BASELINE}+") else "real-few"
        baseline = next((a for a in arms if a.name == base and a.k == arm.k), None)
        if arm.generator is not None and baseline is not None:
            comparison = paired(arm.accuracies, baseline.accuracies)
            comparisons.append({"k": arm.k, "arm": arm.name, "generator": arm.generator, "baseline": base,
                                "real_labels": arm.real_labels, "baseline_real_labels": baseline.real_labels,
                                **comparison.as_dict(), "sentence": comparison.sentence(arm.name, base)})
    with_generator, without = best(True), best(False)
    fewer = None  # does the best arm with a generator match with fewer labels, by a margin beyond noise?
    if with_generator is not None:
        at_k = next(a for a in arms if a.name == with_generator["arm"] and a.k == with_generator["k"])
        rivals = [a for a in arms if a.k == at_k.k and a.generator is None and a.name != "few+human"]
        rival = max(rivals, key=lambda a: a.mean, default=None)
        if rival is not None and (without is None or without["labels_per_class"] > with_generator["labels_per_class"]):
            comparison = paired(at_k.accuracies, rival.accuracies)
            fewer = {"k": at_k.k, "against": rival.name, **comparison.as_dict(),
                     "sentence": comparison.sentence(at_k.name, rival.name)}
    headline = {"real_full": {"mean": full.mean, "std": full.std, "ci95": [(ci := interval(full.accuracies)).low, ci.high],
                              "labels": full.real_labels, "labels_per_class": full.labels_per_class},
                "within_pt": WITHIN_PT, "labels_per_class_to_match_real_full": to_match,
                "best_with_generator": with_generator, "best_without_generator": without,
                "generator_needs_fewer_labels": fewer}
    return {"plan": asdict(plan), "seconds": round(seconds, 1), "headline": headline,
            "labels_per_class_to_match_real_full": {"with_generator": with_generator and with_generator["labels_per_class"],
                                                    "without_generator": without and without["labels_per_class"]},
            "comparisons": comparisons,
            "synthetic": [{"generator": s.name, "kind": s.kind, "accepted": len(s.labels), "accepted_fraction": s.accepted,
                           "real_labels": distinct_labels(s.budgets)} for s in synthetic],
            "arms": [_arm_dict(a) for a in arms]}


def _arm_dict(arm: Arm) -> dict[str, Any]:
    return {"arm": arm.name, "k": arm.k, "generator": arm.generator, "mean": arm.mean, "std": arm.std,
            "ci95": [(ci := interval(arm.accuracies)).low, ci.high], "accuracies": arm.accuracies,
            "real_labels": arm.real_labels, "labels_per_class": arm.labels_per_class}


def headline_sentences(evaluation: dict[str, Any]) -> list[str]:
    """What the report and the demo say: labels to match real-full, and each claim only as its interval allows."""
    h = evaluation["headline"]
    full = h["real_full"]
    lines = [f"real-full: {100 * full['mean']:.2f}% (95% interval {100 * full['ci95'][0]:.2f}–"
             f"{100 * full['ci95'][1]:.2f}) with {full['labels']} real labels"]
    for name, key in (("with a generator", "best_with_generator"), ("without a generator", "best_without_generator")):
        best = h[key]
        lines.append(f"best arm {name}: none matched real-full within {h['within_pt']} pt" if best is None else
                     f"best arm {name}: {best['arm']} matches real-full within {h['within_pt']} pt at "
                     f"{best['labels_per_class']:g} real labels per class ({best['label_saving_factor']:.1f}× fewer labels)")
    if h["generator_needs_fewer_labels"] is not None:
        lines.append(f"at k = {h['generator_needs_fewer_labels']['k']}: {h['generator_needs_fewer_labels']['sentence']}")
    lines += [f"k = {c['k']}: {c['sentence']}" for c in evaluation["comparisons"]]
    return lines


def evaluation_table(arms: list[Arm], evaluation: dict[str, Any]) -> Table:
    table = Table("arm", "k", "generator", "real labels (per class)", "accuracy (mean, 95% interval)",
                  title="label cost on the real test split")
    for arm in sorted(arms, key=lambda a: (a.k or 0, a.name)):
        ci = interval(arm.accuracies)
        table.add_row(arm.name, str(arm.k or "-"), arm.generator or "-", f"{arm.real_labels} ({arm.labels_per_class:g})",
                      f"{100 * arm.mean:.2f}% [{100 * ci.low:.2f}, {100 * ci.high:.2f}]")
    table.caption = "\n".join(headline_sentences(evaluation)[1:3])
    return table


def accuracy_curve(evaluation: dict[str, Any], out: Path) -> Path:
    """Accuracy against the real labels each arm cost (per class), one line per arm with its 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    full = evaluation["headline"]["real_full"]
    ax.axhspan(100 * (full["mean"] - WITHIN_PT / 100), 100 * full["mean"], color="tab:green", alpha=0.15,
               label=f"real-full ({full['labels_per_class']:g} labels/class) − {WITHIN_PT} pt")
    families: dict[str, list[dict[str, Any]]] = {}
    for arm in evaluation["arms"]:
        if arm["k"] is not None:
            families.setdefault(arm["arm"], []).append(arm)
    for name, members in sorted(families.items()):
        members.sort(key=lambda a: a["labels_per_class"])
        means = np.array([100 * a["mean"] for a in members])
        errors = np.array([[m - 100 * a["ci95"][0], 100 * a["ci95"][1] - m] for m, a in zip(means, members)]).T
        ax.errorbar([a["labels_per_class"] for a in members], means, yerr=errors, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("real labels per class, counted across the pipeline (log)")
    ax.set_ylabel("accuracy on the real test split (%, 95% interval)")
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
    lines = ["# sdg-edge: labels saved on real data", "", *(f"- {line}" for line in headline_sentences(evaluation)), "",
             f"A difference is a claim only with {MIN_SEEDS} seeds or more and a 95% interval (paired by seed) that "
             "excludes zero; otherwise it reads \"within noise\".", ""]
    lines += ["| arm | k | generator | real labels (per class) | accuracy (mean, 95% interval) |", "|---|---|---|---|---|"]
    for arm in evaluation["arms"]:
        lines.append(f"| {arm['arm']} | {arm['k'] or '-'} | {arm['generator'] or '-'} | {arm['real_labels']} "
                     f"({arm['labels_per_class']:g}) | {100 * arm['mean']:.2f}% [{100 * arm['ci95'][0]:.2f}, "
                     f"{100 * arm['ci95'][1]:.2f}] |")
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
