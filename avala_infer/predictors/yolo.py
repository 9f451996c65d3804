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


def batched_nms(raw: Any, score_floor: float, iou: float, nc: int) -> tuple[Any, Any]:
    """Class-aware NMS over a whole batch of raw YOLO outputs ``(B, 4 + nc + extra, anchors)`` in one call.

    Returns ``(rows, image_index)``: rows ``(k, 6 + extra)`` of x1, y1, x2, y2, score, class (letterboxed
    pixels), then the extra channels (mask coefficients), sorted by descending score; and each row's image.
    """
    import torch
    import torchvision

    raw = raw.float()
    best, cls = raw[:, 4 : 4 + nc, :].max(1)  # (B, anchors)
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
    extra = raw[img_idx, 4 + nc :, anchor_idx]
    boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    keep = torchvision.ops.batched_nms(boxes, scores, img_idx * nc + classes, iou)
    rows = torch.cat((boxes[keep], scores[keep, None], classes[keep, None].float(), extra[keep]), 1)
    return rows, img_idx[keep]


def scale_boxes(boxes: Any, in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> Any:
    """Letterboxed xyxy -> original pixels, clipped to the image (a new tensor)."""
    import torch

    gain_x, gain_y, pad_x, pad_y = unletterbox_params(in_shape, orig_shape)
    h, w = orig_shape
    gain = boxes.new_tensor([gain_x, gain_y, gain_x, gain_y])
    pad = boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
    return torch.minimum(((boxes - pad) / gain).clamp(min=0), boxes.new_tensor([w, h, w, h]))


class YoloDetector(Predictor):
    """Letterbox in, boxes out; backends subclass it with their own loading, ``collate`` and ``forward``.

    ``forward`` returns the raw output tensor, or for segmentation ``(raw, prototypes)``.
    """

    model_type = ModelType.OBJECT_DETECTION
    default_input_size = 640
    stride: int = 32

    @property
    def minimal_padding(self) -> bool:
        return self.spec.letterbox == "rect"

    def prepare(self, image: np.ndarray) -> Letterboxed:
        boxed = letterbox(image, self.spec.input_size, self.stride, self.minimal_padding)
        return Letterboxed(boxed, image.shape[:2])

    def batch_key(self, prepared: Letterboxed) -> Hashable:
        return prepared.image.shape

    def masks_for(self, protos: Any, rows: Any, in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> Any:
        """Instance masks of one image's rows (segmentation subclasses); detectors have none."""
        return None

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
        preds, protos = raw if isinstance(raw, tuple) else (raw, None)
        rows, img_idx = batched_nms(preds, score_floor, iou, len(self.labels))
        in_shape = prepared[0].image.shape[:2]
        labels = np.asarray(self.labels, dtype=object)
        results = []
        for i, item in enumerate(prepared):
            mine = rows[img_idx == i][:max_det]  # rows are sorted by score
            masks = None
            if protos is not None:
                masks, nonempty = self.masks_for(protos[i], mine, in_shape, item.orig_shape)
                mine, masks = mine[nonempty], masks[nonempty].cpu().numpy()
            boxes = scale_boxes(mine[:, :4], in_shape, item.orig_shape).cpu().numpy()
            mine = mine[:, 4:6].cpu().numpy()
            class_id = mine[:, 1].astype(np.int64)
            results.append(Detections(boxes, mine[:, 0], class_id, labels[class_id], masks))
        return results
