"""Detection: a small anchor-free detector trained on real or synthetic scenes, scored on real scenes.

The test set is real: scenes composed only from held-out real images of the data source (the test split's
objects, their true classes, boxes and masks), never seen in training. The arms differ in what the detector
is trained on; scenes are composed fresh every step from the objects each arm may use:

- ``real-full``: every object of the train split, each a box a person drew (labels = objects);
- ``real-few``: ``k`` labelled objects per class;
- ``few+composed-procedural``: those plus procedurally rendered objects (no labels), composed the same way;
- ``few+procedural-scenes``: those plus whole procedural scenes (the renderer's scene mode: several digits,
  distractor strokes, light and texture), with the renderer's exact boxes and masks;
- ``few+procedural-both``: the few, the composed procedural objects and the procedural scenes in turn (what
  ``sdg train-detector`` trains the detection task's labeler on);
- ``few+composed-gan``, ``few+composed-diffusion``: the few plus GAN or diffusion objects composed the same way;
  each generator is trained per seed the label-efficient way (the few labels and the unlabeled train images
  pseudo-labeled by a FixMatch teacher trained on those few labels: no more real labels);
- ``few+layout-diffusion``: the few plus whole scenes the layout-conditioned diffusion model (``models.layout``)
  draws into seeded boxes, trained the same label-efficient way;
- ``few+composed-pseudo``: the few plus the generators' own training data composed, the unlabeled real objects
  with the teacher's labels (no generator: what the generators learn from, as a reference);
- ``few+composed-pseudo+gan``: the few, the pseudo-labeled real objects and the GAN's objects in turn.

Scored with pycocotools (COCO mAP@0.5 and mAP@0.5:0.95, boxes and masks) over ``--seeds`` seeds, with 95%
intervals and paired differences against ``real-few`` and ``real-full``. The best arm with synthetic data and
``real-full`` are exported to ONNX and quantized to INT8: mAP of both, model size and batch-1 latency.
Writes ``bench/results/detection.json`` and ``detection.png`` (real test scenes with the detector's boxes and
masks). Usage: ``python bench/detection.py [--data digits] [--seeds 5] [--k 3] [--steps 1500] [--arms A,B]
[--out detection] [--diffusion-steps N]`` (a subset of arms without ``real-full`` skips the comparisons with it and the INT8 export).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from models.catalog import trainer  # noqa: E402
from models.detector import (  # noqa: E402
    CenterNet,
    DetectorConfig,
    SceneSource,
    composer,
    decode,
    detector_spec,
    predict,
    procedural,
    real_test,
    train_detector,
)
from models.labeler import deploy  # noqa: E402
from models.reference import DataConfig, LabeledData, load_reference, make_splits  # noqa: E402
from models.render import RenderConfig  # noqa: E402
from models.runtime import OnnxModel  # noqa: E402
from models.scenes import Scenes, coco_scores, scene_grid  # noqa: E402
from sdg.stats import interval, paired  # noqa: E402
from sdg.training import pseudo_labeled  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ARMS = ("real-full", "real-few", "few+composed-procedural", "few+procedural-scenes", "few+procedural-both",
        "few+composed-gan", "few+composed-diffusion", "few+layout-diffusion", "few+composed-pseudo",
        "few+composed-pseudo+gan")
GENERATED = ARMS[5:]  # the arms that need the seed's pseudo-labels


def composed(kind: str, data: LabeledData, reference: Any, config: DetectorConfig, seed: int, *,
             per_class: int = 200, **overrides: Any) -> SceneSource:
    """Scenes composed of ``per_class`` objects per class from a GAN or diffusion model trained on ``data`` (the few
    labels and the teacher's pseudo-labels of the unlabeled train images: the demo's label-efficient way)."""
    train, generator_config = trainer(kind, reference.image_size, reference.channels, reference.num_classes, seed=seed,
                                      **overrides)
    model = train(data, generator_config)
    classes = [c for c in range(config.num_classes) for _ in range(per_class)]
    crops = model([seed * 10**6 + i for i in range(len(classes))], classes).images.astype(np.float32) / 255
    return composer(crops, np.asarray(classes), config)


def layout_scenes(data: LabeledData, reference: Any, config: DetectorConfig, seed: int, *, count: int = 1500,
                  **overrides: Any) -> SceneSource:
    """``count`` scenes (drawn from at random each step) of a layout-conditioned diffusion model trained on ``data``
    at the detector's scene size."""
    train, layout_config = trainer("layout-diffusion", reference.image_size, reference.channels, reference.num_classes,
                                   dark_ink=reference.dark_ink, scene=config.scene_size, seed=seed, **overrides)
    out = train(data, layout_config)([seed * 10**6 + i for i in range(count)],
                                     [i % config.num_classes for i in range(count)], mode="scene")
    if seed == 0:
        scene_grid(out.images[:18], out.objects[:18], RESULTS / "layout_diffusion_scenes.png",
                   title="layout diffusion (seed 0): generated scenes with the boxes and masks they were drawn into")

    def scenes(n: int, step: int) -> Scenes:
        picks = np.random.default_rng(step).integers(0, count, n)
        return Scenes(out.images[picks], [out.objects[i] for i in picks], [])
    return scenes


