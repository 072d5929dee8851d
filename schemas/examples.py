"""Valid example records of every type, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import hashlib
import random
from typing import Callable, TypeVar, cast

from schemas.records import (
    Conditioning,
    DeadLetter,
    Gate,
    GeneratedSample,
    GenerationJob,
    HumanLabel,
    Label,
    LabeledSample,
    Metrics,
    PlantFault,
    QualityWindow,
    Reading,
    Record,
    SampleDecision,
    Score,
    ScoredSample,
    ThermalAlert,
    Throttle,
)

R = TypeVar("R", bound=Record)

def example_sample(i: int, run_id: str, *, payload_bytes: int = 64) -> GeneratedSample:
    """A generated sample whose image field holds ``payload_bytes`` deterministic bytes."""
    image = random.Random(i).randbytes(payload_bytes)
    return GeneratedSample(
        run_id=run_id,
        sample_id=f"{run_id}-s{i:06d}",
        job_id=f"{run_id}-j{i // 100:04d}",
        generator="example",
        generator_version="0" * 16,
        seed=i,
        conditioning=Conditioning(class_label=i % 10),
        image=image,
        image_sha256=hashlib.sha256(image).hexdigest(),
        width=8,
        height=8,
        node_id=f"node-{i % 4}",
    )


def example(record_type: type[R], i: int, run_id: str) -> R:
    """The ``i``-th example record of ``record_type`` (keys vary with ``i``)."""
    sample = example_sample(i, run_id)
    label = Label(label=i % 10, confidence=0.99, margin=0.9, entropy=0.05, agrees=True,
                  labeler="example", labeler_version="0" * 16)
    score = Score(window_id="w0", realism=0.9, nn_distance=1.0, memorization_ratio=2.0,
                  extractor="example", extractor_hash="0" * 16)
    metrics = Metrics(n=100, fid=3.0, precision=0.8, recall=0.8, density=1.0, coverage=0.9)
    node = f"example-node-{i % 4}"  # no real node: example caps and faults must not reach a worker
    builders: dict[type[Record], Callable[[], Record]] = {
        GenerationJob: lambda: GenerationJob(run_id=run_id, job_id=f"{run_id}-j{i:06d}", generator="example",
                                             classes=list(range(10)), seed_start=i * 100, count=100),
        GeneratedSample: lambda: sample,
        LabeledSample: lambda: LabeledSample(run_id=run_id, sample=sample, label=label),
        ScoredSample: lambda: ScoredSample(run_id=run_id, sample=sample, label=label, score=score),
        SampleDecision: lambda: SampleDecision(run_id=run_id, sample=sample, label=label, score=score,
                                               gate=Gate(decision="accepted", reason="ok", gate="example")),
        QualityWindow: lambda: QualityWindow(run_id=run_id, window_id=f"w{i}", generator="example",
                                             generator_version="0" * 16, class_label=i % 10, kind="tumbling",
                                             start_ms=i * 1000, end_ms=(i + 1) * 1000, metrics=metrics,
                                             baseline=metrics, memorized_fraction=0.0, extractor="example",
                                             extractor_hash="0" * 16, reference_split="0" * 16,
                                             gate_state="admissible"),
        Reading: lambda: Reading(run_id=run_id, node_id=node, source="plant", ts_ms=i * 100, coolant_c=20.0,
                                 die_c=55.0 + i % 7, power_w=300.0, bus_v=48.0, current_a=6.25, flow_lpm=12.0,
                                 pue=1.08),
        ThermalAlert: lambda: ThermalAlert(run_id=run_id, node_id=node, rule="die_over_limit", severity="warning",
                                           value=86.0, threshold=85.0, message="die 86.0 °C over 85.0 °C"),
        Throttle: lambda: Throttle(run_id=run_id, node_id=node, max_rate_sps=100.0, reason="die_over_limit",
                                   ttl_s=30.0),
        PlantFault: lambda: PlantFault(run_id=run_id, node_id=node, kind="pump_failure", magnitude=0.05,
                                       duration_s=60.0),
        HumanLabel: lambda: HumanLabel(run_id=run_id, sample_id=sample.sample_id, label=i % 10, reviewer="ada"),
        DeadLetter: lambda: DeadLetter(run_id=run_id, topic="sdg.samples.raw", partition=0, offset=i,
                                       step_id="example", error_type="UndecodableRecord", error="example",
                                       original_key=f"k{i}".encode(), original_value=b"\x00bad"),
    }
    return cast(R, builders[record_type]())
