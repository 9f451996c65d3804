"""Reference outputs from a freshly loaded ultralytics model, and box matching, for the parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ultralytics_predictions(
    weights: Path, source: Path, *, conf: float = 0.25, iou: float = 0.7, rect: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, tuple]]:
    """{path: (xyxy, scores, class ids, (h, w))} from ``YOLO(weights).predict`` over a folder, one image a batch.

    A folder path (not a list) makes ultralytics read with cv2, its normal loop; a Python list would be
    decoded with PIL up front.
    """
    from ultralytics import YOLO

    model = YOLO(str(weights))
    out = {}
    for r in model.predict(
        str(source), stream=True, verbose=False, batch=1, rect=rect, conf=conf, iou=iou, device="cpu", max_det=300
    ):
        b = r.boxes
        out[str(Path(r.path).resolve())] = (b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int), r.orig_shape)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def count_matches(ref_boxes, ref_scores, ref_cls, boxes, scores, cls, *, min_iou=0.99, score_tol=1e-3) -> int:
    """Reference boxes that have a box of ours with the same class, IoU >= min_iou and a score within
    score_tol; each of our boxes matches at most once (greedy, best IoU first)."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return 0
    iou = box_iou(ref_boxes, boxes)
    ok = (
        (ref_cls[:, None] == cls[None, :])
        & (iou >= min_iou)
        & (np.abs(ref_scores[:, None] - scores[None, :]) <= score_tol)
    )
    used: set[int] = set()
    matched = 0
    for i in range(len(ref_boxes)):
        candidates = [j for j in np.argsort(-iou[i]) if ok[i, j] and j not in used]
        if candidates:
            used.add(candidates[0])
            matched += 1
    return matched
