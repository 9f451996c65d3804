"""``summary.json``: counts, score distribution and speed of a run, from running counters (flat memory).

``annotations`` counts what each model type emits per item: boxes or instances, classes present in a semantic
mask (their score is the mean probability over their pixels), classes kept for a classification, entities.
Semantic segmentation adds ``labeled_pixel_fraction`` per label (its share of all pixels of labeled items).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np

from avala_infer.annotations import Prediction, SemanticMask
from avala_infer.exporters.base import write_json_atomic

SCORE_BINS = 20
THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)


class SummaryCollector:
    def __init__(self, out_dir: Path, labels: tuple[str, ...], settings: dict) -> None:
        self.path = out_dir / "summary.json"
        self.labels = labels
        self.settings = settings
        self.items = self.succeeded = self.failed = self.boxes = 0
        self.items_with_boxes = 0
        self.per_label: collections.Counter[str] = collections.Counter()
        self.histogram = np.zeros(SCORE_BINS, dtype=np.int64)
        self.at_threshold = np.zeros(len(THRESHOLDS), dtype=np.int64)
        self.stage_ms: collections.Counter[str] = collections.Counter()
        self.pixels = 0
        self.pixels_per_label: collections.Counter[str] = collections.Counter()
        self.started = time.perf_counter()
        self.finished = self.started

    def write(self, prediction: Prediction) -> None:
        self.items += 1
        self.finished = time.perf_counter()
        if not prediction.ok:
            self.failed += 1
            return
        self.succeeded += 1
        d = prediction.result
        if isinstance(d, SemanticMask):
            self.pixels += d.class_map.size
            self.pixels_per_label.update(dict(zip((str(n) for n in d.class_name), d.area.tolist())))
        self.boxes += len(d)
        self.items_with_boxes += bool(len(d))
        self.per_label.update(str(n) for n in d.class_name)
        self.histogram += np.histogram(d.confidence, bins=SCORE_BINS, range=(0.0, 1.0))[0]
        self.at_threshold += (d.confidence[None, :] >= np.asarray(THRESHOLDS)[:, None]).sum(1)
        self.stage_ms.update(prediction.timings)

    def as_dict(self) -> dict:
        wall = max(self.finished - self.started, 1e-9)
        edges = np.linspace(0, 1, SCORE_BINS + 1)
        extra = {}
        if self.pixels:
            extra["labeled_pixel_fraction"] = {
                name: round(self.pixels_per_label[name] / self.pixels, 6)
                for name in self.labels
                if self.pixels_per_label.get(name)
            }
        return {
            "items": self.items,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "items_with_annotations": self.items_with_boxes,
            "annotations": self.boxes,
            "per_label": {name: self.per_label.get(name, 0) for name in self.labels if self.per_label.get(name)},
            "score_histogram": [
                {"from": round(float(lo), 2), "to": round(float(hi), 2), "count": int(c)}
                for lo, hi, c in zip(edges[:-1], edges[1:], self.histogram)
            ],
            "annotations_at_threshold": {str(t): int(c) for t, c in zip(THRESHOLDS, self.at_threshold)},
            "throughput_items_per_s": round(self.items / wall, 2),
            "wall_s": round(wall, 3),
            "mean_stage_ms": {k: round(v / max(self.succeeded, 1), 3) for k, v in sorted(self.stage_ms.items())},
            **extra,
            "settings": self.settings,
        }

    def close(self) -> list[Path]:
        return [write_json_atomic(self.path, self.as_dict())]

    def abort(self) -> None:
        """Nothing is open: ``summary.json`` of a run that failed is not written."""
