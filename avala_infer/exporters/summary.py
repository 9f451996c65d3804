"""``summary.json``: counts, score distribution and speed of a run, from running counters (flat memory).

``annotations`` counts what each model type emits per item: boxes or instances, classes present in a semantic
mask (their score is the mean probability over their pixels), classes kept for a classification, entities.
Semantic segmentation adds ``labeled_pixel_fraction`` per label (its share of all pixels of labeled items).

A dry run predicts at a low floor (:func:`dry_run_options`: 0.05, or the run's threshold when lower) so that
its summary and gallery can say what every threshold above the floor would keep. The top-level counts
(``annotations``, ``per_label``, ``score_histogram``...) are those of the requested thresholds; ``sweep`` counts
what a run at each 0.05 step would keep, per label; ``annotations_at_threshold`` lists only thresholds at or
above the score the run predicted at (below it, predictions were never made: a count there would be a lie).
Semantic masks are filtered per pixel, so a class's count at another threshold is not known from its mean
score: their sweep is ``null`` and ``annotations_at_threshold`` empty.

Boxes of a prompted model (open-vocabulary detection) say which prompt scored each of them (a ``prompt`` array
beside ``class_name``); ``per_prompt`` then counts them per label and prompt, for a user to tune prompts and
thresholds: ``annotations`` (kept at the requested thresholds), ``predicted`` (at the floor), their mean and best
score, and ``sweep`` (what a run at each of the sweep's thresholds would keep). Without prompts it is absent.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path

import numpy as np

from avala_infer.annotations import Prediction, SemanticMask
from avala_infer.exporters.base import write_json_atomic

SCORE_BINS = 20
THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
DRY_RUN_FLOOR = 0.05
# the gallery's slider: every 0.01 from 0 to 1, as float32 as the label filter compares them
FINE_STEPS = np.round(np.arange(101) / 100, 2)
FINE = FINE_STEPS.astype(np.float32)
SWEEP_EVERY = 5  # summary.json's sweep: every 0.05
# Scores are counted a few thousand at a time (one numpy pass over many items instead of a few per item); what
# waits is at most this many scores, so memory stays flat. Counting is per score, so the batches change nothing.
COUNT_EVERY = 4096


def dry_run_floor(label_filter) -> float:
    """The score a dry run predicts at: 0.05, or the lowest requested threshold when that is lower."""
    return min(DRY_RUN_FLOOR, label_filter.score_floor)


def dry_run_options(options, model_type=None):
    """``options`` with every label's threshold lowered to :func:`dry_run_floor`, for a dry run to predict with.

    Semantic segmentation keeps its thresholds (they apply per pixel: its gallery keeps the run's overlay)."""
    if getattr(model_type, "value", model_type) == "semantic_segmentation":
        return options
    lowered = options.label_filter
    floor = np.float32(dry_run_floor(lowered))
    lowered = dataclasses.replace(lowered, thresholds=np.minimum(lowered.thresholds, floor).astype(np.float32))
    return dataclasses.replace(options, label_filter=lowered)


def at_requested(prediction: Prediction, label_filter) -> Prediction:
    """``prediction`` (made at the dry-run floor) with only what ``label_filter``'s thresholds keep."""
    result = prediction.result
    if label_filter is None or not prediction.ok or isinstance(result, SemanticMask) or not len(result):
        return prediction
    keep = result.confidence >= label_filter.thresholds[result.class_id]
    return prediction if keep.all() else dataclasses.replace(prediction, result=result[keep])


@dataclasses.dataclass
class PromptCounts:
    """Running counts of the boxes one prompt scored for one label."""

    predicted: int = 0
    kept: int = 0
    score_sum: float = 0.0
    score_max: float = 0.0
    fine: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(FINE), dtype=np.int64))


def _by_prompt(detections):
    """``(label, prompt, scores)`` for each label and prompt among ``detections`` (float32 scores)."""
    if not len(detections):
        return
    pairs = np.array([f"{label}\0{prompt}" for label, prompt in zip(detections.class_name, detections.prompt)])
    keys, groups = np.unique(pairs, return_inverse=True)
    scores = np.asarray(detections.confidence, dtype=np.float32)
    for i, key in enumerate(keys):
        label, prompt = str(key).split("\0", 1)
        yield label, prompt, scores[groups == i]


