"""Benchmark: the deployed edge model, static INT8 ONNX against its fp32 export and eager torch.

The edge model is trained as ``sdg train-edge`` trains it (10 real labels per class plus the unlabeled
real images, FixMatch-style) on two seeds; each is deployed (fp32 + INT8 ONNX, calibrated on the
unlabeled images) and checked on the real test split: accuracy of both exports, the INT8 drop, size.
Then, for 1 and 2 threads: batch-256 throughput and batch-1 latency against eager torch in the same
process.

Writes ``bench/results/edge.json``. Usage: ``python bench/edge.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.label import latency, throughput  # noqa: E402
from models.edge import EdgeConfig, edge_spec, evaluate_deployed, train_edge  # noqa: E402
from models.image import to_uint8  # noqa: E402
from models.labeler import deploy  # noqa: E402
from models.reference import load_digits_reference, make_splits  # noqa: E402
from models.runtime import OnnxModel  # noqa: E402

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter training and measurements")
    args = parser.parse_args()
    seconds, n_latency, steps = (1.0, 300, 200) if args.quick else (3.0, 2000, 1000)

    splits = make_splits(load_digits_reference())
    few, unlabeled = splits.labeled("few"), splits.unlabeled_images()
    test_images, test_labels = splits.test_set()
    results: dict[str, object] = {"steps": steps, "real_labels": few.budget.n_labels}
    checks = Table("seed", "fp32 accuracy", "INT8 accuracy", "drop (pt)", "INT8 KB", "checks", title="edge model")
    for seed in (0, 1):
        with console.status(f"training the edge model (seed {seed}, {steps} steps)"):
            model = train_edge(few.images, few.labels, EdgeConfig(steps=steps, seed=seed), unlabeled=unlabeled)
            deployed = deploy(model, Path(tempfile.mkdtemp()), edge_spec(), calibration=unlabeled, config={})
        m = evaluate_deployed(deployed.fp32, deployed.int8, edge_spec(), test_images, test_labels)
        results[f"seed{seed}"] = {k: m.as_dict()[k] for k in ("fp32_accuracy", "int8_accuracy", "accuracy_drop_pt",
                                                              "fp32_bytes", "int8_bytes", "checks")}
        checks.add_row(str(seed), f"{m.fp32_accuracy:.2%}", f"{m.int8_accuracy:.2%}",
                       f"{m.accuracy_drop_pt:.2f}", f"{m.int8_bytes / 1024:.0f}",
                       ", ".join(name for name, ok in m.checks.items() if ok) or "failed")
    console.print(checks)

    images = to_uint8(np.tile(test_images, (2, 1, 1)))

    @torch.inference_mode()
    def eager(batch: np.ndarray) -> np.ndarray:
        return model(torch.as_tensor(batch, dtype=torch.float32)[:, None] / 255.0).numpy()

    speed = Table("threads", "path", "batch-256 images/s", "× eager torch", "batch-1 p50 ms", "p99 ms",
                  title="edge model inference")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates = {}
        for name, run in {"torch": eager, "fp32": OnnxModel(deployed.fp32, threads=threads).run,
                          "int8": OnnxModel(deployed.int8, threads=threads).run}.items():
            rates[name] = throughput(run, images, seconds)
            p50, p99 = latency(run, images, n_latency)
            key = f"{name}_{threads}t"
            results |= {f"{key}_images_per_s": round(rates[name], 1), f"{key}_batch1_p50_ms": round(p50, 4),
                        f"{key}_batch1_p99_ms": round(p99, 4)}
            speed.add_row(str(threads), name, f"{rates[name]:,.0f}", f"{rates[name] / rates['torch']:.2f}",
                          f"{p50:.3f}", f"{p99:.3f}")
        results[f"int8_vs_torch_{threads}t_ratio"] = round(rates["int8"] / rates["torch"], 2)
        results[f"int8_vs_fp32_{threads}t_ratio"] = round(rates["int8"] / rates["fp32"], 2)
    console.print(speed)
    out = ROOT / "bench" / "results" / "edge.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
