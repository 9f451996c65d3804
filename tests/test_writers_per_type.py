"""Writers for semantic masks, classes and entities, read back by the tools and format specs that consume them.

Results are built here (the writers' input), so each writer is checked alone; the model tests run the same
writers end to end on real models.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from avala_infer.annotations import Classifications, Entities, Prediction, SemanticMask
from avala_infer.errors import ConfigError
from avala_infer.exporters import check_formats, make_writer
from avala_infer.exporters.codecs import rle
from avala_infer.exporters.preview import PreviewWriter
from avala_infer.exporters.summary import SummaryCollector
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need

LABELS = ("sky", "cat", "grass")


def _write(fmt: str, out: Path, predictions: list[Prediction], model_type: ModelType, labels=LABELS) -> list[Path]:
    writer = make_writer(fmt, out, labels, "rle", model_type)
    for prediction in predictions:
        writer.write(prediction)
    return writer.close()


@pytest.fixture(scope="module")
def semantic_prediction() -> Prediction:
    image = need(ASSETS / "images" / "skimage" / "chelsea.png")
    h, w = cv2.imread(str(image)).shape[:2]
    class_map = np.full((h, w), -1, np.int32)
    class_map[: h // 3] = 0  # a band of sky
    class_map[h // 3 :, w // 4 : 3 * w // 4] = 1  # a cat block...
    class_map[h // 2 : h // 2 + 10, w // 2 : w // 2 + 10] = -1  # ...with a hole in it
    class_map[h - 5 :, :7] = 2  # a sliver of grass
    rng = np.random.default_rng(0)
    score_map = rng.uniform(0.3, 1.0, (h, w)).astype(np.float32)
    return Prediction(0, str(image), "chelsea.png", w, h, SemanticMask(class_map, score_map, LABELS))


def test_semantic_coco_loads_in_pycocotools_mask_for_mask(semantic_prediction, tmp_path):
    from pycocotools.coco import COCO

    (path,) = _write("coco", tmp_path, [semantic_prediction], ModelType.SEMANTIC_SEGMENTATION)
    coco = COCO(str(path))
    m = semantic_prediction.result
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["category_id"] for a in anns] == [1, 2, 3]
    assert [coco.cats[a["category_id"]]["name"] for a in anns] == list(LABELS)
    for ann, class_id in zip(anns, range(3)):
        truth = m.class_map == class_id
        assert np.array_equal(coco.annToMask(ann).astype(bool), truth)
        assert ann["area"] == int(truth.sum())
        assert ann["score"] == pytest.approx(float(m.score_map[truth].mean()), abs=1e-5)
        ys, xs = np.nonzero(truth)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    # COCO's results loader takes the annotations as they are (score, RLE segmentation)
    assert len(coco.loadRes(coco.dataset["annotations"]).anns) == 3


def test_semantic_labelstudio_brush_decodes_with_label_studio(semantic_prediction, tmp_path):
    from label_studio_converter.brush import decode_rle

    paths = _write("labelstudio", tmp_path, [semantic_prediction], ModelType.SEMANTIC_SEGMENTATION)
    (task,) = json.loads(paths[0].read_text())
    m = semantic_prediction.result
    h, w = m.shape
    results = task["predictions"][0]["result"]
    assert task["data"]["image"] == semantic_prediction.source
    assert [r["value"]["brushlabels"] for r in results] == [["sky"], ["cat"], ["grass"]]
    for result, class_id in zip(results, range(3)):
        assert result["type"] == "brushlabels" and result["value"]["format"] == "rle"
        assert (result["original_width"], result["original_height"]) == (w, h)
        rgba = decode_rle(result["value"]["rle"]).reshape(h, w, 4)
        assert np.array_equal(rgba[..., 3] > 0, m.class_map == class_id)
    config = ET.fromstring(paths[1].read_text())
    brush = config.find("BrushLabels")
    assert brush.get("name") == "tag" and brush.get("toName") == "image"
    assert [label.get("value") for label in brush.findall("Label")] == list(LABELS)


def test_semantic_jsonl_and_mask_pngs(semantic_prediction, tmp_path):
    (jsonl,) = _write("jsonl", tmp_path, [semantic_prediction], ModelType.SEMANTIC_SEGMENTATION)
    (masks,) = _write("masks", tmp_path, [semantic_prediction], ModelType.SEMANTIC_SEGMENTATION)
    m = semantic_prediction.result
    record = json.loads(jsonl.read_text())
    assert [a["label"] for a in record["annotations"]] == list(LABELS)
    for annotation in record["annotations"]:
        assert np.array_equal(rle.decode(annotation["segmentation"]), m.class_map == annotation["class_id"])
    png = cv2.imread(str(masks / "chelsea.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and np.array_equal(png.astype(np.int32) - 1, m.class_map)
    assert (masks / "classes.txt").read_text().splitlines() == ["0 unlabeled", "1 sky", "2 cat", "3 grass"]


def _classification(index: int, text: str | None, scores, multi_label=False) -> Prediction:
    result = Classifications.from_scores(np.asarray(scores), LABELS, multi_label)
    result = result[result.confidence >= 0.25]
    return Prediction(index, f"<text {index}>", f"text_{index}", result=result, text=text)


def test_classification_labelstudio_choices_and_config(tmp_path):
    predictions = [
        _classification(0, "a sunny day", [0.7, 0.2, 0.1]),
        _classification(1, "cats and grass", [0.1, 0.9, 0.8], multi_label=True),
        _classification(2, "nothing sure", [0.2, 0.2, 0.2]),
    ]
    paths = _write("labelstudio", tmp_path, predictions, ModelType.TEXT_CLASSIFICATION)
    tasks = json.loads(paths[0].read_text())
    assert [t["data"]["text"] for t in tasks] == ["a sunny day", "cats and grass", "nothing sure"]
    first, second, third = (t["predictions"][0]["result"] for t in tasks)
    assert first == [
        {
            "id": "0-0",
            "from_name": "choice",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": ["sky"]},
            "score": pytest.approx(0.7, abs=1e-5),
        }
    ]
    assert second[0]["value"]["choices"] == ["cat", "grass"]  # multi-label keeps every class above threshold
    assert third == []
    config = ET.fromstring(paths[1].read_text())
    choices = config.find("Choices")
    assert (choices.get("toName"), choices.get("choice")) == ("text", "multiple")
    assert config.find("Text").get("value") == "$text"


def test_formats_that_cannot_hold_a_type_are_refused():
    with pytest.raises(ConfigError, match="cannot hold text_classification.*jsonl, labelstudio"):
        check_formats(["jsonl", "yolo"], ModelType.TEXT_CLASSIFICATION)
    with pytest.raises(ConfigError, match="unknown output format"):
        check_formats(["parquet"], ModelType.OBJECT_DETECTION)
    check_formats(["coco", "masks", "labelstudio"], ModelType.SEMANTIC_SEGMENTATION)
    check_formats(["conll"], ModelType.NAMED_ENTITY_RECOGNITION)


def _conll_sentences(limit: int) -> list[tuple[list[str], list[str]]]:
    path = need(ASSETS / "data" / "conll2003" / "test.txt")
    sentences, tokens, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
                if len(sentences) == limit:
                    break
            continue
        parts = line.split()
        tokens.append(parts[0])
        tags.append(parts[-1])
    return sentences


def _gold_entities(tokens: list[str], tags: list[str]) -> tuple[str, Entities]:
    """The sentence as text (tokens joined by spaces) and its gold entities as character spans."""
    text = " ".join(tokens)
    offsets, at = [], 0
    for token in tokens:
        offsets.append((at, at + len(token)))
        at += len(token) + 1
    records = []
    for (start, end), tag in zip(offsets, tags):
        if tag.startswith("B-") or (tag.startswith("I-") and (not records or records[-1]["label"] != tag[2:])):
            records.append({"start": start, "end": end, "score": 1.0, "class_id": 0, "label": tag[2:], "word": ""})
        elif tag.startswith("I-"):
            records[-1]["end"] = end
    return text, Entities.from_records(records)


def test_conll_round_trip_reproduces_gold_iob_tags(tmp_path):
    sentences = _conll_sentences(300)
    predictions = []
    for i, (tokens, tags) in enumerate(sentences):
        text, entities = _gold_entities(tokens, tags)
        predictions.append(Prediction(i, f"<text {i}>", f"text_{i}", result=entities, text=text))
    (path,) = _write("conll", tmp_path, predictions, ModelType.NAMED_ENTITY_RECOGNITION, ("PER", "ORG", "LOC", "MISC"))
    blocks = path.read_text(encoding="utf-8").strip("\n").split("\n\n")
    assert len(blocks) == len(sentences)
    entity_count = 0
    for block, (tokens, tags) in zip(blocks, sentences):
        rows = [line.split(" ") for line in block.splitlines()]
        assert [r[0] for r in rows] == tokens
        assert [r[1] for r in rows] == tags  # CoNLL-2003 test is IOB2: our tags equal the gold column
        entity_count += sum(t.startswith("B-") for t in tags)
    assert entity_count > 400


def test_ner_labelstudio_spans_and_preview_highlights(tmp_path):
    text = "Angela Merkel visited Paris & <Lyon>."
    records = [
        {"start": 0, "end": 13, "score": 0.99, "class_id": 0, "label": "PER", "word": "angela merkel"},
        {"start": 22, "end": 27, "score": 0.95, "class_id": 2, "label": "LOC", "word": "paris"},
        {"start": 31, "end": 35, "score": 0.6, "class_id": 2, "label": "LOC", "word": "lyon"},
    ]
    prediction = Prediction(0, "<text 0>", "text_000000", result=Entities.from_records(records), text=text)
    paths = _write("labelstudio", tmp_path, [prediction], ModelType.NAMED_ENTITY_RECOGNITION, ("PER", "ORG", "LOC"))
    (task,) = json.loads(paths[0].read_text())
    values = [r["value"] for r in task["predictions"][0]["result"]]
    assert [(v["start"], v["end"], v["text"], v["labels"]) for v in values] == [
        (0, 13, "Angela Merkel", ["PER"]),
        (22, 27, "Paris", ["LOC"]),
        (31, 35, "Lyon", ["LOC"]),
    ]
    assert all(text[v["start"] : v["end"]] == v["text"] for v in values)
    labels = ET.fromstring(paths[1].read_text()).find("Labels")
    assert (labels.get("name"), labels.get("toName")) == ("label", "text")

    summary = SummaryCollector(tmp_path, ("PER", "ORG", "LOC"), {"model": "ner"})
    preview = PreviewWriter(tmp_path, summary, 5)
    for sink in (summary, preview):
        sink.write(prediction)
    (page,) = preview.close()
    html = page.read_text(encoding="utf-8")
    marks = re.findall(r"<mark[^>]*>(.*?)<sub>(\w+) ([\d.]+)</sub></mark>", html)
    assert marks == [("Angela Merkel", "PER", "0.99"), ("Paris", "LOC", "0.95"), ("Lyon", "LOC", "0.60")]
    assert "&amp; &lt;" in html  # the text around the spans is escaped
    assert summary.as_dict()["per_label"] == {"PER": 1, "LOC": 2}


def test_semantic_preview_and_summary(semantic_prediction, tmp_path):
    summary = SummaryCollector(tmp_path, LABELS, {"model": "seg"})
    preview = PreviewWriter(tmp_path, summary, 5)
    preview.take_image(0, cv2.imread(semantic_prediction.source))  # the picture the pipeline decoded
    for sink in (summary, preview):
        sink.write(semantic_prediction)
    preview.close()
    drawn = cv2.imread(str(next((tmp_path / "preview" / "images").glob("*.jpg"))))
    original = cv2.imread(semantic_prediction.source)
    assert drawn.shape == original.shape
    m = semantic_prediction.result
    sky = m.class_map == 0
    # the sky band is tinted with its class color, the unlabeled hole in the cat block is not
    assert np.abs(drawn[sky].astype(int) - original[sky].astype(int)).mean() > 20
    hole = np.zeros_like(sky)
    h, w = m.shape
    hole[h // 2 : h // 2 + 10, w // 2 : w // 2 + 10] = True
    assert np.abs(drawn[hole].astype(int) - original[hole].astype(int)).mean() < 12  # jpeg noise only
    s = summary.as_dict()
    assert s["annotations"] == 3 and s["per_label"] == {"sky": 1, "cat": 1, "grass": 1}
    fractions = s["labeled_pixel_fraction"]
    assert fractions["sky"] == pytest.approx(sky.mean(), abs=1e-6)
    assert fractions["grass"] == pytest.approx((m.class_map == 2).mean(), abs=1e-6)


def _reference_rle(mask):
    """COCO RLE over the whole image, the way rle.encode did before it looked at the mask's extent only."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


