"""torchvision's NMS in numpy, for postprocessing that runs without torch (an ONNX detector on the CPU: importing
torch costs such a run 1.5 s of its start-up, for one function).

The same algorithm and the same float32 arithmetic as torchvision's CPU kernel (``torchvision/csrc/ops/cpu/
nms_kernel.cpp``), so the same boxes are kept, in the same order:

- the boxes in descending score order, ties in their given order (its stable sort);
- each box's area ``(x2 - x1) * (y2 - y1)`` in float32, once;
- the best box left is kept; every box after it whose IoU with it, ``inter / (area_i + area_j - inter)`` in
  float32 with ``inter = max(0, xx2 - xx1) * max(0, yy2 - yy1)``, is above the threshold is suppressed (the
  comparison in double precision, as the kernel compares a float with its ``double`` threshold);
- and so on with the boxes not suppressed.

The kernel tests every later box against each kept one; here the boxes a kept one suppresses leave the arrays
(one numpy pass per kept box over the boxes left), which keeps the same ones. :func:`class_nms` is ultralytics'
class-aware NMS (boxes shifted by their class): one :func:`nms` per class where the shift keeps the classes apart,
which keeps what one call over all of them keeps. ``tests/test_nms_kernel.py`` holds both to
``torchvision.ops.nms`` on random boxes with ties.
"""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The indices (int64) of the ``(n, 4)`` xyxy ``boxes`` kept, by descending ``scores``:
    ``torchvision.ops.nms`` on float32 inputs."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    threshold = float(iou_threshold)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    zero = np.float32(0)
    left = np.arange(len(order))  # positions in ``order`` of the boxes not yet kept or suppressed
    kept = []
    while len(left):
        i, rest = left[0], left[1:]
        kept.append(i)
        if not len(rest):
            break
        width = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        height = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = width * height
        with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: 0 / 0 is nan, never above it
            overlap = inter / (areas[i] + areas[rest] - inter)
        left = rest[~(overlap.astype(np.float64) > threshold)]
    return order[np.asarray(kept, np.int64)].astype(np.int64, copy=False)


def class_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, shift: float
) -> np.ndarray:
    """:func:`nms` of the float32 boxes ``boxes + classes[:, None] * shift`` (ultralytics' class-aware NMS: each
    class moved ``shift`` pixels on from the one before): the indices kept, by descending score.

    Where the boxes span less than ``shift`` on an axis, a box never overlaps a box of another class once shifted
    (an overlap of 0 is never above a threshold of 0 or more): then each class goes through :func:`nms` alone and
    the kept boxes are put in the one call's order. A kept box scans only its own class then, not every box left:
    at a low score floor (100+ candidates an image) several times faster, the same indices."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    shifted = boxes + np.asarray(classes, np.float32)[:, None] * np.float32(shift)
    if len(boxes) < 2 or iou_threshold < 0:
        return nms(shifted, scores, iou_threshold)
    span = np.maximum(boxes[:, 2:].max(0) - boxes[:, :2].min(0), 0)
    # 1 pixel to spare: a shifted coordinate is rounded to float32 (a spacing of 1/16 px at 80 classes of 7680)
    if not (span.min() < shift - 1) or not np.isfinite(boxes).all():
        return nms(shifted, scores, iou_threshold)
    kept = []
    for group in _class_groups(np.asarray(classes)):
        kept.append(group[nms(shifted[group], scores[group], iou_threshold)] if len(group) > 1 else group)
    kept = np.concatenate(kept)
    rank = np.empty(len(scores), np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))  # the one call's order
    return kept[np.argsort(rank[kept])]


def _class_groups(classes: np.ndarray) -> list[np.ndarray]:
    """The indices of each class's boxes, each group in index order."""
    order = np.argsort(classes, kind="stable")
    cuts = np.flatnonzero(np.diff(classes[order])) + 1
    return np.split(order, cuts)
