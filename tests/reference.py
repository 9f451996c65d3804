"""Reference outputs from a freshly loaded ultralytics model, box matching and COCO scoring, for the parity tests."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np


def ultralytics_predictions(
    weights: Path,
    source: Path,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    rect: bool = True,
    imgsz: int | None = 640,
    max_det: int = 300,
    masks: bool = False,
    classes: list[int] | None = None,
) -> dict[str, tuple]:
    """{path: (xyxy, scores, class ids, (h, w)[, masks])} from ``YOLO(weights).predict`` over a folder, one image
    a batch; with ``masks``, bool instance masks at the original size (ultralytics' own ``scale_masks``).

    A folder path (not a list) makes ultralytics read with cv2, its normal loop; a Python list would be
    decoded with PIL up front. ``imgsz`` is explicit: a ``.pt`` remembers its training size and ultralytics
    would predict at that; ``None`` leaves it to ultralytics (a ``.pt``'s training size, else 640).
    """
    from ultralytics import YOLO
    from ultralytics.utils import ops

    model = YOLO(str(weights))
    out = {}
    for r in model.predict(
        str(source),
        stream=True,
        verbose=False,
        batch=1,
        rect=rect,
        conf=conf,
        iou=iou,
        device="cpu",
        max_det=max_det,
        classes=classes,
        **({} if imgsz is None else {"imgsz": imgsz}),
    ):
        b = r.boxes
        row = (b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int), r.orig_shape)
        if masks:
            if r.masks is None:
                mask_array = np.zeros((0, *r.orig_shape), bool)
            else:
                mask_array = (ops.scale_masks(r.masks.data[None].float(), r.orig_shape)[0] > 0.5).numpy()
            row = (*row, mask_array)
        out[str(Path(r.path).resolve())] = row
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_pairs(
    ref_boxes, ref_scores, ref_cls, boxes, scores, cls, *, min_iou=0.99, score_tol=1e-3
) -> list[tuple[int, int]]:
    """(reference index, our index) for each reference box that has a box of ours with the same class,
    IoU >= min_iou and a score within score_tol; each of our boxes matches at most once (greedy, best IoU)."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return []
    iou = box_iou(ref_boxes, boxes)
    ok = (ref_cls[:, None] == cls[None, :]) & (iou >= min_iou)
    ok &= np.abs(ref_scores[:, None] - scores[None, :]) <= score_tol
    used: set[int] = set()
    pairs = []
    for i in range(len(ref_boxes)):
        candidates = [j for j in np.argsort(-iou[i]) if ok[i, j] and j not in used]
        if candidates:
            used.add(candidates[0])
            pairs.append((i, int(candidates[0])))
    return pairs


def count_matches(*args, **kwargs) -> int:
    return len(match_pairs(*args, **kwargs))


def coco_map50_95(gt: dict, results: list[dict], iou_type: str) -> float:
    """pycocotools mAP50-95 of ``results`` against the ground-truth dataset ``gt`` (``bbox`` or ``segm``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])
