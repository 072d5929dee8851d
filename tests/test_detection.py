"""The detection task: a small detector trained on composed scenes, exported to INT8 ONNX and used as the label
processor's labeler: it finds the objects of a planted real scene, and a generator's wrong box is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import pytest

from models.catalog import GeneratorCatalog
from models.detector import DetectorConfig, composer, decode, detector_spec, iou, predict, train_detector
from models.generator import Annotated, GeneratorOutput
from models.labeler import deploy
from models.reference import load_digits_reference, make_splits
from models.scenes import Scenes, coco_dataset, coco_map, real_scenes
from processors.generate import GenerateConfig, generate, plan_jobs
from processors.label import Labeler, label
from schemas.records import GeneratedSample, LabeledSample

CONFIG = DetectorConfig(steps=500)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    splits = make_splits(load_digits_reference(), seed=0)
    train = splits.labeled("train")
    model = train_detector([composer(train.images, train.labels, CONFIG)], CONFIG)
    test = real_scenes(*splits.test_set(), count=60, size=CONFIG.scene_size, seed=7)
    calibration = composer(train.images, train.labels, CONFIG)(128, 1).images / 255.0
    deployed = deploy(model, tmp_path_factory.mktemp("detector"), detector_spec(CONFIG), calibration=calibration,
                      config={})
    return {"model": model, "test": test, "fp32": deployed.fp32, "int8": deployed.int8}


class Planted:
    """A 'generator' that hands out given scenes with their objects (the test's stand-in for a composer)."""

    name, version, image_size, channels, num_classes, draws_scenes = "planted", "v1", 32, 1, 10, True
    label_budgets: list[object] = []

    def __init__(self, scenes: Scenes) -> None:
        self.scenes = scenes

    def __call__(self, seeds: Sequence[int], classes: Sequence[int], **params: str) -> GeneratorOutput:
        return GeneratorOutput(self.scenes.images[list(seeds)], [self.scenes.objects[s] for s in seeds])


def labeled(scenes: Scenes, labeler: Labeler, run_id: str) -> list[LabeledSample]:
    """The scenes through the generate step (as a generator's samples) and the label step."""
    catalog = GeneratorCatalog(Path("/nonexistent"))
    catalog.put(Planted(scenes))  # type: ignore[arg-type]
    job = plan_jobs("planted", classes=[0], per_class=len(scenes.images), seed=0, run_id=run_id, job_size=1000,
                    params={"mode": "scene"})[0]
    samples = [r for r in generate(job, generators=catalog, config=GenerateConfig()) if isinstance(r, GeneratedSample)]
    out = label(samples, labeler=labeler)
    assert all(isinstance(r, LabeledSample) for r in out)
    return out  # type: ignore[return-value]


def test_the_detector_finds_real_objects_and_int8_keeps_its_map(trained: dict[str, Any]) -> None:
    test: Scenes = trained["test"]
    truth = coco_dataset(test.objects, (32, 32), 10)
    torch_map = coco_map(truth, decode(predict(trained["model"], test.images), stride=2, num_classes=10))
    int8 = Labeler.load(trained["int8"])
    onnx_map = coco_map(truth, decode(int8.model.run(test.images), stride=2, num_classes=10))
    assert torch_map["map50"] > 0.8, torch_map
    assert onnx_map["map50"] > torch_map["map50"] - 0.05, (onnx_map, torch_map)
    assert trained["int8"].stat().st_size < 2 * 1024 * 1024  # an edge detector: under 2 MB


def test_a_detector_labeler_agrees_with_a_planted_scene_and_catches_a_wrong_box(trained: dict[str, Any],
                                                                               run_id: str) -> None:
    test: Scenes = trained["test"]
    labeler = Labeler.load(trained["int8"])
    assert labeler.stride == 2
    right = labeled(test, labeler, run_id)
    agreeing = [r for r in right if r.label.agrees]
    assert len(agreeing) >= 0.7 * len(right)  # every object found where it is, nothing else confident
    for r, truth in zip(right, test.objects):
        assert [o.bbox for o in r.label.objects] == [list(t.bbox) for t in truth]  # the exact boxes are kept
        assert all(o.mask_png for o in r.label.objects)

    def moved(objects: list[Annotated]) -> list[Annotated]:  # the first box slid off its object
        first = objects[0]
        x, y, w, h = first.bbox
        shifted = ((x + 16) % 24, (y + 16) % 24, w, h)
        assert iou(shifted, first.bbox) < 0.5
        return [dataclasses.replace(first, bbox=shifted), *objects[1:]]

    def relabelled(objects: list[Annotated]) -> list[Annotated]:  # the first object's class is wrong
        return [dataclasses.replace(objects[0], class_label=(objects[0].class_label + 1) % 10), *objects[1:]]

    for corrupt in (moved, relabelled):
        wrong = Scenes(test.images, [corrupt(list(o)) for o in test.objects], test.sources)
        caught = [not r.label.agrees for r, ok in zip(labeled(wrong, labeler, run_id), right) if ok.label.agrees]
        assert all(caught), f"{corrupt.__name__}: {caught.count(False)} wrong scenes passed as agreeing"


def test_a_scene_without_declared_objects_takes_the_detectors(trained: dict[str, Any], run_id: str) -> None:
    test: Scenes = trained["test"]
    labeler = Labeler.load(trained["int8"])
    out = labeled(Scenes(test.images, [[] for _ in test.objects], test.sources), labeler, run_id)
    found = matched = 0
    for r, truth in zip(out, test.objects):
        found += len(r.label.objects)
        matched += sum(any(o.class_label == t.class_label and iou(tuple(o.bbox), t.bbox) >= 0.5  # type: ignore[arg-type]
                           for o in r.label.objects) for t in truth)
    objects = sum(len(t) for t in test.objects)
    assert matched >= 0.8 * objects and found <= 1.2 * objects

