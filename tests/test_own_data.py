"""Your own data: the reference set comes from SDG_DATA__SOURCE (digits, mnist, a folder, a Parquet or Delta table),
keeps its size and colour, and runs through generate → label → quality → lineage on the real broker."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.image import decode_png, png_bytes, sample_image
from models.reference import DataConfig, load_reference
from models.render import ProceduralRenderer, RenderConfig
from schemas.errors import SdgError
from sdg.settings import Settings, valid_names
from streams import admin
from streams.config import KafkaConfig, RunnerConfig
from tests.conftest import REPO, await_decisions, collect, sdg_command


def _digits(size: int, channels: int, per_class: int, *, dark_ink: bool = False, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Real-looking data made here: the renderer's digits at ``size`` (its colour mode: coloured digits on textured
    paper), ``per_class`` per class."""
    labels = [c for c in range(10) for _ in range(per_class)]
    renderer = ProceduralRenderer(RenderConfig(image_size=size, channels=channels, dark_ink=dark_ink))
    return renderer([seed * 100_000 + i for i in range(len(labels))], labels).images, labels


def rgb_folder(root: Path, size: int = 16, per_class: int = 16) -> Path:
    images, labels = _digits(size, 3, per_class)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{i}.png")
    return root


def grey_table(path: Path, size: int = 12, per_class: int = 16) -> Path:
    """Dark digits on light paper, as a Parquet table of (PNG bytes, class name)."""
    images, labels = _digits(size, 1, per_class, dark_ink=True)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    pq.write_table(pa.table({"image": [png_bytes(i) for i in images], "label": [names[c] for c in labels]}), path)
    return path


def test_every_source_keeps_its_size_colour_and_polarity(tmp_path: Path) -> None:
    digits = load_reference()
    assert (digits.images.shape, digits.channels, digits.dark_ink) == ((1797, 8, 8), 1, False)
    mnist = load_reference(DataConfig(source="mnist"))
    assert mnist.images.shape == (5000, 28, 28) and mnist.num_classes == 10 and not mnist.dark_ink
    folder = load_reference(DataConfig(source=str(rgb_folder(tmp_path / "rgb"))))
    assert folder.images.shape == (160, 16, 16, 3) and folder.channels == 3 and folder.class_names[:2] == ("0", "1")
    table = load_reference(DataConfig(source=str(grey_table(tmp_path / "grey.parquet"))))
    assert table.images.shape == (160, 12, 12) and table.dark_ink  # found from the data: no flag to guess
    assert table.class_names[0] == "eight" and table.num_classes == 10  # names sorted
    resized = load_reference(DataConfig(source=str(tmp_path / "rgb"), image_size=24))
    assert resized.images.shape == (160, 24, 24, 3)

    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "delta"), pq.read_table(tmp_path / "grey.parquet"))
    delta = load_reference(DataConfig(source=str(tmp_path / "delta")))
    assert np.array_equal(delta.images, table.images) and np.array_equal(delta.labels, table.labels)


def test_bad_sources_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SdgError, match="not digits, mnist, or an existing folder"):
        load_reference(DataConfig(source=str(tmp_path / "missing")))
    mixed = tmp_path / "mixed"
    for i, size in enumerate((10, 12)):
        (mixed / "a").mkdir(parents=True, exist_ok=True)
        Image.new("L", (size, size)).save(mixed / "a" / f"{i}.png")
    with pytest.raises(SdgError, match="SDG_DATA__IMAGE_SIZE"):
        load_reference(DataConfig(source=str(mixed)))
    (mixed / "a" / "2.png").write_bytes(b"not an image")
    with pytest.raises(SdgError, match="2.png is not a readable image"):
        load_reference(DataConfig(source=str(mixed), image_size=8))
    assert "SDG_DATA__SOURCE" in valid_names() and "SDG_DATA__IMAGE_SIZE" in valid_names()


def test_png_round_trips_in_the_data_mode() -> None:
    images, _ = _digits(20, 3, 1)
    png = png_bytes(images[0])
    assert Image.open(io.BytesIO(png)).mode == "RGB"
    assert np.array_equal(decode_png(png, shape=(20, 20), channels=3), images[0])
    assert decode_png(png, channels=1).shape == (20, 20)