class SummaryCollector:
    """Running counters of a run.

    ``requested``: the run's :class:`~avala_infer.filters.LabelFilter` (its thresholds per output label);
    with ``dry_run`` the predictions come at the floor and the top-level counts keep only what the requested
    thresholds keep. Without ``requested`` every prediction counts (it was filtered already).
    """

    def __init__(
        self, out_dir: Path, labels: tuple[str, ...], settings: dict, requested=None, dry_run: bool = False
    ) -> None:
        self.path = out_dir / "summary.json"
        self.labels = tuple(labels)
        self.settings = settings
        self.requested = requested
        if requested is not None:
            self.floor = dry_run_floor(requested) if dry_run else requested.score_floor
        else:
            self.floor = float(settings.get("confidence_threshold") or 0.0)
        self.items = self.succeeded = self.failed = self.boxes = 0
        self.items_with_boxes = 0
        self.per_label: collections.Counter[str] = collections.Counter()
        # per label: what a run at each 0.01 step would keep, and the scores' histogram (all predicted)
        self._fine = np.zeros((len(self.labels), len(FINE)), dtype=np.int64)
        self._label_histogram = np.zeros((len(self.labels), SCORE_BINS), dtype=np.int64)
        self._histogram = np.zeros(SCORE_BINS, dtype=np.int64)
        self._at_threshold = np.zeros(len(THRESHOLDS), dtype=np.int64)
        # scores not counted yet (see COUNT_EVERY): (class ids, scores) predicted; scores kept at the requested
        # thresholds; every score predicted (for annotations_at_threshold)
        self._predicted: list[tuple[np.ndarray, np.ndarray]] = []
        self._kept: list[np.ndarray] = []
        self._all: list[np.ndarray] = []
        self._waiting = 0
        self.semantic = False
        self.stage_ms: collections.Counter[str] = collections.Counter()
        self.pixels = 0
        self.pixels_per_label: collections.Counter[str] = collections.Counter()
        self.prompts: dict[tuple[str, str], PromptCounts] = {}  # (label, prompt) -> its counts (prompted models)
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
        self.stage_ms.update(prediction.timings)
        if isinstance(d, SemanticMask):
            self.semantic = True
            self.pixels += d.class_map.size
            self.pixels_per_label.update(dict(zip((str(n) for n in d.class_name), d.area.tolist())))
        elif len(d):
            ids = np.asarray(d.class_id, dtype=np.int64)
            if len(self.labels) and ids.max() < len(self.labels):
                self._predicted.append((ids, np.asarray(d.confidence, dtype=np.float32)))
            d = at_requested(prediction, self.requested).result
            if getattr(prediction.result, "prompt", None) is not None:
                self._count_prompts(prediction.result, d)
        self.boxes += len(d)
        self.items_with_boxes += bool(len(d))
        self.per_label.update(map(str, d.class_name))
        if len(d):
            self._kept.append(d.confidence)
        # from everything predicted (a dry run: at the floor); as_dict drops rows below it
        if not self.semantic and len(prediction.result):
            self._all.append(np.asarray(prediction.result.confidence, dtype=np.float32))
        self._waiting += len(prediction.result)
        if self._waiting >= COUNT_EVERY:
            self._count()

    def _count_prompts(self, predicted, kept) -> None:
        """Count each (label, prompt) of a prompted model's boxes: all ``predicted`` and the ``kept`` ones."""
        for label, prompt, scores in _by_prompt(predicted):
            counts = self.prompts.setdefault((label, prompt), PromptCounts())
            counts.predicted += len(scores)
            counts.score_sum += float(scores.sum(dtype=np.float64))
            counts.score_max = max(counts.score_max, float(scores.max()))
            counts.fine += (scores[:, None] >= FINE[None, :]).sum(0)
        for label, prompt, scores in _by_prompt(kept):
            self.prompts.setdefault((label, prompt), PromptCounts()).kept += len(scores)

    def per_prompt(self) -> dict:
        """``{label: {prompt: counts}}`` of a prompted model's boxes (see the module's docstring)."""
        steps = [i for i in range(0, len(FINE), SWEEP_EVERY) if self.thresholds_known()[i]]
        out: dict[str, dict] = {}
        for (label, prompt), counts in sorted(self.prompts.items()):
            out.setdefault(label, {})[prompt] = {
                "annotations": counts.kept,
                "predicted": counts.predicted,
                "mean_score": round(counts.score_sum / counts.predicted, 4) if counts.predicted else None,
                "max_score": round(counts.score_max, 4) if counts.predicted else None,
                "sweep": [int(counts.fine[i]) for i in steps],
            }
        return out

    def _count(self) -> None:
        """Count the scores waiting since the last call into the fine steps and the histograms."""
        if self._predicted:
            ids = np.concatenate([i for i, _ in self._predicted])
            scores = np.concatenate([s for _, s in self._predicted])
            # how many 0.01 steps each score passes (FINE ascends: score >= FINE[t] for t < passed); NaN passes none
            passed = np.searchsorted(FINE, scores, side="right")
            passed[np.isnan(scores)] = 0
            width = len(FINE) + 1
            counts = np.bincount(ids * width + passed, minlength=len(self.labels) * width)
            counts = counts.reshape(len(self.labels), width)
            self._fine += np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]  # at step t: those passing > t steps
            bins = np.clip((scores * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
            self._label_histogram += np.bincount(
                ids * SCORE_BINS + bins, minlength=len(self.labels) * SCORE_BINS
            ).reshape(len(self.labels), SCORE_BINS)
        if self._kept:
            self._histogram += np.histogram(np.concatenate(self._kept), bins=SCORE_BINS, range=(0.0, 1.0))[0]
        if self._all:
            scores = np.concatenate(self._all)
            self._at_threshold += (scores[None, :] >= np.asarray(THRESHOLDS, dtype=np.float32)[:, None]).sum(1)
        self._predicted, self._kept, self._all, self._waiting = [], [], [], 0

    @property
    def fine(self) -> np.ndarray:
        """Per label, how many predictions a run at each 0.01 step (:data:`FINE`) would keep."""
        self._count()
        return self._fine

    @property
    def label_histogram(self) -> np.ndarray:
        """Per label, the histogram of every predicted score (:data:`SCORE_BINS` bins)."""
        self._count()
        return self._label_histogram

    @property
    def histogram(self) -> np.ndarray:
        """The histogram of the scores kept at the requested thresholds."""
        self._count()
        return self._histogram

    @property
    def at_threshold(self) -> np.ndarray:
        """How many predictions each of :data:`THRESHOLDS` keeps (from all predicted)."""
        self._count()
        return self._at_threshold

    def thresholds_known(self) -> np.ndarray:
        """Which of the 0.01 steps a count is known for: those at or above the floor (float32, as filters)."""
        return FINE >= np.float32(self.floor)

    def sweep(self) -> dict | None:
        """Counts a run at each 0.05 step (at or above the floor) would keep: in all and per label."""
        if self.semantic:
            return None
        steps = [i for i in range(0, len(FINE), SWEEP_EVERY) if self.thresholds_known()[i]]
        return {
            "floor": round(float(self.floor), 4),
            "thresholds": [float(FINE_STEPS[i]) for i in steps],
            "annotations": [int(self.fine[:, i].sum()) for i in steps],
            "per_label": {
                name: [int(self.fine[j, i]) for i in steps] for j, name in enumerate(self.labels) if self.fine[j].any()
            },
        }

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
        known = [not self.semantic and np.float32(t) >= np.float32(self.floor) for t in THRESHOLDS]
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
            "annotations_at_threshold": {
                str(t): int(c) for t, c, ok in zip(THRESHOLDS, self.at_threshold, known) if ok
            },
            "sweep": self.sweep(),
            **({"per_prompt": self.per_prompt()} if self.prompts else {}),
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