def generated(arm: str, data: LabeledData, reference: Any, config: DetectorConfig, seed: int,
              diffusion_steps: int | None = None) -> list[SceneSource]:
    """The extra sources of a ``GENERATED`` arm from this seed's few labels and pseudo-labels (``data``)."""
    steps = {} if diffusion_steps is None else {"steps": diffusion_steps}
    if arm == "few+composed-pseudo":
        return [composer(data.images, data.labels, config)]
    if arm == "few+composed-pseudo+gan":
        return [composer(data.images, data.labels, config), composed("gan", data, reference, config, seed)]
    if arm == "few+layout-diffusion":
        return [layout_scenes(data, reference, config, seed, **steps)]
    kind = arm.removeprefix("few+composed-")
    return [composed(kind, data, reference, config, seed, **(steps if kind == "diffusion" else {}))]


def deployed(model: CenterNet, config: DetectorConfig, folder: Path, calibration: np.ndarray, test: Scenes,
             truth: dict[str, Any]) -> dict[str, Any]:
    """fp32 and INT8 ONNX exports of ``model``: their mAP on the real test scenes, size and batch-1 latency."""
    files = deploy(model, folder, detector_spec(config), calibration=calibration / 255.0, config={})
    out: dict[str, Any] = {}
    for name, path in (("fp32", files.fp32), ("int8", files.int8)):
        session = OnnxModel(path, threads=1)
        found = decode(session.run(test.images), stride=config.stride, num_classes=config.num_classes)
        latencies = []
        for image in test.images[:300]:
            start = time.perf_counter()
            session.run(image[None])
            latencies.append((time.perf_counter() - start) * 1000)
        out[name] = {**coco_scores(truth, found), "size_kb": round(path.stat().st_size / 1024, 1),
                     "batch1_p50_ms": round(float(np.percentile(latencies, 50)), 3),
                     "batch1_p99_ms": round(float(np.percentile(latencies, 99)), 3)}
    out["int8_drop_pt"] = {key: round(100 * (out["fp32"][key] - out["int8"][key]), 2)
                           for key in ("map50", "map50_95", "mask_map50", "mask_map50_95")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--k", type=int, default=3, help="labelled real objects per class for the few arms")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--test-scenes", type=int, default=500)
    parser.add_argument("--diffusion-steps", type=int, default=None,
                        help="training steps of the per-seed diffusion and layout models (default: each kind's)")
    parser.add_argument("--arms", default=",".join(ARMS[:5]), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--out", default="detection", help="bench/results/<out>.json and <out>.png")
    args = parser.parse_args()
    chosen = args.arms.split(",")
    if not set(chosen) <= set(ARMS) or "real-few" not in chosen:
        raise SystemExit(f"--arms: some of {', '.join(ARMS)}, real-few among them (the baseline)")
    console = Console()
    started = time.monotonic()
    reference = load_reference(DataConfig(source=args.data))
    if reference.image_size > 16:
        raise SystemExit("this benchmark composes 32×32 scenes: objects up to 16×16 (e.g. --data digits)")
    config = DetectorConfig(num_classes=reference.num_classes, channels=reference.channels,
                            dark_ink=reference.dark_ink, steps=args.steps)
    render = RenderConfig(image_size=reference.image_size, channels=reference.channels, dark_ink=reference.dark_ink,
                          scene_size=config.scene_size)
    arms: dict[str, list[dict[str, float]]] = {}
    labels: dict[str, int] = {}
    models: dict[str, CenterNet] = {}
    test, truth = real_test(*make_splits(reference, seed=0).test_set(), config, count=args.test_scenes)
    with Progress(console=console) as progress:
        for seed in range(args.seeds):
            splits = make_splits(reference, labels_per_class=args.k, seed=seed)
            full, few = splits.labeled("train"), splits.labeled("few")
            seeded = dataclasses.replace(config, seed=seed)
            objects, scenes = procedural(render, seeded, seed=seed)
            pseudo: LabeledData | None = None
            extra = {"real-few": [], "few+composed-procedural": [objects], "few+procedural-scenes": [scenes],
                     "few+procedural-both": [objects, scenes]}
            for arm in chosen:
                count = len(full.labels) if arm == "real-full" else len(few.labels)
                if arm == "real-full":
                    sources = [composer(full.images, full.labels, seeded)]
                elif arm in GENERATED:  # generators trained for this seed's few labels, only when asked for
                    if pseudo is None:
                        pseudo, _ = pseudo_labeled(splits)
                    sources = [composer(few.images, few.labels, seeded),
                               *generated(arm, pseudo, reference, seeded, seed, args.diffusion_steps)]
                else:
                    sources = [composer(few.images, few.labels, seeded), *extra[arm]]
                model = train_detector(sources, seeded, progress=progress, description=f"seed {seed}: {arm}")
                found = decode(predict(model, test.images), stride=config.stride, num_classes=config.num_classes)
                arms.setdefault(arm, []).append(coco_scores(truth, found))
                labels[arm] = count
                if seed == 0:
                    models[arm] = model
                console.print(f"seed {seed} {arm}: {arms[arm][-1]}")
    metrics = ("map50", "map50_95", "mask_map50", "mask_map50_95")
    result: dict[str, Any] = {"data": args.data, "seeds": args.seeds, "k_labels_per_class": args.k,
                              "steps": args.steps, "diffusion_steps": args.diffusion_steps, "test_scenes": args.test_scenes,
                              "test_objects": len(truth["annotations"]), "arms": {}, "comparisons": []}
    for arm, runs in arms.items():
        result["arms"][arm] = {"real_labels": labels[arm], **{
            m: interval([r[m] for r in runs]).as_dict() for m in metrics}, "per_seed": runs}
    for arm in arms:
        for base in ("real-few", "real-full"):
            if arm not in (base, "real-full") and base in arms:
                c = paired([r["map50_95"] for r in arms[arm]], [r["map50_95"] for r in arms[base]])
                result["comparisons"].append({"arm": arm, "baseline": base, "metric": "map50_95", **c.as_dict(),
                                              "sentence": c.sentence(arm, base)})
    synthetic = [a for a in arms if a.startswith("few+")]
    best = max(synthetic, key=lambda a: result["arms"][a]["map50_95"]["mean"])
    result["best_synthetic_arm"] = best
    if "real-full" in arms:
        result["gap_to_real_full_pt"] = {a: round(100 * (result["arms"]["real-full"]["map50"]["mean"]
                                                         - result["arms"][a]["map50"]["mean"]), 2) for a in synthetic}
    result["deployed"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train = make_splits(reference, seed=0).labeled("train")  # calibration: train scenes, never test ones
        calibration = composer(train.images, train.labels, config)(256, 99).images
        for arm in ("real-full", best) if "real-full" in arms else ():
            (Path(tmp) / arm).mkdir()
            result["deployed"][arm] = deployed(models[arm], config, Path(tmp) / arm, calibration, test, truth)
    result["seconds"] = round(time.monotonic() - started, 1)
    found = decode(predict(models[best], test.images[:12]), stride=config.stride, num_classes=config.num_classes)
    scene_grid(test.images[:12], [[d for d in found if d.scene == n] for n in range(12)], RESULTS / f"{args.out}.png",
               title=f"real test scenes: {best}'s boxes, classes, scores and masks (seed 0)")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = Table("arm", "real labels", "mAP@0.5", "mAP@0.5:0.95", "mask mAP@0.5:0.95",
                  title=f"detection on {args.test_scenes} real test scenes ({args.seeds} seeds, 95% intervals)")
    for arm, row in result["arms"].items():
        table.add_row(arm, str(row["real_labels"]), *(
            f"{100 * row[m]['mean']:.1f} [{100 * row[m]['ci95'][0]:.1f}, {100 * row[m]['ci95'][1]:.1f}]"
            for m in ("map50", "map50_95", "mask_map50_95")))
    console.print(table)
    for c in result["comparisons"]:
        console.print(c["sentence"])
    console.print(result["deployed"])
    console.print(f"wrote bench/results/{args.out}.json and {args.out}.png in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