def test_generators_follow_the_data_size_and_channels() -> None:
    from models.diffusion import DiffusionConfig, train_diffusion
    from models.gan import GanConfig, train_gan
    from models.reference import LabelBudget, LabeledData

    images, labels = _digits(16, 3, 4)
    budget = LabelBudget("few", len(labels), 4, "h", "r", tuple(range(len(labels))))
    data = LabeledData(images.astype(np.float32) / 255.0, np.array(labels), budget)
    gan_config = GanConfig.for_data(16, 3, 10, steps=3, batch_size=8)
    assert gan_config.arch == "conv" and GanConfig.for_data(8, 1, 10).arch == "mlp"
    gan = train_gan(data, gan_config)
    assert gan([1, 2], [3, 4]).images.shape == (2, 16, 16, 3)
    diffusion = train_diffusion(data, DiffusionConfig.for_data(16, 3, 10, steps=2, batch_size=8))
    assert len(diffusion.config.channels) == 4  # 16 → 8 → 4 → 2: depth follows the resolution
    assert diffusion([1], [3], steps="2").images.shape == (1, 16, 16, 3)
    assert DiffusionConfig.for_data(28, 1, 10).channels == (16, 32, 64)  # 28 → 14 → 7
    assert DiffusionConfig.for_data(8, 1, 10).channels == (32, 64, 64)  # the digits UNet, unchanged
    with pytest.raises(Exception, match="configured for 1×16"):
        train_gan(data, GanConfig.for_data(16, 1, 10, steps=1))


