"""Every writer's output read back by the tool or format that consumes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from avala_infer import label


@pytest.fixture(scope="module")
def labeled(engine_pt, sample_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("labeled")
    report = label(sample_images, engine_pt, out=out, formats=["jsonl", "coco", "yolo"])
    predictions = {p.key: p for p in engine_pt.predict(sample_images)}
    return out, report, predictions


def test_jsonl_one_object_per_item_with_boxes_in_pixels(labeled):
    out, report, predictions = labeled
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == list(predictions) == ["bus.jpg", "zidane.jpg"]
    for record in records:
        d = predictions[record["key"]].detections
        assert (record["width"], record["height"]) in [(810, 1080), (1280, 720)]
        assert [a["label"] for a in record["annotations"]] == list(d.class_name)
        assert np.allclose([a["bbox"] for a in record["annotations"]], d.xyxy, atol=0.01)
        assert np.allclose([a["score"] for a in record["annotations"]], d.confidence, atol=1e-5)
    bus = records[0]["annotations"]
    assert bus[0]["label"] == "bus" and bus[0]["score"] == pytest.approx(0.94, abs=0.01)  # the assets README


def test_coco_loads_in_pycocotools(labeled):
    from pycocotools.coco import COCO

    out, report, predictions = labeled
    coco = COCO(str(out / "annotations.coco.json"))
    assert len(coco.getCatIds()) == 80 and coco.loadCats(1)[0]["name"] == "person"
    image = coco.loadImgs(coco.getImgIds())[0]
    assert image["file_name"] == "bus.jpg" and (image["width"], image["height"]) == (810, 1080)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
    d = predictions["bus.jpg"].detections
    assert len(anns) == len(d)
    x, y, w, h = anns[0]["bbox"]
    assert np.allclose([x, y, x + w, y + h], d.xyxy[0], atol=0.01)
    assert coco.loadCats(anns[0]["category_id"])[0]["name"] == d.class_name[0]
    results = coco.loadRes(coco.dataset["annotations"])  # also valid as a results file
    assert len(results.getAnnIds()) == sum(len(p.detections) for p in predictions.values())
    assert not list(out.glob("*.part")) and not list(out.glob("*.tmp"))


def test_yolo_folder_reads_in_ultralytics(labeled):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    out, report, predictions = labeled
    data = check_det_dataset(str(out / "yolo" / "data.yaml"))
    assert data["nc"] == 80 and data["names"][5] == "bus"
    dataset = YOLODataset(img_path=data["val"], data=data, task="detect", imgsz=640, augment=False)
    by_name = {Path(lab["im_file"]).name: lab for lab in dataset.labels}
    assert set(by_name) == {"bus.jpg", "zidane.jpg"}
    for key, prediction in predictions.items():
        d, w, h = prediction.detections, prediction.width, prediction.height
        lab = by_name[key]
        assert lab["cls"].flatten().tolist() == d.class_id.tolist()
        xywh = np.stack(
            [
                (d.xyxy[:, 0] + d.xyxy[:, 2]) / 2 / w,
                (d.xyxy[:, 1] + d.xyxy[:, 3]) / 2 / h,
                (d.xyxy[:, 2] - d.xyxy[:, 0]) / w,
                (d.xyxy[:, 3] - d.xyxy[:, 1]) / h,
            ],
            1,
        )
        assert np.allclose(lab["bboxes"], xywh, atol=1e-5)
    assert (out / "yolo" / "classes.txt").read_text().splitlines()[0] == "person"
    assert os.path.islink(out / "yolo" / "images" / "bus.jpg")


def test_formats_stream_and_keep_nested_keys(engine_pt, sample_images, tmp_path):
    nested = tmp_path / "in" / "a" / "b"
    nested.mkdir(parents=True)
    os.symlink(sample_images[0], nested / "x.jpg")
    (tmp_path / "in" / "y.jpg").symlink_to(sample_images[1])
    report = label([tmp_path / "in"], engine_pt, out=tmp_path / "out", formats=["yolo", "jsonl"], labels=["person"])
    assert report.succeeded == 2
    assert (tmp_path / "out" / "yolo" / "labels" / "a" / "b" / "x.txt").exists()
    assert (tmp_path / "out" / "yolo" / "classes.txt").read_text() == "person\n"
    lines = (tmp_path / "out" / "yolo" / "labels" / "y.txt").read_text().splitlines()
    assert lines and all(line.split()[0] == "0" for line in lines)


def _label_studio_tasks(out):
    tasks = json.loads((out / "labelstudio.json").read_text())
    assert isinstance(tasks, list)
    for task in tasks:  # the documented shape of a pre-annotated import task
        assert set(task) == {"data", "predictions"} and "image" in task["data"]
        (prediction,) = task["predictions"]
        assert {"model_version", "score", "result"} <= set(prediction)
        for result in prediction["result"]:
            assert result["from_name"] == "label" and result["to_name"] == "image"
            assert result["type"] in ("rectanglelabels", "polygonlabels")
            assert result["type"] in result["value"]
    return tasks


def test_label_studio_rectangles_in_percent(engine_pt, sample_images, tmp_path):
    predictions = {str(p.source): p for p in engine_pt.predict(sample_images)}
    label(sample_images, engine_pt, out=tmp_path, formats=["labelstudio"])
    tasks = _label_studio_tasks(tmp_path)
    assert [t["data"]["image"] for t in tasks] == [str(p) for p in sample_images]
    for task in tasks:
        p = predictions[task["data"]["image"]]
        results = task["predictions"][0]["result"]
        assert len(results) == len(p.detections)
        for r, box, name in zip(results, p.detections.xyxy, p.detections.class_name):
            v, w, h = r["value"], r["original_width"], r["original_height"]
            assert (w, h) == (p.width, p.height) and v["rectanglelabels"] == [name]
            back = [
                v["x"] * w / 100,
                v["y"] * h / 100,
                (v["x"] + v["width"]) * w / 100,
                (v["y"] + v["height"]) * h / 100,
            ]
            assert np.allclose(back, box, atol=0.01)


def test_label_studio_polygons_for_masks(sample_images, tmp_path):
    import cv2

    from avala_infer import Engine
    from tests.conftest import ASSETS, need

    engine = Engine(need(ASSETS / "models" / "yolo11n-seg.onnx"), device="cpu")
    predictions = {str(p.source): p for p in engine.predict(sample_images)}
    label(sample_images, engine, out=tmp_path, formats=["labelstudio"])
    ious = []
    for task in _label_studio_tasks(tmp_path):
        p = predictions[task["data"]["image"]]
        drawn = np.zeros(p.detections.mask.shape, np.uint8)
        for r in task["predictions"][0]["result"]:
            assert r["type"] == "polygonlabels"
            instance = int(r["id"].split("-")[1])
            assert r["value"]["polygonlabels"] == [p.detections.class_name[instance]]
            points = np.asarray(r["value"]["points"]) * [p.width / 100, p.height / 100]
            cv2.fillPoly(drawn[instance], [np.round(points).astype(np.int32)], 1)
        outlined = {int(r["id"].split("-")[1]) for r in task["predictions"][0]["result"]}
        assert outlined == set(range(len(p.detections)))  # every instance, none lost
        for instance, mask in enumerate(p.detections.mask):
            ious.append(np.logical_and(drawn[instance], mask).sum() / np.logical_or(drawn[instance], mask).sum())
    # measured per instance (bus.jpg and zidane.jpg, 8 instances): at worst 0.895 (holes are filled, outlines run
    # through border pixels' centres); the bound is that minus a small margin
    print(f"Label Studio polygons: {len(ious)} instances, IoU with their masks min {min(ious):.4f}")
    assert len(ious) == sum(len(p.detections) for p in predictions.values()) >= 6
    assert min(ious) >= 0.88, sorted(ious)[:3]
