"""The generate processor through the real broker: plan → samples with provenance, bad jobs to the DLQ,
rate caps and pauses from sdg.control obeyed and lifted."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import torch

from models.gan import GanConfig, train_gan
from models.reference import load_digits_reference, make_splits
from models.registry import ModelRegistry
from processors.generate import plan_jobs
from schemas.records import DeadLetter, GenerationJob, Reading, Throttle
from sdg.settings import Settings, WorkerConfig
from sdg.workers import processor
from streams import admin
from streams.config import KafkaConfig, RunnerConfig
from streams.producer import RecordProducer
from streams.subscribe import subscribe


def _settings(kafka: KafkaConfig, tmp_path: Path, run_id: str) -> Settings:
    return Settings(kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers), state_dir=tmp_path, run_id=run_id,
                    worker=WorkerConfig(node_id=f"node-{uuid.uuid4().hex[:6]}"),
                    runner=RunnerConfig(session_timeout_ms=6000, heartbeat_interval_ms=500))


def _start(settings: Settings, group: str):  # type: ignore[no-untyped-def]
    admin.start_group_at_end(settings.kafka_client, group, ["sdg.requests"])
    context = processor("generate", settings, source=None, sink=None, group=group)
    runner = context.__enter__()
    thread = threading.Thread(target=runner.run)
    thread.start()

    def stop() -> None:
        runner.stop()
        thread.join(30)
        context.__exit__(None, None, None)

    return runner, stop


def _wait(condition, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _samples(kafka: KafkaConfig, run_id: str) -> list:
    return [r.record for r in subscribe("sdg.samples.raw", kafka=kafka, from_beginning=True, idle_timeout_s=3)
            if r.record.run_id == run_id]


def test_plan_to_raw_samples_with_provenance(kafka: KafkaConfig, run_id: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    splits = make_splits(load_digits_reference(), labels_per_class=5)
    gan = train_gan(splits.labeled("few"), GanConfig(steps=20, hidden=32, batch_size=32))
    version = ModelRegistry(tmp_path / "models").save("gan", gan.weights(), gan.checkpoint_config())
    settings = _settings(kafka, tmp_path, run_id)
    runner, stop = _start(settings, f"g-{run_id}")
    try:
        jobs = [*plan_jobs("gan", classes=list(range(10)), per_class=6, seed=3, run_id=run_id, job_size=25),
                *plan_jobs("procedural", classes=[4, 7], per_class=5, seed=3, run_id=run_id, job_size=25,
                           params={"mode": "scene"})]
        bad = GenerationJob(run_id=run_id, job_id="bad", generator="gan", generator_version="feedface",
                            classes=[1], seed_start=0, count=3)
        with RecordProducer(kafka) as producer:
            for job in [*jobs, bad]:
                producer.send("sdg.requests", job)
        _wait(lambda: runner.stats.produced["sdg.samples.raw"] >= 70 and runner.stats.consumed == len(jobs) + 1, 120)
    finally:
        stop()
    samples = _samples(kafka, run_id)
    assert len(samples) == 70 and len({s.sample_id for s in samples}) == 70
    gans = [s for s in samples if s.generator == "gan"]
    assert len(gans) == 60 and {s.generator_version for s in gans} == {version}
    assert sorted(s.conditioning.class_label for s in gans) == sorted(list(range(10)) * 6)
    assert all(s.node_id == settings.worker.node_id and s.image_sha256 and s.timings_ms for s in samples)
    scenes = [s for s in samples if s.generator == "procedural"]
    assert all(s.width == 48 and s.objects and s.conditioning.params == {"mode": "scene"} for s in scenes)
    letters = [r.record for r in subscribe("sdg.dlq", kafka=kafka, from_beginning=True, idle_timeout_s=3)
               if isinstance(r.record, DeadLetter) and r.record.run_id == run_id]
    assert len(letters) == 1 and "unknown gan version 'feedface'" in letters[0].error
    loads = [r.record for r in subscribe("sdg.telemetry", kafka=kafka, from_beginning=True, idle_timeout_s=3)
             if isinstance(r.record, Reading) and r.record.run_id == run_id]
    assert len(loads) == len(jobs) and all(r.source == "generator" and (r.rate_sps or 0) > 0 for r in loads)


def test_rate_cap_is_obeyed_and_a_pause_lifts(kafka: KafkaConfig, run_id: str, tmp_path: Path) -> None:
    settings = _settings(kafka, tmp_path, run_id)
    node = settings.worker.node_id
    runner, stop = _start(settings, f"g-{run_id}")
    try:
        with RecordProducer(kafka) as producer:
            producer.send("sdg.control", Throttle(run_id=run_id, node_id="other-node", paused=True, reason="not us",
                                                  ttl_s=600))
            producer.send("sdg.control", Throttle(run_id=run_id, node_id=node, max_rate_sps=40, reason="test cap",
                                                  ttl_s=600))
        _wait(lambda: runner.rate_cap.current()[1] == 40, 30)
        with RecordProducer(kafka) as producer:
            for job in plan_jobs("procedural", classes=[1], per_class=60, seed=1, run_id=run_id, job_size=10):
                producer.send("sdg.requests", job)
        _wait(lambda: runner.stats.produced["sdg.samples.raw"] >= 60, 60)
        capped = sorted(s.created_ms for s in _samples(kafka, run_id))
        # six jobs of 10 at 40 samples/s: each job waits for the previous one's 0.25 s
        assert (capped[-1] - capped[0]) / 1000 >= 5 * 10 / 40 * 0.95

        paused_at = time.time()
        with RecordProducer(kafka) as producer:
            producer.send("sdg.control", Throttle(run_id=run_id, node_id=node, paused=True, reason="pump", ttl_s=2))
        _wait(lambda: runner.rate_cap.current()[0], 30)
        with RecordProducer(kafka) as producer:
            for job in plan_jobs("procedural", classes=[2], per_class=10, seed=2, run_id=run_id, job_size=10):
                producer.send("sdg.requests", job)
        _wait(lambda: runner.stats.produced["sdg.samples.raw"] >= 70, 60)  # the pause expired: generation resumed
        resumed = [s for s in _samples(kafka, run_id) if s.conditioning.class_label == 2]
        assert len(resumed) == 10 and min(s.created_ms for s in resumed) / 1000 >= paused_at + 1.5
        assert runner.rate_cap.current() == (False, None)
    finally:
        stop()
