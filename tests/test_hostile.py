"""No single record may stop or corrupt the pipeline.

Hostile records — forged identity fields, NaN or out-of-image boxes, other image formats, mixed sizes,
records too large for their outputs or for the dead-letter topic, forged labels, garbage on the quality
app's internal topic, records of the wrong type for a topic — go through the real broker into the real
label runner, quality app and Delta sink. Each lands in ``sdg.dlq`` with its reason (or is rejected by the
gate), no processor stops, the good records behind them arrive, and the tables stay readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from confluent_kafka import Producer
from PIL import Image

from models.corruption import mixed_stream
from models.image import decode_png, png_bytes, sample_image
from models.reference import load_digits_reference, make_splits
from models.runtime import ModelFileError
from schemas.codec import RecordCodec
from schemas.errors import UndecodableRecord
from schemas.examples import example
from schemas.records import Annotation, GeneratedSample, Label, LabeledSample, Reading
from sdg.settings import Settings
from sdg.workers import processor
from streams import admin
from streams.catalog import TopicSpec
from streams.config import KafkaConfig, RunnerConfig, TopicConfig
from streams.dead_letter import DLQ_TOPIC
from streams.delta_sink import DeltaTables, delta_runner
from streams.producer import RecordProducer
from streams.runtime import repartition_topic
from tests.conftest import REPO, await_decisions, collect, forge, sdg_command

CODEC = RecordCodec()


def with_image(sample: GeneratedSample, data: bytes, *, width: int, height: int, **changes: Any) -> GeneratedSample:
    return sample.model_copy(update={"image": data, "image_format": "png", "image_sha256": hashlib.sha256(data).hexdigest(),
                                     "width": width, "height": height, **changes})


def noise_png(width: int, height: int) -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 256, (height, width)).astype(np.uint8))


def test_hostile_records_are_dead_lettered_and_the_pipeline_goes_on(kafka: KafkaConfig, run_id: str,
                                                                     quality_state: Path, tmp_path: Path) -> None:
    splits = make_splits(load_digits_reference())
    stream = [s for s, _ in mixed_stream(splits, good=40, noise=0, wrong_class=0, run_id=run_id, seed=11)]
    before, after = stream[:20], stream[20:]
    settings = Settings(kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers), state_dir=quality_state,
                        run_id=run_id, runner=RunnerConfig(batch_size=64))
    labeler = settings.labeler()
    # a sample the labeler gets right: forging its label is then a lie the gate can catch
    good = next(s for s in stream if labeler.model.run(sample_image(s)[None]).argmax() == s.conditioning.class_label)
    assert good.conditioning.class_label is not None
    image = sample_image(good)
    scene = with_image(good, good.image, width=8, height=8, image_format=good.image_format, generator="procedural", sample_id=f"{run_id}-scene",
                       conditioning=good.conditioning.model_copy(update={"params": {"mode": "scene"}}),
                       objects=[Annotation(class_label=(good.conditioning.class_label + 1) % 10, bbox=[0, 0, 8, 8])])
    wrong = (good.conditioning.class_label + 3) % 10
    forged_label = Label(label=wrong, confidence=0.999, margin=0.99, entropy=0.01, agrees=True,
                         labeler=labeler.name, labeler_version=labeler.model.version)

    raw_bad = {  # bytes for sdg.samples.raw → why each must end in the DLQ
        "run_id ''": (forge(good, run_id=""), "should match pattern"),
        "run_id of 300 characters": (forge(good, run_id="r" * 300), "should match pattern"),
        "run_id with a path": (forge(good, run_id="../../etc"), "should match pattern"),
        "raw pixels short": (forge(good, image_format="raw", image=b"\x00" * 10), "10 bytes of raw pixels"),
        "NaN box": (forge(good, generator="procedural", objects=[
            {"class_label": 1, "bbox": [float("nan"), 0.0, 4.0, 4.0], "mask_png": None}]), "finite"),
        "negative box": (forge(good, generator="procedural", objects=[
            {"class_label": 1, "bbox": [0.0, 0.0, -4.0, 4.0], "mask_png": None}]), "width and height must be > 0"),
        "huge box": (forge(good, generator="procedural", objects=[
            {"class_label": 1, "bbox": [1e12, 0.0, 1e12, 4.0], "mask_png": None}]), "within ±"),
        "box outside": (forge(good, generator="procedural", objects=[
            {"class_label": 1, "bbox": [50.0, 50.0, 4.0, 4.0], "mask_png": None}]), "outside the 8×8 image"),
    }
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    label_bad = {  # valid records the label function must refuse, one by one
        "JPEG": (with_image(good, jpeg.getvalue(), width=8, height=8, sample_id=f"{run_id}-jpeg"), "is not a PNG"),
        "size lie": (with_image(good, png_bytes(np.zeros((9, 9), np.uint8)), width=8, height=8,
                                sample_id=f"{run_id}-lie"), "says 8×8"),
        "GAN scene": (good.model_copy(update={"generator": "gan", "sample_id": f"{run_id}-ganscene",
                                              "objects": [Annotation(class_label=1, bbox=[0, 0, 8, 8])]}),
                      "not asked for as a scene"),
    }
    mixed_size = with_image(good, png_bytes(np.kron(image, np.ones((2, 2), np.uint8))), width=16, height=16,
                            sample_id=f"{run_id}-16px")  # labeled (resized); not comparable for the gate
    big = with_image(good, noise_png(1024, 1000), width=1024, height=1000, sample_id=f"{run_id}-big")
    big_bytes = CODEC.encode(big)
    assert 1_000_000 < len(big_bytes) < 1_048_000  # fits the broker, not the producers' limit once labeled
    big_labeled = CODEC.encode(LabeledSample(run_id=run_id, sample=big, label=forged_label))

    group = f"label-{uuid.uuid4().hex[:6]}"
    quality_group = f"quality-{run_id}"
    admin.start_group_at_end(kafka, group, ["sdg.samples.raw"])
    admin.start_group_at_end(kafka, quality_group, ["sdg.samples.labeled"])
    admin.create_topics(kafka, TopicConfig(), [TopicSpec(repartition_topic(quality_group, "quality"), "generator", None, 6, "test", {})])
    env = {**os.environ, "SDG_STATE_DIR": str(quality_state), "SDG_RUN_ID": run_id,
           "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "SDG_QUALITY__WINDOW_SIZE": "20", "SDG_QUALITY__MAX_WINDOW_S": "2"}
    quality = subprocess.Popen(sdg_command("run", "quality", "--group", quality_group), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    expected = {s.sample_id for s in stream} | {scene.sample_id, f"{run_id}-forged"}
    with processor("label", settings, source=None, sink=None, group=group) as runner:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            wide = Producer({"bootstrap.servers": kafka.bootstrap_servers, "message.max.bytes": 2_000_000})
            with RecordProducer(kafka) as producer:
                for sample in before:
                    producer.send("sdg.samples.raw", sample)
                for data, _ in raw_bad.values():
                    producer.send_bytes("sdg.samples.raw", b"hostile", data)
                for sample, _ in label_bad.values():
                    producer.send("sdg.samples.raw", sample)
                producer.send("sdg.samples.raw", mixed_size)
                wide.produce("sdg.samples.raw", key=big.sample_id.encode(), value=big_bytes)
                wide.produce("sdg.samples.labeled", key=b"big", value=big_labeled)
                wide.flush(30)
                producer.send("sdg.samples.labeled", LabeledSample(run_id=run_id, sample=scene, label=forged_label.model_copy(
                    update={"label": scene.conditioning.class_label})))
                producer.send("sdg.samples.labeled", LabeledSample(
                    run_id=run_id, sample=good.model_copy(update={"sample_id": f"{run_id}-forged"}), label=forged_label))
                producer.send_bytes("sdg.samples.labeled", b"nan", forge(
                    LabeledSample(run_id=run_id, sample=good, label=forged_label),
                    label={**forged_label.model_dump(), "margin": float("nan")}))
                producer.send_bytes(repartition_topic(quality_group, "quality"), b"probe@0000", b"\x00garbage")
                producer.send_bytes(repartition_topic(quality_group, "quality"), b"\xff\xfe", CODEC.encode(
                    LabeledSample(run_id=run_id, sample=good, label=forged_label)))
                for sample in after:
                    producer.send("sdg.samples.raw", sample)
            decided = await_decisions(kafka, run_id, expected, quality=quality, runner=thread)
        finally:
            runner.stop()
            thread.join(30)
            quality.send_signal(signal.SIGTERM)
            quality.wait(60)

    # the gate re-checks labels: a producer's agrees=true buys nothing
    assert decided[scene.sample_id].gate.decision == "rejected"
    assert "label not reproduced" in decided[scene.sample_id].gate.reason
    assert decided[f"{run_id}-forged"].gate.decision == "rejected"
    assert decided[f"{run_id}-forged"].label.label != wrong or not decided[f"{run_id}-forged"].label.agrees

    letters = [d for d in collect(DLQ_TOPIC, kafka, settings.run_id)]
    by_step: dict[str, list] = {}
    for letter in letters:
        by_step.setdefault(letter.step_id, []).append(letter)
    undecodable = [d for d in by_step["label"] if d.error_type == "UndecodableRecord"]
    decode_errors = " | ".join(d.error for d in undecodable)
    for what, (data, reason) in raw_bad.items():
        assert reason in decode_errors, what
        assert data in {d.original_value for d in undecodable}, what
    label_errors = " | ".join(d.error for d in by_step["label"])
    for what, (_, reason) in label_bad.items():
        assert reason in label_errors, what
    [too_large] = [d for d in by_step["label"] if d.original_key == big.sample_id.encode()]
    assert too_large.error_type == "RecordTooLarge" and too_large.truncated
    assert too_large.original_size == len(big_bytes)
    assert too_large.original_sha256 == hashlib.sha256(big_bytes).hexdigest()
    assert big_bytes.startswith(too_large.original_value) and len(too_large.original_value) < len(big_bytes)
    gate = {d.original_key: d for d in by_step["quality"]}
    assert gate[b"big"].error_type == "RecordTooLarge" and gate[b"big"].truncated
    assert "finite" in gate[b"nan"].error or "less than or equal" in gate[b"nan"].error
    assert "the reference set is 8×8" in gate[mixed_size.sample_id.encode()].error
    assert gate[b"probe@0000"].original_value == b"\x00garbage"
    assert "is not the record's state key" in gate[b"\xff\xfe"].error

    # the Delta sink: every record of the run, the hostile ones to the DLQ; tables stay readable everywhere
    with RecordProducer(kafka) as producer:
        producer.send_bytes("sdg.samples.accepted", b"wrong-type", CODEC.encode(example(Reading, 0, run_id)))
    tables = tmp_path / "tables"
    sink_settings = settings.model_copy(update={"state_dir": tmp_path, "tables_dir": tables})
    sink_group = f"lineage-{uuid.uuid4().hex[:6]}"
    with processor("lineage", sink_settings, group=sink_group) as sink:
        sink.run(max_idle_s=3)
    sink_letters = [d for d in collect(DLQ_TOPIC, kafka, run_id) if d.step_id == "lineage"]
    assert b"wrong-type" in {d.original_key for d in sink_letters}
    assert {data for data, _ in raw_bad.values()} <= {d.original_value for d in sink_letters}
    env = {**env, "SDG_STATE_DIR": str(tmp_path), "SDG_TABLES_DIR": str(tables)}
    counted = subprocess.run(sdg_command("query", f"SELECT count(*) AS n FROM lineage WHERE run_id = '{run_id}'"),
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert counted.returncode == 0, counted.stderr
    exported = subprocess.run(sdg_command("export", str(tmp_path / "export"), "--run", run_id), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    samples = pl.read_delta(str(tables / "samples")).filter(pl.col("run_id") == run_id)
    assert set(samples["sample_id"]) >= {s.sample_id for s in stream}
    with processor("lineage", sink_settings, group=sink_group) as again:  # a restarted sink reads its tables back
        again.run(max_idle_s=2)
    assert again.step.fn.stats.rows == {}


def test_a_row_that_does_not_fit_its_table_is_dead_lettered_and_the_rest_written(
        kafka: KafkaConfig, fresh_topic, run_id: str, tmp_path: Path) -> None:
    from processors.lineage import rows_of

    topic = fresh_topic(1)
    samples = [example(GeneratedSample, i, run_id) for i in range(5)]
    with RecordProducer(kafka) as producer:
        for sample in samples:
            producer.send(topic, sample)

    def rows(record: Any, topic: str, partition: int, offset: int) -> dict:
        out = rows_of(record, topic, partition, offset)
        if offset == 2:  # a value out of an int32 column's range: the record cannot be written
            out["samples"][0]["width"] = 2 ** 40
        return out

    sink = delta_runner([topic], fn=rows, kafka=kafka, tables=DeltaTables(tmp_path), group=f"g-{run_id}", run_id=run_id)
    sink.run(max_idle_s=2)
    assert sink.step.fn.stats.dead_letters == 1
    written = pl.read_delta(str(tmp_path / "samples"))
    assert sorted(written["kafka_offset"]) == [0, 1, 3, 4]
    assert sorted(pl.read_delta(str(tmp_path / "lineage"))["kafka_offset"]) == [0, 1, 3, 4]
    [letter] = [d for d in collect(DLQ_TOPIC, kafka, run_id) if d.topic == topic]
    assert letter.offset == 2 and "does not fit its schema" in letter.error


def test_a_tampered_labeler_is_refused(quality_state: Path, tmp_path: Path) -> None:

    state = tmp_path / "state"
    shutil.copytree(quality_state / "models", state / "models")
    settings = Settings(state_dir=state)
    settings.labeler()  # sealed and untouched: it loads
    folder = state / "models" / "labeler" / (state / "models" / "labeler" / "LATEST").read_text()
    int8 = folder / "int8.onnx"
    original = int8.read_bytes()
    int8.write_bytes(bytes(len(original)))  # zeroed
    with pytest.raises(ModelFileError, match="int8.onnx was modified"):
        settings.labeler()
    int8.write_bytes((folder / "fp32.onnx").read_bytes())  # swapped
    with pytest.raises(ModelFileError, match="modified"):
        settings.labeler()
    int8.write_bytes(original)
    extractor = state / "models" / "extractor" / (state / "models" / "extractor" / "LATEST").read_text()
    (extractor / "fp32.json").write_text((extractor / "fp32.json").read_text().replace("features", "classifier"))
    with pytest.raises(ModelFileError, match="fp32.json was modified"):
        settings.judge()


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("run_id", "", "should match pattern"),
    ("run_id", "x" * 101, "should match pattern"),
    ("run_id", "a/b", "should match pattern"),
    ("sample_id", "", "should match pattern"),
    ("node_id", "node 0", "should match pattern"),
    ("created_ms", 10 ** 18, "less than or equal"),
])
def test_identity_fields_are_validated_before_anything_is_written(field: str, value: Any, reason: str) -> None:
    with pytest.raises(UndecodableRecord, match=reason):
        CODEC.decode(forge(example(GeneratedSample, 0, "run-1"), **{field: value}))


def test_non_finite_values_are_undecodable() -> None:
    reading = example(Reading, 0, "run-1")
    with pytest.raises(UndecodableRecord, match="finite"):
        CODEC.decode(forge(reading, die_c=float("nan")))
    labeled = example(LabeledSample, 0, "run-1")
    with pytest.raises(UndecodableRecord, match="finite"):
        CODEC.decode(forge(labeled, label={**labeled.label.model_dump(), "margin": float("inf")}))


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP"])
def test_only_png_images_are_decoded(fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format=fmt)
    with pytest.raises(ValueError, match="is not a PNG"):
        decode_png(buf.getvalue())


def test_a_plant_fault_out_of_range_is_refused() -> None:
    from infra.plant import NodePlant
    from processors.thermal import ThermalConfig
    from schemas.records import PlantFault

    plant = NodePlant("node-0", ThermalConfig().cooling)
    with pytest.raises(ValueError, match="outside"):
        plant.inject(PlantFault(run_id="run-1", node_id="node-0", kind="pump_failure", magnitude=-5.0))


def test_secrets_are_masked_and_state_is_owner_only(tmp_path: Path, broker) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "SDG_STATE_DIR": str(state), "COLUMNS": "200",
           "SDG_KAFKA__EXTRA_CONFIG": json.dumps({"sasl.password": "hunter2", "ssl.key.location": "/keys/client.key"}),
           "SDG_BROKER__EXTRA_PROPERTIES": json.dumps(
               {"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": "org.Scram required password=\"s3cret\";",
                "ssl.keystore.password": "k3y"})}
    shown = subprocess.run(sdg_command("settings"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    for secret in ("hunter2", "s3cret", "k3y"):
        assert secret not in shown.stdout
    assert "/keys/client.key" in shown.stdout  # a file's location is no secret
    assert shown.stdout.count("**********") == 3
    assert state.stat().st_mode & 0o777 == 0o700
    assert broker.nodes[0].properties_file.stat().st_mode & 0o777 == 0o600
    assert broker.home.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("args", [
    ["plan", "--generator", "gan", "--param", "foo"],
    ["plan", "--generator", "gan", "--classes", "a,b"],
    ["plan", "--generator", "gan", "--per-class", "0"],
    ["query", "SELEC nonsense"],
    ["query", "SELECT 1", "--as-of", "lineage=x"],
    ["export", "out", "--format", "bogus"],
    ["verify", "--as-of", "999999"],
    ["plan", "--generator", "gan"],  # no broker listens there
])
def test_cli_mistakes_end_in_one_clear_line(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "SDG_STATE_DIR": str(tmp_path), "SDG_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "COLUMNS": "200"}
    started = time.monotonic()
    done = subprocess.run(sdg_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert "error" in (done.stdout + done.stderr).lower()
    assert time.monotonic() - started < 20
