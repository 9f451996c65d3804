"""YOLO detection pre- and post-processing shared by every backend that runs YOLO weights.

Pre-processing mirrors ultralytics' ``LetterBox`` (same rounding, same 114 grey, same INTER_LINEAR resize)
so that our boxes equal the reference's. Post-processing is one batched, class-aware NMS over the whole
batch on the model's device, then boxes go back to original pixels with ultralytics' ``scale_boxes`` rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import cv2
import numpy as np

from avala_infer.annotations import Detections
from avala_infer.predictors.base import Predictor
from avala_infer.types import ModelType

PAD_VALUE = 114
MAX_NMS_CANDIDATES = 30000  # per image, as ultralytics


@dataclasses.dataclass(frozen=True)
class Letterboxed:
    """A letterboxed BGR uint8 image and the shape of the original it came from."""

    image: np.ndarray
    orig_shape: tuple[int, int]  # (height, width)


def letterbox(image: np.ndarray, size: int, stride: int, minimal: bool) -> np.ndarray:
    """Resize keeping aspect ratio, then pad with grey: to ``size`` x ``size``, or, with ``minimal``, only up
    to the next multiple of ``stride`` on each side (ultralytics ``LetterBox(auto=True)``)."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = size - new_w, size - new_h
    if minimal:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def unletterbox_params(in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """(gain_x, gain_y, pad_x, pad_y) that map letterboxed coordinates back, as ultralytics ``scale_boxes``."""
    gain = min(in_shape[0] / orig_shape[0], in_shape[1] / orig_shape[1])
    new_h, new_w = (max(round(x * gain), 1) for x in orig_shape)
    pad_x = round((in_shape[1] - new_w) / 2 - 0.1)
    pad_y = round((in_shape[0] - new_h) / 2 - 0.1)
    return new_w / orig_shape[1], new_h / orig_shape[0], pad_x, pad_y


def batched_nms(raw: Any, score_floor: float, iou: float) -> tuple[Any, Any]:
    """Class-aware NMS over a whole batch of raw YOLO outputs ``(B, 4 + nc, anchors)`` in one call.

    Returns ``(rows, image_index)``: rows ``(k, 6)`` of x1, y1, x2, y2, score, class in letterboxed pixels,
    sorted by descending score, and the batch index of each row.
    """
    import torch
    import torchvision

    raw = raw.float()
    nc = raw.shape[1] - 4
    best, cls = raw[:, 4:, :].max(1)  # (B, anchors)
    img_idx, anchor_idx = torch.nonzero(best > score_floor, as_tuple=True)
    scores = best[img_idx, anchor_idx]
    counts = torch.bincount(img_idx, minlength=raw.shape[0])
    if len(counts) and int(counts.max()) > MAX_NMS_CANDIDATES:  # rare: keep each image's best, as ultralytics
        keep = torch.cat(
            [
                torch.nonzero(img_idx == i).flatten()[
                    scores[img_idx == i].argsort(descending=True)[:MAX_NMS_CANDIDATES]
                ]
                for i in range(raw.shape[0])
            ]
        )
        img_idx, anchor_idx, scores = img_idx[keep], anchor_idx[keep], scores[keep]
    classes = cls[img_idx, anchor_idx]
    xywh = raw[img_idx, :4, anchor_idx]
    boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    keep = torchvision.ops.batched_nms(boxes, scores, img_idx * nc + classes, iou)
    rows = torch.cat((boxes[keep], scores[keep, None], classes[keep, None].float()), 1)
    return rows, img_idx[keep]


class YoloDetector(Predictor):
    """Letterbox in, boxes out; backends subclass it with their own loading, ``collate`` and ``forward``."""

    model_type = ModelType.OBJECT_DETECTION
    stride: int = 32

    @property
    def minimal_padding(self) -> bool:
        return self.spec.letterbox == "rect"

    def prepare(self, image: np.ndarray) -> Letterboxed:
        boxed = letterbox(image, self.spec.input_size, self.stride, self.minimal_padding)
        return Letterboxed(boxed, image.shape[:2])

    def batch_key(self, prepared: Letterboxed) -> Hashable:
        return prepared.image.shape

    def postprocess(
        self,
        raw: Any,
        prepared: Sequence[Letterboxed],
        *,
        score_floor: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        **_: Any,
    ) -> list[Detections]:
        import torch

        rows, img_idx = batched_nms(raw, score_floor, iou)
        if len(rows):
            in_shape = prepared[0].image.shape[:2]
            params = torch.tensor(
                [unletterbox_params(in_shape, p.orig_shape) for p in prepared], dtype=torch.float32, device=rows.device
            )[img_idx]
            limits = torch.tensor([p.orig_shape[::-1] for p in prepared], dtype=torch.float32, device=rows.device)
            limits = limits[img_idx].repeat(1, 2)  # (w, h, w, h)
            boxes = rows[:, :4]
            boxes[:, 0::2] = (boxes[:, 0::2] - params[:, 2:3]) / params[:, 0:1]
            boxes[:, 1::2] = (boxes[:, 1::2] - params[:, 3:4]) / params[:, 1:2]
            boxes = torch.minimum(boxes.clamp(min=0), limits)
            rows = torch.cat((boxes, rows[:, 4:]), 1)
        rows_np = rows.cpu().numpy()
        img_np = img_idx.cpu().numpy()
        labels = np.asarray(self.labels, dtype=object)
        results = []
        for i in range(len(prepared)):
            mine = rows_np[img_np == i][:max_det]  # rows are sorted by score
            class_id = mine[:, 5].astype(np.int64)
            results.append(Detections(mine[:, :4], mine[:, 4], class_id, labels[class_id]))
        return results
