"""Real test scenes for detection (objects of held-out real images with their true boxes and masks) and COCO
mAP by pycocotools: exact detections score 1, shifted boxes less, wrong classes nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from models.reference import load_digits_reference, make_splits
from models.scenes import Detection, coco_dataset, coco_map, real_scenes


def _test_scenes():  # type: ignore[no-untyped-def]
    reference = load_digits_reference()
    splits = make_splits(reference)
    images, labels = splits.test_set()
    return images, labels, real_scenes(images, labels, count=30, size=32, seed=1)


def test_scenes_hold_real_objects_with_their_true_boxes_and_masks() -> None:
    images, labels, scenes = _test_scenes()
    assert scenes.images.shape == (30, 32, 32) and scenes.images.dtype == np.uint8
    assert all(2 <= len(s) <= 4 for s in scenes.objects)
    for scene, objects, sources in zip(scenes.images, scenes.objects, scenes.sources):
        union = np.zeros((32, 32), dtype=int)
        for obj, index in zip(objects, sources):
            union += obj.mask
            ys, xs = np.nonzero(obj.mask)
            assert obj.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert obj.class_label == labels[index]
            ink = images[index] > 0.25  # the object is its real image's ink, pixel for pixel
            top, left = np.argwhere(obj.mask).min(axis=0) - np.argwhere(ink).min(axis=0)
            assert (obj.mask[top:top + 8, left:left + 8] == ink).all() and obj.mask.sum() == ink.sum()
            assert (scene[obj.mask] == np.round(images[index] * 255).astype(np.uint8)[ink]).all()
        assert union.max() <= 1  # no two objects share a pixel


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' decode, numpy 2
def test_coco_map_of_exact_shifted_and_wrong_detections() -> None:
    _, _, scenes = _test_scenes()
    truth = coco_dataset(scenes.objects, (32, 32), num_classes=10)
    for ann in truth["annotations"][:5]:  # the RLE masks decode to the objects' masks
        scene = ann["image_id"] - 1
        obj = next(o for o in scenes.objects[scene] if list(o.bbox) == ann["bbox"])
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        assert (coco_mask.decode(rle).astype(bool) == obj.mask).all()
    exact = [Detection(i, o.class_label, o.bbox, 0.9, o.mask) for i, s in enumerate(scenes.objects) for o in s]
    assert coco_map(truth, exact) == {"map50": 1.0, "map50_95": 1.0}
    assert coco_map(truth, exact, kind="segm") == {"map50": 1.0, "map50_95": 1.0}
    shifted = [dataclasses.replace(d, bbox=(d.bbox[0] + d.bbox[2] / 3, *d.bbox[1:])) for d in exact]
    moved = coco_map(truth, shifted)
    assert moved["map50"] > moved["map50_95"] and moved["map50_95"] < 0.6
    wrong = [dataclasses.replace(d, class_label=(d.class_label + 1) % 10) for d in exact]
    assert coco_map(truth, wrong) == {"map50": 0.0, "map50_95": 0.0}
