"""The JSONL record of a prediction, both ways: the one definition of the format that ``annotations.jsonl`` lines,
stored job results and project exports share.

A record has ``source``, ``key`` and ``annotations``; image items add ``width`` and ``height``, text items
``text``. Annotations, by model type:

- boxes: ``{"label", "class_id", "score", "bbox": [x1, y1, x2, y2]}`` in original image pixels; instance masks
  add ``segmentation``, an uncompressed COCO RLE (``{"size": [h, w], "counts": [...]}``, column-major, zeros
  first);
- semantic segmentation: one per class present, ``{"label", "class_id", "score" (mean probability over its
  pixels), "area" (pixels), "segmentation" (uncompressed COCO RLE of the class's pixels)}``;
- image and text classification: ``{"label", "class_id", "score"}``, best first, and ``"multi_label"`` on the
  record;
- named entities: ``{"label", "class_id", "score", "start", "end", "text", "word"}`` with character offsets
  into ``text`` (``"tag"`` too for aggregation ``none``).

:func:`prediction_to_record` writes one; :func:`record_to_prediction` reads one back, with class ids remapped
to positions in a vocabulary (a project's ontology). Reading never touches files: a caller whose record stands
for a text file passes the text it read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from avala_infer.annotations import (
    UNLABELED,
    Classifications,
    Detections,
    Entities,
    Prediction,
    Result,
    SemanticMask,
)
from avala_infer.errors import ConfigError
from avala_infer.exporters.codecs import instance_masks, rle
from avala_infer.exporters.codecs.number_text import int_texts
from avala_infer.types import ModelType

DETECTION_TYPES = (ModelType.OBJECT_DETECTION, ModelType.INSTANCE_SEGMENTATION)
CLASSIFICATION_TYPES = (ModelType.IMAGE_CLASSIFICATION, ModelType.TEXT_CLASSIFICATION)


# --- prediction -> record ---------------------------------------------------------------------------------------


def _segmentation(mask: np.ndarray, runs: list[np.ndarray] | None, counts: np.ndarray | None = None) -> dict:
    """The mask's uncompressed RLE (of its ``counts`` when given); with ``runs``, its counts go there and the
    record holds ``[]`` in their place (:func:`prediction_to_json` prints them)."""
    counts = rle.counts(mask) if counts is None else counts
    if runs is None:
        return {"size": list(mask.shape), "counts": counts.tolist()}
    runs.append(counts)
    return {"size": list(mask.shape), "counts": []}


def _boxes(d: Detections, runs: list[np.ndarray] | None) -> list[dict]:
    # .tolist(): Python numbers, the same values float()/int() of each numpy element give, made in one call
    annotations = [
        {"label": str(name), "class_id": cid, "score": round(score, 5), "bbox": [round(v, 2) for v in box]}
        for box, score, cid, name in zip(d.xyxy.tolist(), d.confidence.tolist(), d.class_id.tolist(), d.class_name)
    ]
    if d.mask is not None:
        for annotation, mask, counts in zip(annotations, d.mask, instance_masks.runs(d)):
            annotation["segmentation"] = _segmentation(mask, runs, counts)
    if d.mask_score is not None:  # a box-prompted segmenter's own score of each mask
        for annotation, score in zip(annotations, d.mask_score.tolist()):
            annotation["mask_score"] = round(score, 5)
    if d.prompt is not None:  # the text prompt that scored each box (open-vocabulary detectors)
        for annotation, prompt in zip(annotations, d.prompt):
            annotation["prompt"] = str(prompt)
    return annotations


def _segments(m: SemanticMask, runs: list[np.ndarray] | None) -> list[dict]:
    return [
        {
            "label": s.class_name,
            "class_id": s.class_id,
            "score": round(s.confidence, 5),
            "area": s.area,
            "segmentation": _segmentation(s.mask, runs),
        }
        for s in m.segments()
    ]


def _classes(c: Classifications) -> list[dict]:
    return [
        {"label": str(name), "class_id": int(cid), "score": round(float(score), 5)}
        for name, cid, score in zip(c.class_name, c.class_id, c.confidence)
    ]


def _spans(e: Entities, text: str) -> list[dict]:
    annotations = []
    for start, end, score, cid, name, word, tag in zip(
        e.start, e.end, e.confidence, e.class_id, e.class_name, e.word, e.tag
    ):
        annotation = {
            "label": str(name),
            "class_id": int(cid),
            "score": round(float(score), 5),
            "start": int(start),
            "end": int(end),
            "text": text[start:end],
            "word": str(word),
        }
        if tag is not None:
            annotation["tag"] = str(tag)
        annotations.append(annotation)
    return annotations


def prediction_to_record(prediction: Prediction) -> dict:
    """The JSONL record (a JSON-ready dict) of a successful prediction; see the module docstring for its layout."""
    return _record(prediction, None)


# what a mask's counts look like in the JSON of a record made with runs set aside: in ``json.dumps`` text only a
# "counts" key can read so (a quote inside a string is escaped, and records have no keys of the data's own)
_COUNTS_SLOT = '"counts": []'


def prediction_to_json(prediction: Prediction) -> str:
    """``json.dumps(prediction_to_record(prediction), ensure_ascii=False)``, the same text, faster for masks: their
    run lengths (thousands of numbers an item) are printed by numpy in one pass each, not one by one."""
    runs: list[np.ndarray] = []
    text = json.dumps(_record(prediction, runs), ensure_ascii=False)
    if not runs:
        return text
    parts = text.split(_COUNTS_SLOT)
    if len(parts) != len(runs) + 1:  # cannot happen (see _COUNTS_SLOT); the slow way rather than a wrong line
        return json.dumps(prediction_to_record(prediction), ensure_ascii=False)
    pieces = [parts[0]]
    for counts, part in zip(int_texts(runs), parts[1:]):
        pieces += ['"counts": [', counts, "]", part]
    return "".join(pieces)


def _record(prediction: Prediction, runs: list[np.ndarray] | None) -> dict:
    result = prediction.result
    record: dict = {"source": prediction.source, "key": prediction.key}
    if prediction.text is not None:
        record["text"] = prediction.text
    else:
        record["width"], record["height"] = prediction.width, prediction.height
    if isinstance(result, Detections):
        record["annotations"] = _boxes(result, runs)
    elif isinstance(result, SemanticMask):
        record["annotations"] = _segments(result, runs)
    elif isinstance(result, Classifications):
        record["multi_label"] = result.multi_label
        record["annotations"] = _classes(result)
    elif isinstance(result, Entities):
        record["annotations"] = _spans(result, prediction.text or "")
    else:
        raise TypeError(f"no JSONL layout for {type(result).__name__}")
    return record


# --- record -> prediction ---------------------------------------------------------------------------------------


class _Ids:
    """Label name -> vocabulary position; a name the vocabulary lacks is an error naming the item."""

    def __init__(self, ontology: Sequence[str], key: str) -> None:
        self.index = {name: i for i, name in enumerate(ontology)}
        self.ontology = ontology
        self.key = key

    def __call__(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise ConfigError(
                f"the result of item {self.key!r} has label {name!r}, which is not in the project's ontology "
                f"({', '.join(self.ontology) or 'empty'}); add it back (`avala-infer projects update PROJECT "
                f"--label {name}`) and export again"
            ) from None


def is_text_record(record: Mapping[str, Any], model_type: ModelType | str | None = None) -> bool:
    """Whether ``record`` stands for a text item: the model type's media when given, else its shape (image
    records carry their size, text records do not)."""
    if model_type is not None:
        return ModelType.parse(model_type).media == "text"
    return "width" not in record


def _guess_model_type(record: Mapping[str, Any], text: str | None) -> ModelType:
    """The model type a record's annotations were made by, for callers that do not say (an empty list of an
    image item is taken for boxes: pass ``model_type`` to get an empty semantic mask instead)."""
    annotations = record.get("annotations") or []
    if "multi_label" in record:
        return ModelType.TEXT_CLASSIFICATION if text is not None else ModelType.IMAGE_CLASSIFICATION
    if text is not None or any("start" in a for a in annotations):
        return ModelType.NAMED_ENTITY_RECOGNITION
    if any("bbox" not in a and "segmentation" in a for a in annotations):
        return ModelType.SEMANTIC_SEGMENTATION
    if any("segmentation" in a for a in annotations):
        return ModelType.INSTANCE_SEGMENTATION
    return ModelType.OBJECT_DETECTION


def _detections(annotations: list[dict], ids: _Ids, masks: bool, height: int, width: int) -> Detections:
    if not annotations:
        empty = Detections.empty()
        if masks:
            return Detections(empty.xyxy, empty.confidence, empty.class_id, empty.class_name,
                              np.zeros((0, height, width), bool))  # fmt: skip
        return empty
    with_masks = masks or any("segmentation" in a for a in annotations)
    mask = None
    if with_masks:
        mask = np.zeros((len(annotations), height, width), bool)
        for i, a in enumerate(annotations):
            if "segmentation" in a:
                mask[i] = rle.decode(a["segmentation"])
    return Detections(
        xyxy=np.asarray([a["bbox"] for a in annotations], np.float32).reshape(-1, 4),
        confidence=[a["score"] for a in annotations],
        class_id=[ids(a["label"]) for a in annotations],
        class_name=np.asarray([a["label"] for a in annotations], dtype=object),
        mask=mask,
        # optional columns come back when every annotation has them (a record is one model's run)
        mask_score=[a["mask_score"] for a in annotations]
        if mask is not None and _all_have(annotations, "mask_score")
        else None,
        prompt=[a["prompt"] for a in annotations] if _all_have(annotations, "prompt") else None,
    )


def _all_have(annotations: list[dict], key: str) -> bool:
    return all(key in a for a in annotations)


def _semantic(annotations: list[dict], ids: _Ids, height: int, width: int) -> SemanticMask:
    """Each segment's pixels get its vocabulary id and, as score, the segment's mean score."""
    class_map = np.full((height, width), UNLABELED, np.int32)
    score_map = np.zeros((height, width), np.float32)
    for a in annotations:
        pixels = rle.decode(a["segmentation"])
        class_map[pixels] = ids(a["label"])
        score_map[pixels] = a["score"]
    return SemanticMask(class_map, score_map, tuple(ids.ontology))


def _classifications(record: Mapping[str, Any], ids: _Ids) -> Classifications:
    annotations = record.get("annotations") or []
    return Classifications(
        class_id=[ids(a["label"]) for a in annotations],
        confidence=[a["score"] for a in annotations],
        class_name=np.asarray([a["label"] for a in annotations], dtype=object),
        multi_label=bool(record.get("multi_label", False)),
    )


def _entities(annotations: list[dict], ids: _Ids) -> Entities:
    return Entities.from_records(
        [
            {
                "start": a["start"],
                "end": a["end"],
                "score": a["score"],
                "class_id": ids(a["label"]),
                "label": a["label"],
                "word": a.get("word", a.get("text", "")),
                "tag": a.get("tag"),
            }
            for a in annotations
        ]
    )


def record_to_prediction(
    record: Mapping[str, Any],
    key: str,
    path: str | None,
    text: str | None,
    ontology: Sequence[str],
    *,
    model_type: ModelType | str | None = None,
    index: int = 0,
) -> Prediction:
    """The :class:`Prediction` a record (made by :func:`prediction_to_record`) stands for, with class ids
    remapped, by label name, to positions in ``ontology``.

    ``key``, ``path`` and ``text`` are the item's (``path`` None for a text given inline; ``text`` None for an
    image, and the text of a text item: this reads no file). ``model_type`` says which result type to build;
    without it the record's shape decides. ``index`` numbers the item (COCO image ids are ``index + 1``). A
    label the ontology lacks is a :class:`ConfigError`.
    """
    model_type = _guess_model_type(record, text) if model_type is None else ModelType.parse(model_type)
    ids = _Ids(list(ontology), key)
    annotations = list(record.get("annotations") or [])
    width, height = int(record.get("width") or 0), int(record.get("height") or 0)
    result: Result
    if model_type in DETECTION_TYPES:
        masks = model_type is ModelType.INSTANCE_SEGMENTATION
        result = _detections(annotations, ids, masks, height, width)
    elif model_type is ModelType.SEMANTIC_SEGMENTATION:
        result = _semantic(annotations, ids, height, width)
    elif model_type in CLASSIFICATION_TYPES:
        result = _classifications(record, ids)
    else:
        result = _entities(annotations, ids)
    if model_type.media == "text":
        source = path if path is not None else f"<text {key}>"
        return Prediction(index, source, key, result=result, text=text or "")
    return Prediction(index, path or f"<image {key}>", key, width=width, height=height, result=result)
