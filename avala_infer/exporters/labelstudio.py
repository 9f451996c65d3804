"""Label Studio pre-annotations: one JSON list of tasks, each with a ``predictions`` entry.

Boxes are ``rectanglelabels`` and instance masks ``polygonlabels`` (one result per outline of the mask,
ids ``<item>-<instance>-<part>``; holes are not kept: Label Studio polygons cannot hold them), both in
percent of the original image, as Label Studio's import format documents; ``from_name="label"`` and
``to_name="image"`` match its default object-detection labeling config. Each task's ``data.image`` is the
source path (point Label Studio's local-files storage at the source folder). The list is streamed to disk
item by item.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from avala_infer.annotations import Prediction
from avala_infer.annotations.polygons import mask_to_polygons


def prediction_task(prediction: Prediction, model_version: str) -> dict:
    d, w, h = prediction.detections, prediction.width, prediction.height
    results = []
    for i, ((x1, y1, x2, y2), score, name) in enumerate(zip(d.xyxy, d.confidence, d.class_name)):
        common = {
            "id": f"{prediction.index}-{i}",
            "from_name": "label",
            "to_name": "image",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "score": round(float(score), 5),
        }
        if d.mask is not None:
            polygons, _ = mask_to_polygons(d.mask[i])
            for part, polygon in enumerate(polygons):  # a mask in several parts: one polygon result per part
                points = [[round(float(x) * 100 / w, 4), round(float(y) * 100 / h, 4)] for x, y in polygon]
                value = {"points": points, "polygonlabels": [str(name)]}
                results.append({**common, "id": f"{common['id']}-{part}", "type": "polygonlabels", "value": value})
        else:
            box = {
                "x": float(x1) * 100 / w,
                "y": float(y1) * 100 / h,
                "width": float(x2 - x1) * 100 / w,
                "height": float(y2 - y1) * 100 / h,
            }
            value = {**{k: round(v, 4) for k, v in box.items()}, "rotation": 0, "rectanglelabels": [str(name)]}
            results.append({**common, "type": "rectanglelabels", "value": value})
    score = round(float(d.confidence.mean()), 5) if len(d) else 0.0
    return {
        "data": {"image": prediction.source},
        "predictions": [{"model_version": model_version, "score": score, "result": results}],
    }


class LabelStudioWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...], model_version: str = "avala-infer") -> None:
        self.path = out_dir / "labelstudio.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model_version = model_version
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = self._tmp.open("w", encoding="utf-8")
        self._file.write("[")
        self._count = 0

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok:
            return
        task = prediction_task(prediction, self.model_version)
        self._file.write(("\n" if self._count == 0 else ",\n") + json.dumps(task))
        self._count += 1

    def close(self) -> list[Path]:
        self._file.write("\n]\n")
        self._file.close()
        os.replace(self._tmp, self.path)
        return [self.path]
