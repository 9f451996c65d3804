"""JSONL: one object per labeled item, written as it arrives.

``{"source", "key", "width", "height", "annotations": [{"label", "class_id", "score", "bbox": [x1, y1, x2, y2]}]}``
with ``bbox`` in original image pixels (xyxy); instance masks add ``segmentation``, an uncompressed COCO RLE
(``{"size": [h, w], "counts": [...]}``, column-major, zeros first). Failed items are not here; they are in
``failures.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path

from avala_infer.annotations import Prediction, rle
from avala_infer.exporters.base import round_list


def prediction_record(prediction: Prediction) -> dict:
    d = prediction.detections
    annotations = [
        {"label": str(name), "class_id": int(cid), "score": round(float(score), 5), "bbox": round_list(box)}
        for box, score, cid, name in zip(d.xyxy, d.confidence, d.class_id, d.class_name)
    ]
    if d.mask is not None:
        for annotation, mask in zip(annotations, d.mask):
            annotation["segmentation"] = rle.encode(mask)
    return {
        "source": prediction.source,
        "key": prediction.key,
        "width": prediction.width,
        "height": prediction.height,
        "annotations": annotations,
    }


class JsonlWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...]) -> None:
        self.path = out_dir / "annotations.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")

    def write(self, prediction: Prediction) -> None:
        if prediction.ok:
            self._file.write(json.dumps(prediction_record(prediction)) + "\n")

    def close(self) -> list[Path]:
        self._file.close()
        return [self.path]
