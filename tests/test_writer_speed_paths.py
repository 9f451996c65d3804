"""The writers' fast paths print exactly what the plain ones print: numbers printed by numpy in one pass
(``codecs/number_text``), mask counts and outline points spliced into ``json.dumps`` text, YOLO's link targets
resolved with cached folders. Each is compared, byte for byte, with the plain Python it replaced, on real
yolo11n-seg predictions and on values chosen to break it (rounding ties, negative zero, labels and paths that
spell the splice's marker)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from avala_infer import Engine
from avala_infer.annotations import Detections, Prediction, SemanticMask
from avala_infer.exporters.codecs.number_text import (
    fixed_texts,
    int_texts,
    join_fixed,
    join_ints,
    join_rounded,
    rounded_texts,
)
from tests.conftest import ASSETS, need

# labels and paths that hold the text each splice looks for, quotes and all
TRICKY = ['"counts": []', '"points": []', '"segmentation": []', 'a\\", "points": [], "b', "ünï\\"]


def _values() -> np.ndarray:
    rng = np.random.default_rng(7)
    edges = [0.0, -0.0, 0.5, 1.5, 2.5, 0.125, 2.675, 1e-9, -1e-9, -0.00005, 0.00005, 99.99995, 1.0, 1e13, 0.9999995]
    ties = [(rng.integers(0, 10**k, 3000) + 0.5) / 10**k for k in (2, 4, 6)]  # on and next to rounding ties
    pixels = rng.integers(0, 1280, (3000, 2)).astype(np.float32)  # outline points: x * 100 / w lands on ties
    percent = (pixels.astype(np.float64) * 100 / np.array([1280.0, 720.0])).ravel()
    return np.concatenate([edges, *ties, rng.random(3000) * 100, rng.normal(0, 1e3, 3000), percent])


@pytest.mark.parametrize("digits", [1, 2, 4, 6])
def test_numbers_print_as_python_prints_them(digits):
    values = _values()
    assert join_fixed(values, digits).split(" ") == ["%.*f" % (digits, v) for v in values.tolist()]  # noqa: UP031
    assert join_rounded(values, digits).split(", ") == [json.dumps(round(v, digits)) for v in values.tolist()]
    ints = np.concatenate([[0, 9, 10, -1, -10, 2**40], np.random.default_rng(digits).integers(-(10**7), 10**7, 999)])
    assert join_ints(ints) == json.dumps(ints.tolist())[1:-1]


def test_numbers_beyond_numpy_reach_print_as_python_prints_them():
    values = np.array([float("nan"), float("inf"), -1e17, 3.25])
    assert join_fixed(values, 2) == " ".join("%.2f" % v for v in values.tolist())  # noqa: UP031
    assert join_rounded(values, 2) == ", ".join(repr(round(v, 2)) for v in values.tolist())


def test_groups_print_apart_with_their_own_separators():
    rng = np.random.default_rng(3)
    groups = [rng.random((int(n), 2)) * 50 for n in rng.integers(0, 5, 40)]  # empty groups among them
    assert rounded_texts(groups, 4, (", ", "], [")) == [
        json.dumps([[round(x, 4), round(y, 4)] for x, y in g.tolist()])[2:-2] for g in groups
    ]
    want = [" ".join("%.6f" % v for v in g.ravel().tolist()) for g in groups]  # noqa: UP031
    assert fixed_texts(groups, 6, (" ", " ")) == want
    ints = [rng.integers(0, 5000, int(n)) for n in rng.integers(0, 5, 40)]
    assert int_texts(ints) == [json.dumps(g.tolist())[1:-1] for g in ints]
    with pytest.raises(ValueError):
        fixed_texts(groups, 2, (" ", "\n"))


@pytest.fixture(scope="module")
def seg_predictions(sample_images, val_images) -> list[Prediction]:
    """Real yolo11n-seg predictions, and copies whose labels and sources spell the splices' markers."""
    images = [*sample_images, *sorted(val_images.glob("*.jpg"))[:6]]
    with Engine(need(ASSETS / "models" / "yolo11n-seg.onnx"), device="cpu") as engine:
        real = [p for p in engine.predict(images) if p.ok]
    assert sum(len(p.detections) for p in real) >= 20
    tricky = []
    for i, p in enumerate(real[:4]):
        d = p.detections
        names = np.asarray([TRICKY[(i + j) % len(TRICKY)] for j in range(len(d))], dtype=object)
        tricky.append(
            dataclasses.replace(
                p, key=TRICKY[i], source=f"/data/{TRICKY[i]}.jpg", result=dataclasses.replace(d, class_name=names)
            )
        )
    return real + tricky


def test_jsonl_records_print_as_json_dumps(seg_predictions):
    from avala_infer.exporters.records import prediction_to_json, prediction_to_record

    for p in seg_predictions:
        assert prediction_to_json(p) == json.dumps(prediction_to_record(p), ensure_ascii=False)
    masks = np.zeros((3, 6, 5), bool)
    masks[0, 1:4, 2:] = True
    masks[2, 5, 4] = True
    empty_image = Detections(np.zeros((3, 4), np.float32), [0.5] * 3, [0, 1, 2], ["a", "b", "c"], masks)
    semantic = SemanticMask(np.array([[0, 1], [1, -1]]), np.full((2, 2), 0.5), ('"counts": []', "b"))
    for result in (empty_image, semantic):
        p = Prediction(0, "/x.jpg", "x.jpg", width=5, height=6, result=result)
        assert prediction_to_json(p) == json.dumps(prediction_to_record(p), ensure_ascii=False)