def _reference_polygons(mask):
    """Outer contours traced on the whole image, as codecs.polygons did before it traced the mask's extent."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return [], False
    parents = hierarchy[0][:, 3]
    outer = [c.reshape(-1, 2).astype(np.float32) for c, p in zip(contours, parents) if p < 0 and len(c) >= 3]
    return outer, bool((parents >= 0).any())


def _random_masks(seed: int, count: int):
    """Small masks whose set pixels lie in a random box: touching every edge and corner, full, empty, holed."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        mask = np.zeros((h, w), bool)
        y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < (0.97 if i % 3 else 0.6)
        yield mask
    yield np.ones((5, 4), bool)
    yield np.zeros((5, 4), bool)


def test_rle_of_the_mask_extent_is_the_whole_image_rle():
    masks = list(_random_masks(0, 4000))
    assert sum(m[0].any() and m[-1].any() for m in masks) > 200  # top and bottom rows set: runs that wrap columns
    assert sum(m[-1, -1] for m in masks) > 20  # the last pixel set: the last run ends with the image
    for mask in masks:
        got = rle.encode(mask)
        assert got == _reference_rle(mask), mask.astype(int)
        assert np.array_equal(rle.decode(got), mask)
    for empty in (np.zeros((0, 5), bool), np.zeros((3, 0), bool)):
        assert rle.encode(empty) == _reference_rle(empty)


def test_polygons_of_the_mask_extent_are_the_whole_image_outlines():
    from avala_infer.exporters.codecs.polygons import mask_to_polygons

    for mask in _random_masks(1, 3000):
        (got, holes), (want, want_holes) = mask_to_polygons(mask), _reference_polygons(mask)
        assert holes == want_holes and len(got) == len(want), mask.astype(int)
        assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want)), mask.astype(int)
