"""Benchmark: generator throughput bare versus through the generate processor, and the diffusion
sampler versus the stock diffusers DDIM pipeline on the same UNet and steps.

- bare: a loop over the model in this process (batches of 256, no encoding);
- processor: ``sdg.requests`` → generate runner → ``sdg.samples.raw`` through the embedded broker
  (image bytes, records, Avro, Kafka included), jobs of 256 samples, after a warm-up job; the runner runs in the
  main thread, as ``sdg run generate`` runs it, with its ``OMP_WAIT_POLICY=PASSIVE`` (both ways);
- stock: ``diffusers.DDIMPipeline`` on the same UNet (class labels bound), batch 256, 10 steps, eta 0.

Each is run ``ROUNDS`` times, interleaved, and the median kept: the embedded broker warms up for the first seconds.
Model weights come from short training runs (speed does not depend on training length).
Writes ``bench/results/generate.json``. Usage: ``python bench/generate.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: as `sdg run` runs its processors

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import free_port  # noqa: E402
from infra.broker import BrokerConfig, EmbeddedBroker  # noqa: E402
from models.catalog import GeneratorCatalog  # noqa: E402
from models.diffusion import DiffusionConfig, DiffusionModel, train_diffusion  # noqa: E402
from models.gan import GanConfig, train_gan  # noqa: E402
from models.generator import GeneratorError  # noqa: E402
from models.image import sample_grid  # noqa: E402
from models.reference import load_digits_reference, make_splits  # noqa: E402
from models.render import ProceduralRenderer  # noqa: E402
from processors.generate import GenerateConfig, generate_encoded, plan_jobs  # noqa: E402
from streams import admin  # noqa: E402
from streams.config import RunnerConfig  # noqa: E402
from streams.producer import RecordProducer  # noqa: E402
from streams.runtime import Runner, Step  # noqa: E402

BATCH = 256
ROUNDS = 3
console = Console()


def bare(model, n: int) -> float:  # type: ignore[no-untyped-def]
    classes = [i % 10 for i in range(BATCH)]
    model(list(range(BATCH)), classes)  # warm-up
    start = time.perf_counter()
    for k in range(0, n, BATCH):
        model(list(range(k, k + BATCH)), classes)
    return n / (time.perf_counter() - start)


def through_processor(kafka, model, n: int) -> float:  # type: ignore[no-untyped-def]
    catalog = GeneratorCatalog(Path(tempfile.mkdtemp()))
    catalog.put(model)
    group = f"bench-{uuid.uuid4().hex}"
    admin.start_group_at_end(kafka, group, ["sdg.requests"])
    step = Step("generate", ("sdg.requests",), lambda job: generate_encoded(job, generators=catalog, config=GenerateConfig()))
    runner = Runner(step, kafka=kafka, config=RunnerConfig(), group=group, run_id="bench")
    seed = int(time.time())
    warmup = plan_jobs(model.name, classes=list(range(10)), per_class=1, seed=seed + 1, run_id="bench-warmup")
    jobs = plan_jobs(model.name, classes=list(range(10)), per_class=max(1, n // 10), seed=seed, run_id="bench",
                     job_size=BATCH)
    total = sum(job.count for job in jobs)
    elapsed: list[float] = []
    done = threading.Event()

    def feed() -> None:  # the jobs, once the warm-up job's samples are out; then the runner is stopped
        with RecordProducer(kafka) as producer:
            for job in warmup:  # the model loaded and run once, as the bare loop's warm-up call does
                producer.send("sdg.requests", job)
            producer.flush()
            while runner.stats.produced["sdg.samples.raw"] < 10 and not done.is_set():
                time.sleep(0.01)
            start = time.perf_counter()
            for job in jobs:
                producer.send("sdg.requests", job)
        while runner.stats.produced["sdg.samples.raw"] < total + 10 and not done.is_set():
            time.sleep(0.01)
        elapsed.append(time.perf_counter() - start)
        runner.stop()

    thread = threading.Thread(target=feed)
    thread.start()
    try:  # in the main thread, as `sdg run generate` runs it: torch's OpenMP threads are this thread's
        runner.run(max_idle_s=30)
    finally:
        done.set()
        thread.join()
    return total / elapsed[0]


def agreement_with_conditioning(model, splits, n: int = 1000) -> float:  # type: ignore[no-untyped-def]
    """A quality proxy until the quality processor exists: how often a classifier trained on the real
    train split (evaluation only) names the class the sample was conditioned on."""
    from sklearn.linear_model import LogisticRegression

    train = splits.labeled("train")
    judge = LogisticRegression(max_iter=3000).fit(train.images.reshape(len(train.images), -1), train.labels)
    classes = [i % 10 for i in range(n)]
    images = model(list(range(10**6, 10**6 + n)), classes).images.astype(np.float32) / 255.0
    return float((judge.predict(images.reshape(n, -1)) == np.array(classes)).mean())


def stock_pipeline(model: DiffusionModel, n: int) -> float:
    """diffusers' DDIMPipeline on the same UNet and scheduler config (class labels bound to the UNet)."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    unet = UNet2DModel.from_config(model.unet.config)
    unet.load_state_dict(model.unet.state_dict())
    unet.eval()
    labels = torch.arange(BATCH) % 10
    forward = unet.forward
    unet.forward = lambda sample, timestep, **kw: forward(sample, timestep, class_labels=labels, **kw)  # type: ignore[method-assign]
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(model.train_scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    steps = model.config.sample_steps
    pipe(batch_size=BATCH, num_inference_steps=steps, eta=0.0, output_type="np")
    start = time.perf_counter()
    for k in range(0, n, BATCH):
        pipe(batch_size=BATCH, num_inference_steps=steps, eta=0.0, generator=torch.Generator().manual_seed(k),
             output_type="np")
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = make_splits(load_digits_reference())
    registry = GeneratorCatalog(ROOT / ".sdg" / "models")  # the models `make demo` trained, when there
    models: dict[str, Any] = {}
    with console.status("loading or briefly training the generators"):
        for name, train in (("gan", lambda: train_gan(splits.labeled("train"), GanConfig(steps=200))),
                            ("diffusion", lambda: train_diffusion(splits.labeled("train"), DiffusionConfig(steps=30)))):
            try:
                models[name] = registry.get(name)
            except GeneratorError:
                models[name] = train()
        models["procedural"] = ProceduralRenderer()
    sizes = {"gan": 51_200, "diffusion": 1_280, "procedural": 2_560}
    if args.quick:
        sizes = {k: max(2 * BATCH, v // 8) for k, v in sizes.items()}
    broker = EmbeddedBroker(BrokerConfig(port=free_port(), controller_port=free_port(), security="plaintext",
                                         jars_dir=ROOT / ".sdg" / "kafka" / "jars"), Path(tempfile.mkdtemp()))
    with console.status("starting the embedded broker"):
        broker.start()
    results: dict[str, object] = {"batch": BATCH, "torch_threads": torch.get_num_threads(), "rounds": ROUNDS,
                                  "statistic": "median of rounds", "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                                  "diffusion_steps": models["diffusion"].config.sample_steps}
    table = Table("generator", "bare samples/s", "processor samples/s", "processor / bare",
                  "classified as conditioned")
    try:
        admin.create_topics(broker.kafka, __import__("streams.config", fromlist=["TopicConfig"]).TopicConfig())
        for name, model in models.items():
            runs: dict[str, list[float]] = {"bare": [], "processor": []}
            with console.status(f"{name}: {ROUNDS} rounds of bare and through the processor"):
                for _ in range(ROUNDS):  # interleaved, so drift in the machine (the broker warming up) hits both
                    runs["bare"].append(bare(model, sizes[name]))
                    runs["processor"].append(through_processor(broker.kafka, model, sizes[name]))
            b, p = statistics.median(runs["bare"]), statistics.median(runs["processor"])
            agreement = agreement_with_conditioning(model, splits)
            results.update({f"{name}_version": model.version,
                            f"{name}_bare_samples_per_s": round(b, 1), f"{name}_processor_samples_per_s": round(p, 1),
                            f"{name}_processor_vs_bare_ratio": round(p / b, 3),
                            f"{name}_agreement_with_conditioning": round(agreement, 3)})
            table.add_row(name, f"{b:,.0f}", f"{p:,.0f}", f"{p / b:.2f}", f"{agreement:.1%}")
        with console.status("diffusion: stock DDIMPipeline"):
            stock = stock_pipeline(models["diffusion"], sizes["diffusion"])
        ours = float(results["diffusion_bare_samples_per_s"])  # type: ignore[arg-type]
        results.update({"diffusion_stock_pipeline_samples_per_s": round(stock, 1),
                        "diffusion_sampler_vs_stock_pipeline_ratio": round(ours / stock, 3)})
    finally:
        broker.stop()
    console.print(table)
    console.print(f"diffusion sampler {ours:,.0f}/s vs stock DDIMPipeline {stock:,.0f}/s "
                  f"(ratio {float(ours) / stock:.2f}; batch {BATCH}, {results['diffusion_steps']} DDIM steps)")
    out = ROOT / "bench" / "results" / "generate.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    grids = ROOT / "bench" / "results"
    labels = [c for c in range(10) for _ in range(10)]
    for name, model in models.items():
        (grids / f"samples_{name}.png").write_bytes(sample_grid(model(list(range(100)), labels).images, labels))
    console.print(f"wrote {out.relative_to(ROOT)} and sample grids")


if __name__ == "__main__":
    main()
