"""Benchmark: the labeler as static INT8 ONNX versus fp32 ONNX versus eager torch, on the same model.

For 1 and 2 threads: batch-256 throughput (images/s) and batch-1 latency (p50/p99), then the whole
``label`` function (images, inference, records) on 256-sample batches with the INT8 model.
The baseline is eager torch in the same process. Accuracy on the real test split is reported for
each, so a fast model that labels worse cannot hide.

Writes ``bench/results/label.json``. Usage: ``python bench/label.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.corruption import mixed_stream  # noqa: E402
from models.image import to_uint8  # noqa: E402
from models.labeler import LabelerConfig, deploy, labeler_spec, train_labeler  # noqa: E402
from models.reference import load_digits_reference, make_splits  # noqa: E402
from models.runtime import OnnxModel  # noqa: E402
from processors.label import Labeler, label  # noqa: E402
from streams.runtime import tune_gc  # noqa: E402

BATCH = 256
console = Console()


def throughput(run, images: np.ndarray, seconds: float) -> float:  # type: ignore[no-untyped-def]
    batch = images[:BATCH]
    run(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def latency(run, images: np.ndarray, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for i in range(20):
        run(images[i:i + 1])
    times = []
    for i in range(n):
        start = time.perf_counter()
        run(images[i % len(images):i % len(images) + 1])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter measurements")
    args = parser.parse_args()
    seconds, n_latency = (1.0, 300) if args.quick else (3.0, 2000)

    splits = make_splits(load_digits_reference())
    with console.status("training a labeler (speed does not depend on training length)"):
        model = train_labeler(splits.labeled("few"), LabelerConfig(steps=150 if args.quick else 600),
                              unlabeled=splits.unlabeled_images())
        folder = Path(tempfile.mkdtemp())
        deployed = deploy(model, folder, labeler_spec(LabelerConfig()), calibration=splits.unlabeled_images()[:512],
                          config={})
    test_images, test_labels = splits.test_set()
    images = to_uint8(np.tile(test_images, (2, 1, 1)))

    @torch.inference_mode()
    def eager(batch: np.ndarray) -> np.ndarray:
        return torch.softmax(model(torch.as_tensor(batch, dtype=torch.float32)[:, None] / 255.0), dim=1).numpy()

    results: dict[str, object] = {"batch": BATCH, "model_bytes_fp32": deployed.fp32.stat().st_size,
                                  "model_bytes_int8": deployed.int8.stat().st_size}
    table = Table("threads", "path", "batch-256 images/s", "× eager torch", "batch-1 p50 ms", "p99 ms", "test accuracy",
                  title="labeler inference")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        paths = {"torch": eager, "fp32": OnnxModel(deployed.fp32, threads=threads).run,
                 "int8": OnnxModel(deployed.int8, threads=threads).run}
        rates = {}
        for name, run in paths.items():
            rates[name] = throughput(run, images, seconds)
            p50, p99 = latency(run, images, n_latency)
            accuracy = float((run(to_uint8(test_images)).argmax(1) == test_labels).mean())
            key = f"{name}_{threads}t"
            results |= {f"{key}_images_per_s": round(rates[name], 1), f"{key}_batch1_p50_ms": round(p50, 4),
                        f"{key}_batch1_p99_ms": round(p99, 4), f"{key}_test_accuracy": round(accuracy, 4)}
            table.add_row(str(threads), name, f"{rates[name]:,.0f}", f"{rates[name] / rates['torch']:.2f}",
                          f"{p50:.3f}", f"{p99:.3f}", f"{accuracy:.1%}")
        results[f"int8_vs_torch_{threads}t_ratio"] = round(rates["int8"] / rates["torch"], 2)
        results[f"int8_vs_fp32_{threads}t_ratio"] = round(rates["int8"] / rates["fp32"], 2)
        results[f"fp32_vs_torch_{threads}t_ratio"] = round(rates["fp32"] / rates["torch"], 2)
    console.print(table)

    labeler = Labeler("bench", OnnxModel(deployed.int8, threads=2), tuple(range(10)))
    tune_gc()  # as the runtime does in a processor
    samples = [s for s, _ in mixed_stream(splits, good=BATCH, noise=0, wrong_class=0, run_id="bench")]
    label(samples, labeler=labeler)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        label(samples, labeler=labeler)
        done += len(samples)
    results["label_function_int8_samples_per_s"] = round(done / (time.perf_counter() - start), 1)
    results["label_function_vs_int8_inference_ratio"] = round(results["label_function_int8_samples_per_s"]  # type: ignore[operator]
                                                              / results["int8_2t_images_per_s"], 3)  # type: ignore[operator]
    console.print(f"label() on 256-sample batches (images + INT8 inference + records): "
                  f"{results['label_function_int8_samples_per_s']:,.0f} samples/s")
    out = ROOT / "bench" / "results" / "label.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