def test_piped_tables_keep_whole_names() -> None:
    done = subprocess.run(sdg_command("topics", "list"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "sdg.samples.review" in done.stdout and "…" not in done.stdout


def _pipeline(settings: Settings, kafka: KafkaConfig, per_class: int) -> dict:
    """Generate with all three generators, label, gate and record lineage; returns the decisions by sample id."""
    from processors.generate import plan_jobs
    from sdg.workers import processor
    from streams.catalog import LINEAGE_TOPICS
    from streams.producer import RecordProducer

    run_id = settings.run_id
    for group, topics in ((f"g-{run_id}", ["sdg.requests"]), (f"l-{run_id}", ["sdg.samples.raw"]),
                          (f"q-{run_id}", ["sdg.samples.labeled"]), (f"s-{run_id}", list(LINEAGE_TOPICS))):
        admin.start_group_at_end(kafka, group, topics)
    env = {**os.environ, "SDG_STATE_DIR": str(settings.state_dir), "SDG_RUN_ID": run_id,
           "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_DATA__SOURCE": settings.data.source,
           "SDG_QUALITY__WINDOW_SIZE": "50", "SDG_QUALITY__MAX_WINDOW_S": "2"}
    quality = subprocess.Popen(sdg_command("run", "quality", "--group", f"q-{run_id}"), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    jobs = [job for kind in ("gan", "diffusion", "procedural")
            for job in plan_jobs(kind, classes=list(range(10)), per_class=per_class, seed=1, run_id=run_id)]
    with processor("generate", settings, group=f"g-{run_id}") as generate, \
            processor("label", settings, group=f"l-{run_id}") as label, \
            processor("lineage", settings, group=f"s-{run_id}") as sink:
        threads = [threading.Thread(target=r.run, daemon=True) for r in (generate, label, sink)]
        for thread in threads:
            thread.start()
        try:
            with RecordProducer(kafka) as producer:
                for job in jobs:
                    producer.send("sdg.requests", job)
            def planned() -> set[str]:
                return {s.sample_id for s in collect("sdg.samples.raw", kafka, run_id)}

            deadline = time.monotonic() + 120
            while len(wanted := planned()) < 30 * per_class and time.monotonic() < deadline:
                time.sleep(1)
            decided = await_decisions(kafka, run_id, wanted, quality=quality, runner=threads[1])
        finally:
            generate.stop()
            label.stop()
            sink.drain()
            for thread in threads:
                thread.join(30)
            quality.send_signal(signal.SIGTERM)
            quality.wait(60)
    return decided


SOURCES = {
    "rgb-folder": (lambda tmp: str(rgb_folder(tmp / "rgb", size=16, per_class=16)), (16, 16, 3)),
    "parquet": (lambda tmp: str(grey_table(tmp / "grey.parquet", size=12, per_class=16)), (12, 12, 1)),
    "mnist": (lambda tmp: "mnist", (28, 28, 1)),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_own_data_end_to_end_through_the_broker(source: str, kafka: KafkaConfig, run_id: str, tmp_path: Path) -> None:
    from rich.console import Console

    from sdg.training import train_generator, train_quality_models

    make, (height, width, channels) = SOURCES[source]
    settings = Settings(state_dir=tmp_path / "state", run_id=run_id, data=DataConfig(source=make(tmp_path)),
                        kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers),
                        runner=RunnerConfig(batch_size=32))
    quiet = Console(quiet=True)
    train_quality_models(settings, extractor_steps=20, labeler_steps=20, console=quiet)
    for kind in ("gan", "diffusion"):
        trained = train_generator(settings, kind, labels_per_class=None, pseudo_labels=False, steps=3, seed=0,
                                  console=quiet)
        assert Image.open(trained.grid).mode == ("RGB" if channels == 3 else "L")
    assert settings.models_dir != Settings(state_dir=settings.state_dir).models_dir  # one registry per data set

    decided = _pipeline(settings, kafka, per_class=2)
    assert len(decided) == 60
    for decision in decided.values():
        sample = decision.sample
        assert (sample.height, sample.width, sample.channels) == (height, width, channels)
        image = sample_image(sample)
        assert image.shape == ((height, width, 3) if channels == 3 else (height, width))
        assert sample.image_format == "raw"  # small images travel as raw pixels
    assert {d.sample.generator for d in decided.values()} == {"gan", "diffusion", "procedural"}

    from sdg.history import query

    tables = settings.delta_tables()
    rows = query(tables, "SELECT width, height, channels, count(*) AS n FROM samples WHERE run_id = ? "
                         "GROUP BY width, height, channels", params=[run_id]).to_pylist()
    assert rows == [{"width": width, "height": height, "channels": channels, "n": 60}]

    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "SDG_STATE_DIR": str(settings.state_dir)}
    out = tmp_path / "coco"
    (decision, count), = Counter(d.gate.decision for d in decided.values()).most_common(1)  # tiny models: any
    done = subprocess.run(sdg_command("export", str(out), "--format", "coco", "--run", run_id, "--decision", decision),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == count
    for entry in coco["images"]:
        with Image.open(out / entry["file_name"]) as exported:
            assert (exported.width, exported.height, len(exported.getbands())) == (entry["width"], entry["height"],
                                                                                   channels)
            assert (entry["width"], entry["height"]) == (width, height)


def test_data_flag_selects_the_source(tmp_path: Path) -> None:
    done = subprocess.run(sdg_command("train-labeler", "--data", str(tmp_path / "nowhere"), "--extractor-steps", "1",
                                      "--labeler-steps", "1"), cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SDG_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 2 and "not digits, mnist, or an existing folder" in done.stdout, done.stdout
    shown = subprocess.run(sdg_command("settings"), cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SDG_DATA__SOURCE": "mnist", "SDG_STATE_DIR": str(tmp_path / "state")})
    assert json.loads(shown.stdout[:shown.stdout.rindex("}") + 1])["data"]["source"] == "mnist"


@pytest.mark.integration  # writes the Delta tables
def test_samples_tables_written_before_channels_still_take_appends(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    from processors.lineage import rows_of
    from schemas.examples import example_sample
    from schemas.tables import PARTITION_BY, SAMPLES
    from sdg.history import query, to_sample
    from streams.delta_sink import DeltaTables

    tables = DeltaTables(tmp_path / "tables")
    old_schema = pa.schema([f for f in SAMPLES if f.name != "channels"])
    old = rows_of(example_sample(0, "old-run"), "sdg.samples.raw", 0, 0)["samples"][0]
    del old["channels"]
    write_deltalake(tables.path("samples"), pa.Table.from_pylist([old], schema=old_schema), partition_by=PARTITION_BY)
    new = rows_of(example_sample(1, "new-run"), "sdg.samples.raw", 0, 1)["samples"]
    tables.append("samples", pa.Table.from_pylist(new, schema=SAMPLES), {}, retries=1)
    rows = {r["run_id"]: r for r in query(tables, "SELECT * FROM samples").to_pylist()}
    assert rows["old-run"]["channels"] is None and rows["new-run"]["channels"] == 1
    assert to_sample(rows["old-run"]).channels == 1  # a row from before reads as grey


@pytest.mark.parametrize("channels", [1, 3])
def test_raw_and_png_images_give_the_same_pixels(channels: int) -> None:
    from models.image import encode_image
    from schemas.examples import example_sample

    images, _ = _digits(20, channels, 1)
    for image_format in ("raw", "png"):
        data, kept = encode_image(images[0], image_format)
        sample = example_sample(0, "t").model_copy(update={"image": data, "image_format": kept, "width": 20,
                                                           "height": 20, "channels": channels})
        assert kept == image_format and np.array_equal(sample_image(sample), images[0])
        other = 3 if channels == 1 else 1  # converted the way PIL converts a PNG
        assert np.array_equal(sample_image(sample, other), decode_png(png_bytes(images[0]), channels=other))
    assert encode_image(np.zeros((128, 128), np.uint8))[1] == "raw" and encode_image(np.zeros((129, 128), np.uint8))[1] == "png"