def test_labelstudio_tasks_print_as_json_dumps(seg_predictions, tmp_path):
    from avala_infer.exporters.labelstudio import LabelStudioWriter, prediction_task

    writer = LabelStudioWriter(tmp_path, ("a",), model_version='"points": []')
    for p in seg_predictions:
        writer.write(p)
    writer.close()
    tasks = json.loads((tmp_path / "labelstudio.json").read_text(encoding="utf-8"))
    want = [prediction_task(p, '"points": []') for p in seg_predictions]
    assert tasks == want
    text = (tmp_path / "labelstudio.json").read_text(encoding="utf-8")
    assert text == "[\n" + ",\n".join(json.dumps(t, ensure_ascii=False) for t in want) + "\n]\n"
    assert sum(len(r["value"]["points"]) for t in tasks for r in t["predictions"][0]["result"]) > 1000


@pytest.mark.parametrize("mask_format", ["rle", "polygon"])
def test_coco_annotations_print_as_json_dumps(seg_predictions, tmp_path, mask_format):
    from avala_infer.exporters.coco import CocoWriter, polygon_or_rle
    from avala_infer.exporters.codecs import rle

    writer = CocoWriter(tmp_path, ("a",), mask_format)
    for p in seg_predictions:
        writer.write(p)
    writer.close()
    text = (tmp_path / "annotations.coco.json").read_text()
    annotations = text[text.index('"annotations": [\n') + len('"annotations": [\n') : text.rindex("\n]}")]
    want, next_id = [], 1
    for p in seg_predictions:  # the records as the writer built them before its fast paths
        d = p.detections
        for i, ((x1, y1, x2, y2), score, cid) in enumerate(zip(d.xyxy.tolist(), d.confidence.tolist(), d.class_id)):
            w, h = x2 - x1, y2 - y1
            runs = rle.encode(d.mask[i])
            compressed = rle.compress(runs)
            record = {"id": next_id, "image_id": p.index + 1, "category_id": int(cid) + 1,
                      "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)], "area": round(w * h, 3),
                      "iscrowd": 0, "score": round(score, 5)}  # fmt: skip
            record["segmentation"] = polygon_or_rle(d.mask[i], compressed) if mask_format == "polygon" else compressed
            record["area"] = sum(runs["counts"][1::2])
            want.append(json.dumps(record))
            next_id += 1
    assert annotations == ",\n".join(want)
    polygons = [a for a in json.loads(text)["annotations"] if isinstance(a["segmentation"], list)]
    assert (len(polygons) > 10) == (mask_format == "polygon")


def test_yolo_seg_lines_print_as_percent_formatting(seg_predictions, tmp_path):
    from avala_infer.exporters.codecs.polygons import largest_polygon
    from avala_infer.exporters.yolo import YoloWriter

    writer = YoloWriter(tmp_path, ("a",), save_conf=True)
    real = [p for p in seg_predictions if "/data/" not in p.source]
    for p in real:
        writer.write(dataclasses.replace(p, source="<array>"))
    writer.close()
    for p in real:
        lines = []
        for mask, cid, score in zip(p.detections.mask, p.detections.class_id.tolist(), p.detections.confidence):
            polygon = largest_polygon(mask)
            if polygon is not None:
                values = (polygon / np.array([p.width, p.height], np.float32)).ravel().tolist()
                line = (str(cid) + " %.6f" * len(values)) % tuple(values) + " %.5f" % score  # noqa: UP031
                lines.append(line + "\n")
        assert (tmp_path / "yolo" / "labels" / Path(p.key).with_suffix(".txt")).read_text() == "".join(lines)


def test_yolo_image_links_point_where_realpath_resolves(tmp_path, monkeypatch):
    from avala_infer.exporters.yolo import YoloWriter

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "a.jpg").write_bytes(b"a")
    (real / "sub" / "b.jpg").write_bytes(b"b")
    links = tmp_path / "links"
    links.mkdir()
    (links / "absolute.jpg").symlink_to(real / "a.jpg")
    (links / "relative.jpg").symlink_to(Path("..") / "real" / "sub" / "b.jpg")
    (links / "chain.jpg").symlink_to("relative.jpg")
    (links / "dotdot.jpg").symlink_to("../real/sub/../a.jpg")
    (links / "dangling.jpg").symlink_to("missing/x.jpg")
    (links / "loop1.jpg").symlink_to("loop2.jpg")
    (links / "loop2.jpg").symlink_to("loop1.jpg")
    (tmp_path / "folder_link").symlink_to(links)
    monkeypatch.chdir(tmp_path)
    names = ["absolute.jpg", "relative.jpg", "chain.jpg", "dotdot.jpg", "dangling.jpg", "loop1.jpg", "none.jpg"]
    sources = [str(links / n) for n in names] + [f"folder_link/{n}" for n in names] + ["real/a.jpg", "real/../x.jpg"]
    writer = YoloWriter(tmp_path / "out", ("a",))
    for i, source in enumerate(sources):
        writer.write(Prediction(i, source, f"{i}.jpg", width=4, height=4, result=Detections.empty()))
    for i, source in enumerate(sources):
        assert os.readlink(tmp_path / "out" / "yolo" / "images" / f"{i}.jpg") == os.path.realpath(source), source
