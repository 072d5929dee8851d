"""Benchmark: the cost of streaming quality metrics, and how well the gate catches known-bad samples.

- window update: what the quality processor does per arriving sample (features through ONNX Runtime,
  realism, memorization, running-moment update), p50/p99;
- window close: scoring a full 200-sample window (tumbling, per class, sliding) and deciding its samples;
- full evaluation (the baseline, same process): 1,000 generated vs 1,000 real from images, covariance
  recomputed, FID + precision/recall/density/coverage;
- router: a stream of held-out real digits with noise, wrong-class and memorized samples mixed in;
  precision and recall of ``rejected`` + ``review`` for catching the bad ones, against routing on
  softmax confidence alone;
- the trained generators in the model registry (if any): decisions and the latest window per generator.

Trains the labeler and the extractor at their default sizes first (about a minute and a half).
Writes ``bench/results/quality.json``. Usage: ``python bench/quality.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.catalog import GeneratorCatalog  # noqa: E402
from models.corruption import mixed_stream  # noqa: E402
from models.generator import GeneratorError  # noqa: E402
from models.image import to_uint8  # noqa: E402
from models.quality import RunningMoments, fid, prdc  # noqa: E402
from models.reference import load_digits_reference, make_splits  # noqa: E402
from processors.generate import GenerateConfig, generate, plan_jobs  # noqa: E402
from processors.label import label  # noqa: E402
from processors.quality import GeneratorWindows, QualityConfig, gate_offline  # noqa: E402
from schemas.records import GeneratedSample, QualityWindow, SampleDecision  # noqa: E402
from sdg.report import quality_table  # noqa: E402
from sdg.settings import Settings  # noqa: E402
from sdg.training import train_quality_models  # noqa: E402

console = Console()


def main() -> None:
    splits = make_splits(load_digits_reference())
    state = Path(tempfile.mkdtemp())
    models = train_quality_models(Settings(state_dir=state), splits=splits, console=console)
    settings = Settings(state_dir=state, quality=QualityConfig(window_size=500))
    judge, labeler = settings.judge(splits), settings.labeler()
    results: dict[str, object] = {"labeler_test_accuracy": models.test_accuracy, "labeler_labels": models.labels_used}

    # per-sample window update and window close
    stream = mixed_stream(splits, good=200, noise=0, wrong_class=0, run_id="bench", seed=1)
    labeled = label([s for s, _ in stream], labeler=labeler)
    closes = []
    for _ in range(2):  # the first close also computes the real-vs-real baselines, once per (class, size)
        windows = GeneratorWindows("bench", judge.reference.sets[None].features.shape[1], 5)
        times = []
        for record in labeled:
            start = time.perf_counter()
            windows.add(judge.assess([record], windows.window_id())[0], 0)  # type: ignore[list-item]
            times.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        judge.close(windows)
        closes.append((time.perf_counter() - start) * 1000)
    first_close_ms, close_ms = closes
    update_p50, update_p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))

    # baseline: a full 1,000-vs-1,000 evaluation from images
    rng = np.random.default_rng(0)
    images = to_uint8(splits.reference.images)
    fake_images, real_images = images[rng.integers(0, len(images), 1000)], images[rng.integers(0, len(images), 1000)]
    start = time.perf_counter()
    fake, real = judge.extractor.run(fake_images), judge.extractor.run(real_images)
    fid(RunningMoments(fake.shape[1]).update(fake), RunningMoments(real.shape[1]).update(real))
    prdc(real, fake, k=5)
    full_ms = (time.perf_counter() - start) * 1000
    results |= {"window_update_p50_ms": round(update_p50, 3), "window_update_p99_ms": round(update_p99, 3),
                "window_close_200_ms": round(close_ms, 1), "first_window_close_200_ms": round(first_close_ms, 1),
                "full_evaluation_1000_vs_1000_ms": round(full_ms, 1),
                "window_update_vs_full_evaluation_ratio": round(update_p50 / full_ms, 5),
                "window_close_vs_full_evaluation_ratio": round(close_ms / full_ms, 3)}
    cost = Table("operation", "ms", title="quality metric cost")
    cost.add_row("window update, per sample (p50 / p99)", f"{update_p50:.3f} / {update_p99:.3f}")
    cost.add_row("window close, 200 samples (score + decide)", f"{close_ms:.1f}")
    cost.add_row("the first window close (with the real-vs-real baselines)", f"{first_close_ms:.1f}")
    cost.add_row("full evaluation, 1,000 vs 1,000 (baseline)", f"{full_ms:.1f}")
    console.print(cost)

    # the router on known-bad samples
    stream = mixed_stream(splits, good=380, noise=40, wrong_class=60, memorized=20, run_id="bench", seed=2)
    out = gate_offline(judge, labeler, [s for s, _ in stream])
    decisions = {r.sample.sample_id: r for r in out if isinstance(r, SampleDecision)}
    kinds = [(kind, decisions[s.sample_id]) for s, kind in stream]
    flagged = np.array([d.gate.decision != "accepted" for _, d in kinds])
    bad = np.array([kind != "good" for kind, _ in kinds])
    by_confidence = np.array([d.label.confidence < 0.9 for _, d in kinds])
    router = Table("kind", "n", "accepted", "review", "rejected", title="router on a stream with known-bad samples")
    for kind in ("good", "noise", "wrong_class", "memorized"):
        c = Counter(d.gate.decision for k, d in kinds if k == kind)
        router.add_row(kind, str(sum(c.values())), str(c["accepted"]), str(c["review"]), str(c["rejected"]))
        results[f"router_{kind}"] = dict(c)
    console.print(router)
    for name, flags in (("router", flagged), ("confidence_only", by_confidence)):
        precision = float((flags & bad).sum() / max(flags.sum(), 1))
        recall = float((flags & bad).sum() / bad.sum())
        results[f"{name}_catch_precision"], results[f"{name}_catch_recall"] = round(precision, 3), round(recall, 3)
        console.print(f"{name}: rejected+review catch bad samples: precision {precision:.3f}, recall {recall:.3f}")

    # the trained generators, if the registry has them
    catalog = GeneratorCatalog(Settings().models_dir)
    windows_out: list[QualityWindow] = []
    gens = Table("generator", "accepted", "review", "rejected", "labeler agrees",
                 title="trained generators, 500 samples")
    for name in ("gan", "diffusion", "procedural"):
        try:
            jobs = plan_jobs(name, classes=list(range(10)), per_class=50, seed=5, run_id="bench", job_size=500)
            samples = [r for r in generate(jobs[0], generators=catalog, config=GenerateConfig())
                       if isinstance(r, GeneratedSample)]
        except GeneratorError as e:
            console.print(f"{name}: skipped ({e})")
            continue
        out = gate_offline(judge, labeler, samples)
        c = Counter(r.gate.decision for r in out if isinstance(r, SampleDecision))
        agrees = float(np.mean([r.label.agrees for r in out if isinstance(r, SampleDecision)]))
        windows_out += [r for r in out if isinstance(r, QualityWindow) and r.kind == "sliding"]
        results[f"generator_{name}"] = dict(c) | {"labeler_agreement": round(agrees, 3)}
        gens.add_row(name, str(c["accepted"]), str(c["review"]), str(c["rejected"]), f"{agrees:.1%}")
    console.print(gens)
    if windows_out:
        console.print(quality_table(windows_out))
        for w in windows_out:
            results[f"window_{w.generator}"] = {"metrics": w.metrics.model_dump(),
                                                "baseline": w.baseline.model_dump() if w.baseline else None,
                                                "gate_state": w.gate_state}
    out_path = ROOT / "bench" / "results" / "quality.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
