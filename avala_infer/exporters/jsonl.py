"""JSONL: one object per labeled item, written as it arrives.

Every record has ``source``, ``key`` and ``annotations``; image items add ``width`` and ``height``, text items
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

Failed items are not here; they are in ``failures.jsonl``. The lines go to ``annotations.jsonl.part`` as they
arrive, renamed at the end: a run that fails leaves no half file (and an earlier run's file untouched).
"""

from __future__ import annotations

import json
from pathlib import Path

from avala_infer.annotations import Classifications, Detections, Entities, Prediction, SemanticMask
from avala_infer.exporters.base import PartFile, round_list
from avala_infer.exporters.codecs import rle


def _boxes(d: Detections) -> list[dict]:
    annotations = [
        {"label": str(name), "class_id": int(cid), "score": round(float(score), 5), "bbox": round_list(box)}
        for box, score, cid, name in zip(d.xyxy, d.confidence, d.class_id, d.class_name)
    ]
    if d.mask is not None:
        for annotation, mask in zip(annotations, d.mask):
            annotation["segmentation"] = rle.encode(mask)
    return annotations


def _segments(m: SemanticMask) -> list[dict]:
    return [
        {
            "label": s.class_name,
            "class_id": s.class_id,
            "score": round(s.confidence, 5),
            "area": s.area,
            "segmentation": rle.encode(s.mask),
        }
        for s in m.segments()
    ]


def _classes(c: Classifications) -> list[dict]:
    return [
        {"label": str(name), "class_id": int(cid), "score": round(float(score), 5)}
        for name, cid, score in zip(c.class_name, c.class_id, c.confidence)
    ]


def _entities(e: Entities, text: str) -> list[dict]:
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


def prediction_record(prediction: Prediction) -> dict:
    result = prediction.result
    record: dict = {"source": prediction.source, "key": prediction.key}
    if prediction.text is not None:
        record["text"] = prediction.text
    else:
        record["width"], record["height"] = prediction.width, prediction.height
    if isinstance(result, Detections):
        record["annotations"] = _boxes(result)
    elif isinstance(result, SemanticMask):
        record["annotations"] = _segments(result)
    elif isinstance(result, Classifications):
        record["multi_label"] = result.multi_label
        record["annotations"] = _classes(result)
    elif isinstance(result, Entities):
        record["annotations"] = _entities(result, prediction.text or "")
    else:
        raise TypeError(f"no JSONL layout for {type(result).__name__}")
    return record


class JsonlWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...]) -> None:
        self.path = out_dir / "annotations.jsonl"
        self._file = PartFile(self.path)

    def write(self, prediction: Prediction) -> None:
        if prediction.ok:
            self._file.write(json.dumps(prediction_record(prediction), ensure_ascii=False) + "\n")

    def close(self) -> list[Path]:
        return self._file.finish()

    def abort(self) -> None:
        self._file.abort()
