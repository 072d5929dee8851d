"""Label and quality processors through the real broker: a stream mixing good and corrupted samples
ends with the corrupted ones rejected or in review (with reasons) and the good ones accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections import Counter
from pathlib import Path

from models.corruption import mixed_stream
from models.reference import load_digits_reference, make_splits
from schemas.examples import example
from schemas.records import LabeledSample, QualityWindow, ScoredSample
from sdg.settings import Settings
from sdg.workers import processor
from streams import admin
from streams.config import KafkaConfig, RunnerConfig
from streams.dead_letter import DLQ_TOPIC
from streams.producer import RecordProducer
from tests.conftest import REPO, await_decisions, collect, sdg_command


def test_label_then_quality_gate_through_the_broker(kafka: KafkaConfig, run_id: str, quality_state: Path) -> None:
    splits = make_splits(load_digits_reference())
    stream = mixed_stream(splits, good=180, noise=12, wrong_class=12, memorized=6, run_id=run_id, seed=7)
    kinds = {s.sample_id: kind for s, kind in stream}
    settings = Settings(kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers), state_dir=quality_state,
                        run_id=run_id, runner=RunnerConfig(batch_size=64))
    group = f"label-{uuid.uuid4().hex[:6]}"
    admin.start_group_at_end(kafka, group, ["sdg.samples.raw"])
    admin.start_group_at_end(kafka, f"quality-{run_id}", ["sdg.samples.labeled"])  # not what other tests wrote there
    env = {**os.environ, "SDG_STATE_DIR": str(quality_state), "SDG_RUN_ID": run_id,
           "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "SDG_QUALITY__WINDOW_SIZE": "100", "SDG_QUALITY__MAX_WINDOW_S": "3"}
    quality = subprocess.Popen(sdg_command("run", "quality", "--group", f"quality-{run_id}"), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with processor("label", settings, source=None, sink=None, group=group) as runner:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            with RecordProducer(kafka) as producer:
                for sample, _ in stream:
                    producer.send("sdg.samples.raw", sample)
                producer.send_bytes("sdg.samples.raw", b"bad", b"not avro at all")
                producer.send("sdg.samples.raw", stream[0][0].model_copy(update={"image": b"\x89PNG cut"}))
                producer.send_bytes("sdg.samples.labeled", b"bad", b"\x00garbage for the quality processor")
                wrong_type = producer.codec.encode(example(QualityWindow, 0, run_id))  # valid, but not for this topic
                producer.send_bytes("sdg.samples.labeled", b"wrong", wrong_type)
                producer.send("sdg.samples.labeled", example(LabeledSample, 0, run_id))  # its image is not a PNG
            decided = await_decisions(kafka, run_id, set(kinds), quality=quality, runner=thread)
        finally:
            runner.stop()
            thread.join(30)
            quality.send_signal(signal.SIGTERM)
            quality.wait(60)

    assert runner.stats.produced["sdg.samples.labeled"] == len(stream)
    labeled = collect("sdg.samples.labeled", kafka, run_id)
    assert sorted(r.sample.sample_id for r in labeled if isinstance(r, LabeledSample) and r.sample.sample_id in kinds) \
        == sorted(kinds)
    letters = [d for d in collect(DLQ_TOPIC, kafka, run_id) if d.step_id != "example"]
    assert sorted(d.step_id for d in letters) == ["label", "label", *["quality"] * 3]
    reasons = " | ".join(d.error for d in letters if d.step_id == "quality")
    for reason in ("not an Avro single-object record", "carries LabeledSample, not QualityWindow", "is not a PNG"):
        assert reason in reasons
    assert {d.original_value for d in letters if d.step_id == "quality"} >= {b"\x00garbage for the quality processor"}

    assert set(decided) == set(kinds)  # every sample decided exactly once per topic set, none lost
    outcome = Counter((kinds[s], d.gate.decision) for s, d in decided.items())
    assert outcome[("noise", "accepted")] == outcome[("memorized", "accepted")] == 0, outcome
    # a wrong class passes only where the labeler is itself confidently wrong on that real image, in that class
    assert outcome[("wrong_class", "accepted")] <= 1, outcome
    assert outcome[("good", "accepted")] >= 0.75 * 180, outcome  # a small labeler: ~93% accurate
    assert all(d.gate.reason for d in decided.values())
    scored = [s for s in collect("sdg.samples.scored", kafka, run_id) if isinstance(s, ScoredSample)]
    assert {s.sample.sample_id for s in scored} == set(kinds)
    windows = [w for w in collect("sdg.quality", kafka, run_id) if isinstance(w, QualityWindow) and w.generator == "probe"]
    tumbling = [w for w in windows if w.kind == "tumbling" and w.class_label is None]
    assert sum(1 for w in tumbling) == 3  # 100 + 100 (full) + 10 (closed by the timer)
    assert all(w.extractor_hash and w.reference_split.startswith("sklearn-digits") for w in windows)
    assert any(w.gate_state == "admissible" and w.baseline is not None for w in tumbling)

    shown = subprocess.run([*sdg_command("quality", "--run", run_id, "--classes")], cwd=REPO, env={**env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "probe" in shown.stdout and "sliding" in shown.stdout and "admissible" in shown.stdout
    assert f"extractor {windows[0].extractor}" in shown.stdout
