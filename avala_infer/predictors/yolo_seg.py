"""YOLO instance segmentation: masks from prototypes and per-box coefficients, on the model's device.

Mirrors ultralytics ``process_mask(..., upsample=True)`` (upsample the prototype mix to the letterboxed input,
binarise, crop to the box, drop instances whose mask is empty) and ``scale_masks`` (cut the padding away,
bilinear to the original size, > 0.5), so masks match the reference's ``Results.masks`` mapped to the image.
"""

from __future__ import annotations

from typing import Any

from avala_infer.predictors.yolo import YoloDetector
from avala_infer.types import ModelType


def crop_to_boxes(masks: Any, boxes: Any) -> Any:
    """Zero every mask outside its box (``masks`` (n, H, W), ``boxes`` (n, 4) xyxy in the same pixels)."""
    import torch

    _, h, w = masks.shape
    x1, y1, x2, y2 = torch.chunk(boxes[:, :, None], 4, 1)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype)[None, None, :]
    rows = torch.arange(h, device=masks.device, dtype=x1.dtype)[None, :, None]
    return masks * ((cols >= x1) & (cols < x2)) * ((rows >= y1) & (rows < y2))


def instance_masks(
    protos: Any, coefficients: Any, boxes: Any, in_shape: tuple[int, int], orig_shape: tuple[int, int]
) -> tuple[Any, Any]:
    """(bool masks (n, h, w) at the original resolution, which instances have a non-empty mask)."""
    import torch
    import torch.nn.functional as F

    h, w = orig_shape
    n = len(coefficients)
    if n == 0:
        empty = torch.zeros((0, h, w), dtype=torch.bool, device=protos.device)
        return empty, torch.zeros(0, dtype=torch.bool, device=protos.device)
    c, mh, mw = protos.shape
    mixed = (coefficients.float() @ protos.float().view(c, -1)).view(n, mh, mw)
    mixed = F.interpolate(mixed[None], in_shape, mode="bilinear")[0]
    binary = crop_to_boxes((mixed > 0).to(torch.uint8), boxes)
    nonempty = binary.amax((-2, -1)) > 0
    gain = min(in_shape[0] / h, in_shape[1] / w)
    content_h, content_w = max(round(h * gain), 1), max(round(w * gain), 1)
    top = round((in_shape[0] - content_h) / 2 - 0.1)
    left = round((in_shape[1] - content_w) / 2 - 0.1)
    binary = binary[:, top : top + content_h, left : left + content_w]
    resized = F.interpolate(binary[None].float(), (h, w), mode="bilinear")[0]
    return resized > 0.5, nonempty


class YoloSegmenter(YoloDetector):
    """Boxes and instance masks; backends subclass it with loading, ``collate`` and a ``forward`` that
    returns ``(raw, prototypes)``."""

    model_type = ModelType.INSTANCE_SEGMENTATION

    def masks_for(self, protos: Any, rows: Any, in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> Any:
        return instance_masks(protos, rows[:, 6:], rows[:, :4], in_shape, orig_shape)
