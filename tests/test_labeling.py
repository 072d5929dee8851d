"""The labeler and the quality extractor as real ONNX Runtime models, the label function and the gate."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.corruption import mixed_stream
from models.image import to_uint8
from models.quality import RunningMoments
from models.reference import load_digits_reference, make_splits
from models.render import ProceduralRenderer
from models.runtime import ModelFileError, OnnxModel, OnnxSpec, export_onnx
from processors.generate import GenerateConfig, generate, plan_jobs
from processors.label import label
from processors.quality import GeneratorWindows, QualityConfig, _pack_closed, _unpack_closed
from schemas.records import GeneratedSample, LabeledSample, QualityWindow, SampleDecision
from sdg.settings import Settings

SPLITS = make_splits(load_digits_reference())


def _test_images() -> tuple[np.ndarray, np.ndarray]:
    images, labels = SPLITS.test_set()
    return to_uint8(images), labels


def test_int8_labeler_keeps_the_fp32_accuracy_and_records_its_budget(quality_state: Path) -> None:
    folder = quality_state / "models" / "labeler"
    version = (folder / "LATEST").read_text()
    images, labels = _test_images()
    accuracy = {p: float((OnnxModel(folder / version / f"{p}.onnx").run(images).argmax(1) == labels).mean())
                for p in ("fp32", "int8")}
    assert accuracy["fp32"] > 0.85
    assert abs(accuracy["int8"] - accuracy["fp32"]) <= 0.02
    config = json.loads((folder / version / "config.json").read_text())
    assert [(b["split"], b["n_labels"]) for b in config["label_budgets"]] == [("few", 100)]
    assert OnnxModel(folder / version / "int8.onnx").version != OnnxModel(folder / version / "fp32.onnx").version


def test_a_user_onnx_classifier_with_its_description_replaces_the_labeler(tmp_path: Path, quality_state: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 3), torch.nn.Softmax(dim=1))
    path = tmp_path / "mine.onnx"
    export_onnx(net, path, image_size=16, input="pixels", output="probs")
    spec = OnnxSpec(name="my-classifier", kind="classifier", input="pixels", output="probs", image_size=16,
                    scale=(0.0, 255.0), invert=True, output_is="probabilities", classes=(7, 3, 5))
    spec.write(path.with_suffix(".json"))
    labeler = Settings(state_dir=quality_state, quality=QualityConfig(labeler=path)).labeler()
    images, _ = _test_images()
    probabilities = labeler.model.run(images[:20])
    big = np.stack([np.asarray(Image.fromarray(i).resize((16, 16), Image.Resampling.BILINEAR)) for i in images[:20]])
    expected = net(torch.as_tensor(255.0 * (1.0 - big / 255.0), dtype=torch.float32)[:, None]).detach().numpy()
    assert np.allclose(probabilities, expected, atol=1e-5)
    assert labeler.name == "my-classifier" and labeler.classes == (7, 3, 5)

    path.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match="no description"):
        OnnxModel(path)
    with pytest.raises(ModelFileError, match="names 'image'"):
        OnnxModel(path, OnnxSpec(name="x", kind="classifier"))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="cannot load"):
        OnnxModel(tmp_path / "junk.onnx", spec)


def test_noise_scores_far_worse_than_real_data(quality_state: Path) -> None:
    judge = Settings(state_dir=quality_state).judge()
    reference = judge.reference
    real = reference.baseline(200)
    noise = judge.extractor.run(np.random.default_rng(0).integers(0, 256, (200, 8, 8)).astype(np.uint8))
    scored = reference.metrics(RunningMoments(noise.shape[1]).update(noise), noise)
    assert scored.fid > 20 * real.fid
    assert scored.recall < 0.1 < 0.8 < real.recall
    assert scored.coverage < 0.1 < 0.3 < real.coverage
    assert scored.density < 0.2 < 0.7 < real.density


def _procedural(mode: str) -> list[GeneratedSample]:
    job = plan_jobs("procedural", classes=list(range(10)), per_class=3, seed=0, run_id="t", params={"mode": mode})[0]
    from models.catalog import GeneratorCatalog

    catalog = GeneratorCatalog(Path("unused"))
    catalog.put(ProceduralRenderer())
    return [r for r in generate(job, generators=catalog, config=GenerateConfig()) if isinstance(r, GeneratedSample)]


def test_the_gate_scores_a_scene_on_its_objects_and_rejects_a_pasted_training_image(quality_state: Path) -> None:
    """Each object of a scene is cropped and scored like a sample: a rendered scene takes its least realistic
    object's realism; a scene whose object is a training image pasted as it is goes out as memorized."""
    import hashlib

    from schemas.records import Annotation

    settings = Settings(state_dir=quality_state)
    judge, labeler = settings.judge(), settings.labeler()
    windows = GeneratorWindows("procedural", 64, 5, version="v1", scenes=True)
    scene = _procedural("scene")[0]
    [labeled] = label([scene], labeler=labeler)
    assert isinstance(labeled, LabeledSample)
    [rendered] = judge.assess([labeled], windows.window_id())
    assert rendered.score.window_id == "procedural@v1/scenes:tumbling:0"
    assert rendered.features.shape == (len(scene.objects), 64)  # one row per object
    assert rendered.classes.tolist() == [o.class_label for o in scene.objects]
    assert rendered.score.realism > 0 and not (rendered.rejection or "").startswith("memorized")
    size = judge.reference.image_size
    image = np.zeros((scene.height, scene.width), np.uint8)
    image[10:10 + size, 10:10 + size] = np.round(judge.reference.train_pixels[0].reshape(size, size) * 255)
    pasted = scene.model_copy(update={"image": image.tobytes(), "image_format": "raw", "channels": 1,
                                      "image_sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                                      "objects": [Annotation(class_label=0, bbox=[10, 10, size, size])]})
    [labeled] = label([pasted], labeler=labeler)
    assert isinstance(labeled, LabeledSample)
    [pasted_item] = judge.assess([labeled], windows.window_id())
    windows.add(pasted_item, 0)
    decided = judge.close(windows)[-1]
    assert isinstance(decided, SampleDecision) and decided.score.memorization_ratio < 1e-6
    assert decided.gate.decision == "rejected" and decided.gate.reason.startswith("memorized: an object")


def test_scene_windows_measure_objects_and_whole_scenes_and_catch_what_each_shows(quality_state: Path) -> None:
    """Scenes of held-out real objects make admissible windows, on their objects and as whole scenes. Scenes that
    repeat one object (a collapsed scene generator) make an inadmissible object window; scenes of one object each
    (a wrong layout, every object real) an inadmissible whole-scene window. With ``scene_gate=window`` every scene
    of either is rejected; by default (``objects``) scenes are decided on their objects alone."""
    from models.scenes import real_scenes
    from tests.test_detection import labeled as through_label

    images, labels = SPLITS.test_set()
    varied = real_scenes(images, labels, count=40, size=32, seed=3)
    same = real_scenes(np.repeat(images[:1], 4, axis=0), np.repeat(labels[:1], 4), count=40, size=32, seed=3)
    sparse = real_scenes(images, labels, count=40, size=32, objects=(1, 1), seed=3)
    cases = ((varied, "admissible", "admissible", "window"), (same, "inadmissible", "admissible", "window"),
             (same, "inadmissible", "admissible", "objects"), (sparse, "admissible", "inadmissible", "window"))
    for scenes, on_objects, on_scenes, gate in cases:
        config = QualityConfig(window_size=40, min_window=20, scene_gate=gate)  # type: ignore[arg-type]
        settings = Settings(state_dir=quality_state, quality=config)
        judge, labeler = settings.judge(), settings.labeler()
        windows = GeneratorWindows("planted", 64, 5, version="v1", scenes=True)
        for item in judge.assess(through_label(scenes, labeler, "t"), windows.window_id()):
            windows.add(item, 0)
        candidates = [p for p in windows.pending if p.rejection is None]
        crops = sum(len(p.classes) for p in candidates)
        out = judge.close(windows)
        sliding, whole = [w for w in out if isinstance(w, QualityWindow) and w.kind == "sliding"]
        assert sliding.window_id == "planted@v1/scenes:sliding:0" and sliding.measured_on == "objects"
        assert sliding.gate_state == on_objects and sliding.metrics.n == crops >= len(candidates), sliding
        # whole scenes, against real scenes of their size composed of the train split's objects
        assert whole.window_id == "planted@v1/scenes/whole:sliding:0" and whole.measured_on == "scenes"
        assert whole.gate_state == on_scenes and whole.metrics.n == len(candidates), whole
        assert whole.reference_split.endswith(":scenes=32")
        kept = _unpack_closed(_pack_closed(windows.history[-1]), 64)  # the sliding window survives a restart
        assert kept.sizes is not None and set(kept.sizes) == {32} and kept.wholes is not None
        assert np.array_equal(kept.wholes, windows.history[-1].wholes)  # type: ignore[arg-type]
        decisions = Counter(r.gate.decision for r in out if isinstance(r, SampleDecision))
        assert sum(decisions.values()) == 40
        if on_objects == on_scenes == "admissible" or gate == "objects":
            assert decisions["accepted"] >= 30, (gate, decisions)
        else:
            assert decisions == {"rejected": 40}


def test_label_keeps_renderer_labels_checks_scene_objects_and_returns_bad_images_as_errors(quality_state: Path) -> None:
    labeler = Settings(state_dir=quality_state).labeler()
    crops, scenes = _procedural("crop"), _procedural("scene")
    broken = crops[0].model_copy(update={"image": b"\x89PNG broken", "image_format": "png"})
    out = label([*crops, *scenes[:3], broken], labeler=labeler)
    assert isinstance(out[-1], ValueError) and "not a PNG" in str(out[-1])
    labeled = [r for r in out[:-1] if isinstance(r, LabeledSample)]
    assert len(labeled) == len(out) - 1
    for sample, result in zip([*crops, *scenes[:3]], labeled):
        assert result.label.label == sample.conditioning.class_label  # the renderer's label is exact
        assert result.label.labeler_version == labeler.model.version
        assert 0 <= result.label.margin <= result.label.confidence <= 1
    assert [r.label.objects for r in labeled[len(crops):]] == [s.objects for s in scenes[:3]]
    assert sum(r.label.agrees for r in labeled[: len(crops)]) >= len(crops) // 3  # the renderer's domain gap


def test_the_gate_rejects_or_reviews_known_bad_samples_and_accepts_good_ones(quality_state: Path) -> None:
    settings = Settings(state_dir=quality_state, quality=QualityConfig(window_size=400))
    judge, labeler = settings.judge(), settings.labeler()
    stream = mixed_stream(SPLITS, good=360, noise=20, wrong_class=20, memorized=10, run_id="t")
    labeled = label([s for s, _ in stream], labeler=labeler)
    windows = GeneratorWindows("probe", 64, 5)
    for item in judge.assess(labeled, windows.window_id()):  # type: ignore[arg-type]
        windows.add(item, 0)
    out = judge.close(windows)
    decisions = {r.sample.sample_id: r.gate for r in out if isinstance(r, SampleDecision)}
    outcome = Counter((kind, decisions[s.sample_id].decision) for s, kind in stream)
    assert outcome[("noise", "accepted")] == outcome[("memorized", "accepted")] == 0, outcome
    # a wrong class passes only where the labeler is itself confidently wrong on that real image, in that class
    assert outcome[("wrong_class", "accepted")] <= 1, outcome
    assert outcome[("good", "accepted")] >= 0.8 * 360, outcome
    reasons = {kind: Counter(decisions[s.sample_id].reason.split(":")[0] for s, k in stream if k == kind)
               for kind in ("noise", "wrong_class", "memorized")}
    assert set(reasons["memorized"]) == {"memorized"}
    assert reasons["wrong_class"]["labeler disagrees with the conditioning"] >= 15
    windows_out = [r for r in out if isinstance(r, QualityWindow)]
    assert {w.kind for w in windows_out} == {"tumbling", "sliding"}
    assert all(w.gate_state == "admissible" for w in windows_out if w.class_label is None), windows_out


def test_a_redelivered_sample_is_decided_but_not_counted_twice(quality_state: Path) -> None:
    settings = Settings(state_dir=quality_state, quality=QualityConfig(window_size=60, slide=3))
    judge, labeler = settings.judge(), settings.labeler()
    stream = [s for s, _ in mixed_stream(SPLITS, good=60, noise=0, wrong_class=0, run_id="t", seed=3)]
    labeled = label(stream, labeler=labeler)
    windows = GeneratorWindows("probe", 64, 3, version="v1")
    for item in judge.assess(labeled, windows.window_id()):  # type: ignore[arg-type]
        windows.add(item, 0)
    first = judge.close(windows)
    again = judge.assess(labeled[:30], windows.window_id())  # type: ignore[arg-type]
    for item in again:
        windows.add(item, 0)
    assert all(item.duplicate for item in again)
    second = judge.close(windows)
    decided = [r for r in second if isinstance(r, SampleDecision)]
    assert len(decided) == 30
    tumbling = next(r for r in second if isinstance(r, QualityWindow) and r.kind == "tumbling")
    sliding = next(r for r in second if isinstance(r, QualityWindow) and r.kind == "sliding")
    first_sliding = next(r for r in first if isinstance(r, QualityWindow) and r.kind == "sliding")
    assert tumbling.metrics.n == 0 and sliding.metrics.n == first_sliding.metrics.n
    assert sliding.window_id == "probe@v1:sliding:1"
