"""Benchmark: the whole product on each kind of real data, from a fresh state directory.

For each source (``digits`` 8×8 grey, ``mnist`` 28×28 grey, and ``rgb32``: a 32×32 colour folder made here by
the procedural renderer in colour mode, 300 images per class, standing in for a user's colour camera crops),
it runs ``sdg demo`` with ``SDG_DATA__SOURCE`` set, in a fresh state directory (the Kafka jars come from the
shared cache that ``make install`` fills), and measures:

- ``demo_wall_s``: the demo's wall time, all training included (target: ≤ 20 minutes on 2 cores);
- ``train_s``: seconds per model the demo trained (extractor, labeler, gan, diffusion, edge);
- ``labeler_accuracy``: the deployed INT8 labeler on the real test split (10 real labels per class);
- per generator, FID and recall of 500 samples (fewer when the test split is smaller) against the real train features (the demo's extractor), next
  to the real-vs-real baseline at the same n (the held-out test split against the same train features):
  ``fid_ratio`` is the generator's FID over the baseline's.

Writes ``bench/results/own_data.json`` (one object per source) and the sample grids
``bench/results/own_data_<source>_<generator>.png``. Usage: ``python bench/own_data.py [digits mnist rgb32]``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.image import sample_grid, to_uint8  # noqa: E402
from models.quality import Reference, RunningMoments  # noqa: E402
from models.reference import DataConfig  # noqa: E402
from models.render import ProceduralRenderer, RenderConfig  # noqa: E402
from models.runtime import OnnxModel  # noqa: E402
from sdg.settings import Settings  # noqa: E402

console = Console()
RESULTS = ROOT / "bench" / "results"
N_SAMPLES = 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rgb_folder(root: Path, *, size: int = 32, per_class: int = 300) -> Path:
    """Colour digits on textured paper, ``root/<class>/<i>.png`` (seeds apart from any the demo plans)."""
    from PIL import Image

    renderer = ProceduralRenderer(RenderConfig(image_size=size, channels=3))
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        images = renderer([10**9 + digit * per_class + i for i in range(per_class)], [digit] * per_class).images
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / str(digit) / f"{i}.png")
    return root


def run_demo(source: str, work: Path) -> tuple[float, Path, str]:
    """``sdg demo`` on ``source`` from a fresh state directory; (wall seconds, state dir, run id)."""
    state, run_id = work / "state", f"bench-own-data-{int(time.time())}"
    env = {**os.environ, "SDG_STATE_DIR": str(state), "SDG_RUN_ID": run_id, "SDG_DATA__SOURCE": source,
           "SDG_BROKER__PORT": str(_free_port()), "SDG_BROKER__CONTROLLER_PORT": str(_free_port()),
           "SDG_BROKER__JARS_DIR": str(ROOT / ".sdg" / "kafka" / "jars")}
    started = time.monotonic()
    with open(work / "demo.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "sdg", "demo"], cwd=work, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"sdg demo on {source} failed; see {work / 'demo.log'}")
    return wall, state, run_id


def measure(name: str, source: str, work: Path) -> dict[str, object]:
    wall, state, run_id = run_demo(source, work)
    settings = Settings(state_dir=state, data=DataConfig(source=source))
    splits = settings.splits()
    reference = splits.reference
    test_x, test_y = splits.test_set()
    labeler = settings.labeler()
    accuracy = float((labeler.model.run(to_uint8(test_x)).argmax(1) == test_y).mean())
    extractor_dir = settings.models_dir / "extractor" / (settings.models_dir / "extractor" / "LATEST").read_text()
    extractor = OnnxModel(extractor_dir / "fp32.onnx")
    real = Reference.build(splits, extractor.run, extractor=extractor.spec.name, extractor_hash=extractor.version)
    n = min(N_SAMPLES, len(splits.test))  # the baseline's n: the held-out split's size at most
    baseline = real.baseline(n)
    generators: dict[str, object] = {}
    catalog = settings.catalog()
    classes = [c % reference.num_classes for c in range(n)]
    for kind in ("gan", "diffusion", "procedural"):
        images = catalog.get(kind)(list(range(n)), classes).images
        features = extractor.run(images)
        metrics = real.metrics(RunningMoments(features.shape[1]).update(features), features)
        generators[kind] = {"fid": round(metrics.fid, 4), "recall": round(metrics.recall, 3),
                            "precision": round(metrics.precision, 3), "fid_ratio": round(metrics.fid / baseline.fid, 2)}
        grid = RESULTS / f"own_data_{name}_{kind}.png"
        grid.write_bytes(sample_grid(images, classes))
    return {"source": source, "reference": reference.name, "images": len(reference.images),
            "shape": [reference.image_size, reference.image_size, reference.channels],
            "demo_wall_s": round(wall, 1), "demo_wall_target_s": 1200,
            "train_s": json.loads((work / "runs" / run_id / "training.json").read_text()),
            "labeler_accuracy": round(accuracy, 4), "labels_per_class": splits.labels_per_class,
            "real_vs_real_baseline": {"n": baseline.n, "fid": round(baseline.fid, 4), "recall": round(baseline.recall, 3),
                                      "precision": round(baseline.precision, 3)},
            "generators": generators}


def main() -> None:
    names = sys.argv[1:] or ["digits", "mnist", "rgb32"]
    path = RESULTS / "own_data.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"sdg-own-{name}-") as tmp:
            work = Path(tmp)
            source = str(rgb_folder(work / "rgb32")) if name == "rgb32" else name
            console.print(f"[bold]{name}[/]: sdg demo from a fresh state directory…")
            results[name] = measure(name, source, work)
            results[name]["source"] = name
        path.write_text(json.dumps(results, indent=2) + "\n")
    table = Table("source", "shape", "demo s", "labeler", "gan FID / recall", "diffusion FID / recall",
                  "procedural FID / recall", "real-vs-real FID / recall", title="own data, fresh state each")
    for name, r in results.items():
        g, b = r["generators"], r["real_vs_real_baseline"]
        table.add_row(name, "×".join(map(str, r["shape"])), f"{r['demo_wall_s']:.0f}", f"{r['labeler_accuracy']:.1%}",
                      *(f"{g[k]['fid']:.3f} / {g[k]['recall']:.2f}" for k in ("gan", "diffusion", "procedural")),
                      f"{b['fid']:.3f} / {b['recall']:.2f}")
    console.print(table)
    console.print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
