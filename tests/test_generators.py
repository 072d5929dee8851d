"""Reference data and label accounting, the three generators, the generate function (tiny seeded models)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.catalog import GeneratorCatalog
from models.diffusion import DiffusionConfig, train_diffusion
from models.gan import GanConfig, GanModel, train_gan
from models.generator import GeneratorError
from models.image import decode_png, sample_image
from models.reference import LabelAccountingError, Splits, check_budget, load_digits_reference, load_folder, make_splits
from models.registry import ModelRegistry
from models.render import ProceduralRenderer
from processors.generate import GenerateConfig, generate, generate_encoded, plan_jobs
from schemas.codec import Encoded, RecordCodec
from schemas.records import GeneratedSample, GenerationJob, Reading, Record

CODEC = RecordCodec()

TINY_GAN = GanConfig(steps=30, hidden=32, batch_size=32)
TINY_DIFFUSION = DiffusionConfig(steps=10, channels=(8, 16), batch_size=16, sample_steps=3)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return make_splits(load_digits_reference(), labels_per_class=5, seed=0)


@pytest.fixture(scope="module")
def gan(splits: Splits) -> GanModel:
    torch.manual_seed(0)
    return train_gan(splits.labeled("few"), TINY_GAN)


@pytest.fixture(scope="module")
def diffusion(splits: Splits):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return train_diffusion(splits.labeled("few"), TINY_DIFFUSION)


def test_torch_is_the_pinned_build() -> None:
    assert importlib.metadata.version("torch").split("+")[0] == "2.13.0"


def test_splits_are_fixed_stratified_and_disjoint(splits: Splits) -> None:
    again = make_splits(load_digits_reference(), labels_per_class=5, seed=0)
    assert again.hashes == splits.hashes
    assert make_splits(load_digits_reference(), labels_per_class=5, seed=1).hashes != splits.hashes
    assert not np.intersect1d(splits.train, splits.test).size
    assert splits.train.size + splits.test.size == 1797
    assert np.bincount(splits.reference.labels[splits.few]).tolist() == [5] * 10
    assert not np.intersect1d(splits.unlabeled, splits.few).size


def test_label_accounting_refuses_overlap_test_labels_and_overspending(splits: Splits) -> None:
    with pytest.raises(LabelAccountingError, match="overlap"):
        Splits(splits.reference, splits.train, np.append(splits.test, splits.train[0]), splits.few, 5, 0)
    with pytest.raises(LabelAccountingError, match="from the train split"):
        Splits(splits.reference, splits.train, splits.test, np.append(splits.few, splits.test[0]), 5, 0)
    with pytest.raises(LabelAccountingError, match="'few' or 'train'"):
        splits.labeled("test")  # type: ignore[arg-type]
    few = splits.labeled("few").budget
    assert few.n_labels == 50 and few.labels_per_class == 5
    assert check_budget([few, few], declared_labels=50) == 50  # the same labels twice count once
    with pytest.raises(LabelAccountingError, match="1347 real labels used, 50 declared"):  # few ⊂ train
        check_budget([few, splits.labeled("train").budget], declared_labels=50)


def test_folder_reference(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    reference = load_folder(tmp_path, size=8)
    assert reference.images.shape == (6, 8, 8) and reference.labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("name", ["gan", "diffusion", "procedural"])
def test_generators_make_8x8_uint8_images_deterministically(name: str, gan, diffusion) -> None:  # type: ignore[no-untyped-def]
    model = {"gan": gan, "diffusion": diffusion, "procedural": ProceduralRenderer()}[name]
    seeds, classes = [11, 12, 13, 14], [0, 3, 3, 9]
    out = model(seeds, classes)
    assert out.images.shape == (4, 8, 8) and out.images.dtype == np.uint8
    assert out.images.max() > 0
    assert (model(seeds, classes).images == out.images).all()  # the same request, the same bytes
    assert (model([13], [3]).images[0] == out.images[2]).all()  # and alone, outside its batch
    assert not (model([99], [3]).images[0] == out.images[2]).all()  # another seed, another image
    with pytest.raises(GeneratorError, match="not \\[10\\]"):
        model([1], [10])


def test_diffusion_takes_steps_and_guidance(diffusion) -> None:  # type: ignore[no-untyped-def]
    guided = diffusion([1, 2], [4, 5], steps="5", guidance="1.0")
    assert guided.steps == 5 and guided.scheduler == "DDIM" and guided.images.shape == (2, 8, 8)
    with pytest.raises(GeneratorError, match="steps and guidance"):
        diffusion([1], [1], eta="1")


def test_procedural_scenes_have_exact_boxes_and_masks() -> None:
    renderer = ProceduralRenderer()
    assert renderer.label_budgets == []  # no real labels
    out = renderer([5, 6], [7, 2], mode="scene")
    assert out.images.shape == (2, 48, 48)
    for objects, first in zip(out.objects, (7, 2)):
        assert 2 <= len(objects) <= 4 and objects[0].class_label == first
        for obj in objects:
            x, y, w, h = obj.bbox
            ys, xs = np.nonzero(obj.mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


@pytest.mark.parametrize("name", ["gan", "diffusion"])
def test_scenes_composed_of_a_generators_objects_have_exact_boxes_and_masks(name: str, gan, diffusion,  # type: ignore[no-untyped-def]
                                                                            tmp_path: Path) -> None:
    catalog = GeneratorCatalog(tmp_path)
    catalog.put({"gan": gan, "diffusion": diffusion}[name])
    job = plan_jobs(name, classes=[3, 8], per_class=3, seed=40, run_id="r", params={"mode": "scene"})[0]

    def samples() -> list[GeneratedSample]:
        return [r for r in generate(job, generators=catalog, config=GenerateConfig()) if isinstance(r, GeneratedSample)]

    first = samples()
    assert [s.image_sha256 for s in samples()] == [s.image_sha256 for s in first]  # a function of seed and class
    assert len({s.image_sha256 for s in first}) == len(first) == 6
    for sample in first:
        assert (sample.width, sample.height) == (48, 48) and 1 <= len(sample.objects) <= 4
        assert sample.conditioning.params == {"mode": "scene"}
        image = sample_image(sample).astype(int)
        union = np.zeros(image.shape, bool)
        for obj in sample.objects:
            mask = decode_png(obj.mask_png) > 127  # type: ignore[arg-type]
            ys, xs = np.nonzero(mask)
            assert list(obj.bbox) == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            union |= mask
        canvas = set(image[~union].tolist())  # a plain canvas around the objects, each its own ink
        assert len(canvas) == 1 and canvas <= {0, 255}
        assert (abs(image[union] - canvas.pop()) > 60).all()


@pytest.fixture(scope="module")
def layout(splits: Splits):  # type: ignore[no-untyped-def]
    from models.layout import LayoutConfig, train_layout

    return train_layout(splits.labeled("few"), LayoutConfig.for_data(8, 1, 10, scene=32, steps=10, channels=(8, 16),
                                                                      batch_size=8, sample_steps=3))


def test_layout_diffusion_draws_scenes_into_seeded_layouts(tmp_path: Path, layout) -> None:  # type: ignore[no-untyped-def]
    seeds, classes = [5, 6, 7], [7, 2, 2]
    out = layout(seeds, classes, mode="scene")
    assert out.images.shape == (3, 32, 32) and out.scheduler == "DDIM" and out.steps == 3
    assert (layout(seeds, classes, mode="scene").images == out.images).all()
    assert (layout([7], [2], mode="scene").images[0] == out.images[2]).all()
    assert layout.label_budgets[0].n_labels == 50 and len(layout.boxes) == 50  # the few's labels, their boxes
    for seed, first, objects in zip(seeds, classes, out.objects):
        boxes = layout.layout(seed, first)
        assert 2 <= len(boxes) <= 4 and boxes[0].class_label == first
        union = np.zeros((32, 32), int)
        for box in boxes:
            x, y, w, h = (int(v) for v in box.bbox)
            assert (w, h) in {(int(a), int(b)) for _, a, b in layout.boxes[layout.boxes[:, 0] == box.class_label]}
            assert box.mask.sum() == w * h and box.mask[y:y + h, x:x + w].all()
            union += box.mask
        assert union.max() == 1  # boxes do not overlap
        assert all(any((o.mask <= b.mask).all() and o.class_label == b.class_label for b in boxes) for o in objects)
    loaded = GeneratorCatalog(tmp_path)
    version = loaded.registry.save("layout-diffusion", layout.weights(), layout.checkpoint_config())
    again = loaded.get("layout-diffusion")
    assert again.version == version and (again(seeds, classes, mode="scene").images == out.images).all()
    for params in ({"mode": "crop"}, {}):
        with pytest.raises(GeneratorError, match="draws scenes: plan it with mode=scene"):
            layout([1], [1], **params)
    job = plan_jobs("layout-diffusion", classes=[3], per_class=2, seed=1, run_id="r", params={"mode": "scene"})[0]
    samples = [r for r in generate(job, generators=loaded, config=GenerateConfig()) if isinstance(r, GeneratedSample)]
    assert [(s.generator, s.width, s.conditioning.params) for s in samples] == [
        ("layout-diffusion", 32, {"mode": "scene"})] * 2


def test_a_layouts_objects_are_the_ink_drawn_in_its_boxes() -> None:
    from models.generator import Annotated
    from models.layout import drawn_objects

    image = np.zeros((1, 16, 16), np.uint8)
    image[0, 2:6, 3:5] = 200  # ink inside the first box and beyond its right edge
    image[0, 3:5, 5:9] = 200
    image[0, 12, 12] = 40  # too faint to be ink
    boxes = []
    for x, y, w, h in ((2, 1, 5, 6), (10, 10, 4, 4)):
        mask = np.zeros((16, 16), bool)
        mask[y:y + h, x:x + w] = True
        boxes.append(Annotated(4, (x, y, w, h), mask))
    (drawn,) = drawn_objects(image, [boxes], dark_ink=False, threshold=0.25)
    assert len(drawn) == 1  # the second box holds no ink: no object
    assert drawn[0].bbox == (3.0, 2.0, 4.0, 4.0) and drawn[0].mask.sum() == 8 + 4
    (light,) = drawn_objects(255 - image, [boxes], dark_ink=True, threshold=0.25)
    assert light[0].bbox == drawn[0].bbox


def test_checkpoints_are_versioned_by_content_and_checked(tmp_path: Path, gan: GanModel) -> None:
    registry = ModelRegistry(tmp_path)
    version = registry.save("gan", gan.weights(), gan.checkpoint_config())
    assert registry.save("gan", gan.weights(), gan.checkpoint_config()) == version
    loaded = GeneratorCatalog(tmp_path).get("gan")
    assert loaded.version == version and loaded.label_budgets[0].n_labels == 50
    assert (loaded([1, 2], [3, 4]).images == gan([1, 2], [3, 4]).images).all()
    other = registry.save("gan", gan.weights(), {**gan.checkpoint_config(), "note": "retrained"})
    assert other != version
    weights = tmp_path / "gan" / version / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(GeneratorError, match="was modified"):
        GeneratorCatalog(tmp_path).get("gan", version)
    with pytest.raises(GeneratorError, match="unknown generator 'vae'"):
        GeneratorCatalog(tmp_path).get("vae")
    with pytest.raises(GeneratorError, match="no diffusion model"):
        GeneratorCatalog(tmp_path).get("diffusion")


def _catalog(tmp_path: Path, gan: GanModel) -> GeneratorCatalog:
    catalog = GeneratorCatalog(tmp_path)
    catalog.put(gan)
    return catalog


def test_generate_makes_samples_with_provenance_and_stable_ids(tmp_path: Path, gan: GanModel) -> None:
    catalog = _catalog(tmp_path, gan)
    job = plan_jobs("gan", classes=[1, 2, 3], per_class=4, seed=7, run_id="r", job_size=5)[1]
    assert job.count == 5 and job.seed_start == 7 * 10**9 + 5
    out = generate(job, generators=catalog, config=GenerateConfig(node_id="n9"))
    samples = [r for r in out if isinstance(r, GeneratedSample)]
    load = [r for r in out if isinstance(r, Reading)]
    assert len(samples) == 5 and len(load) == 1 and load[0].rate_sps and load[0].node_id == "n9"
    assert [s.conditioning.class_label for s in samples] == [3, 1, 2, 3, 1]  # the plan's class cycle goes on
    for s in samples:
        assert s.generator == "gan" and s.generator_version == gan.version and s.node_id == "n9"
        assert hashlib.sha256(s.image).hexdigest() == s.image_sha256
        assert s.image_format == "raw" and sample_image(s).shape == (8, 8)
    again = generate(job, generators=catalog, config=GenerateConfig(node_id="n2"))
    assert [s.sample_id for s in samples] == [s.sample_id for s in again if isinstance(s, GeneratedSample)]
    assert [s.image for s in samples] == [s.image for s in again if isinstance(s, GeneratedSample)]


def test_the_processors_encoded_samples_are_the_codecs_bytes_of_generates_records(tmp_path: Path, gan: GanModel) -> None:
    """The generate processor's hot path (samples encoded at once) gives the records ``generate`` gives, byte for byte
    once their two measured fields agree; a scene job stays typed records."""
    catalog = _catalog(tmp_path, gan)
    job = plan_jobs("gan", classes=[1, 2, 3], per_class=30, seed=7, run_id="r", job_size=64)[0]
    records = generate(job, generators=catalog, config=GenerateConfig())
    encoded, load = generate_encoded(job, generators=catalog, config=GenerateConfig())
    assert isinstance(encoded, Encoded) and encoded.type is GeneratedSample and isinstance(load, Reading)
    samples = [r for r in records if isinstance(r, GeneratedSample)]
    assert encoded.keys == [s.sample_id.encode() for s in samples]
    decoded = CODEC.decode(encoded.values[0])
    assert isinstance(decoded, GeneratedSample)
    measured = {"created_ms": decoded.created_ms, "timings_ms": decoded.timings_ms}
    assert [CODEC.encode(s.model_copy(update=measured)) for s in samples] == encoded.values
    renderer = ProceduralRenderer()
    catalog.put(renderer)
    scenes = plan_jobs("procedural", classes=[1, 2], per_class=2, seed=1, run_id="r", params={"mode": "scene"})[0]
    out = generate_encoded(scenes, generators=catalog, config=GenerateConfig())
    assert all(isinstance(r, Record) for r in out) and any(isinstance(r, GeneratedSample) and r.objects for r in out)


def test_plan_covers_every_class_evenly() -> None:
    jobs = plan_jobs("procedural", classes=list(range(10)), per_class=30, seed=1, run_id="r", job_size=64)
    counts = np.zeros(10, int)
    for job in jobs:
        for i in range(job.count):
            counts[job.classes[i % len(job.classes)]] += 1
    assert counts.tolist() == [30] * 10
    seeds = [job.seed_start + i for job in jobs for i in range(job.count)]
    assert len(set(seeds)) == 300


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"generator": "vae"}, "unknown generator"), ({"count": 5000}, "at most 4096"),
     ({"classes": [12]}, "not \\[12\\]"), ({"params": {"mode": "x"}}, "takes no parameters")],
)
def test_bad_requests_raise_with_a_reason(tmp_path: Path, gan: GanModel, change: dict, reason: str) -> None:
    job = GenerationJob(run_id="r", job_id="j", generator="gan", classes=[1], seed_start=0, count=2)
    with pytest.raises(GeneratorError, match=reason):
        generate(job.model_copy(update=change), generators=_catalog(tmp_path, gan), config=GenerateConfig())


def test_a_cap_expires_from_when_it_was_decided() -> None:
    from schemas.records import Throttle
    from streams.throttle import RateCap

    cap = RateCap("n1")
    now = time.monotonic()
    cap.apply(Throttle(run_id="r", node_id="n1", max_rate_sps=10, reason="hot", ttl_s=30), now=now)
    assert cap.current(now + 1) == (False, 10)
    assert cap.current(now + 31) == (False, None)
    stale = Throttle(run_id="r", node_id="n1", paused=True, reason="old", ttl_s=30,
                     created_ms=int((time.time() - 60) * 1000))
    cap.apply(stale, now=now)
    assert cap.current(now) == (False, None)  # replayed from the log after it expired
    cap.apply(Throttle(run_id="r", node_id="other", paused=True, reason="x", ttl_s=30), now=now)
    assert cap.wait_s(now) == 0
    cap.apply(Throttle(run_id="r", node_id="n1", max_rate_sps=20, reason="hot", ttl_s=30), now=now)
    cap.book(10, now)
    assert cap.wait_s(now) == pytest.approx(0.5)


def test_table_reference(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.image import png_bytes
    from models.reference import load_table

    images = [np.full((8, 8), 17 * i, dtype=np.uint8) for i in range(4)]
    pq.write_table(pa.table({"image": [png_bytes(i) for i in images], "label": [0, 1, 2, 1]}), tmp_path / "ref.parquet")
    reference = load_table(tmp_path / "ref.parquet")
    assert reference.images.shape == (4, 8, 8) and reference.num_classes == 3
    assert np.allclose(reference.images[3], 51 / 255)
