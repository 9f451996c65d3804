"""YOLO instance segmentation: masks from prototypes and per-box coefficients, on the model's device.

Mirrors ultralytics ``process_mask(..., upsample=True)`` (upsample the prototype mix to the letterboxed input,
binarise, crop to the box, drop instances whose mask is empty) and ``scale_masks`` (cut the padding away,
bilinear to the original size, > 0.5), so masks match the reference's ``Results.masks`` mapped to the image.
"""

from __future__ import annotations

from typing import Any

from avala_infer.predictors.detection.yolo import YoloDetector
from avala_infer.types import ModelType

# bytes: what the float intermediates of one chunk of instance masks may take on top of the bool masks returned
MASK_MEMORY_BUDGET = 256 * 1024 * 1024


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
    """(bool masks (n, h, w) at the original resolution, which instances have a non-empty mask).

    The output is the only full-resolution array of all instances: the float upsampling runs a chunk of
    instances at a time, the chunk sized so its intermediates stay within ``MASK_MEMORY_BUDGET`` bytes (100
    instances on a 21 MP image once took ~8.5 GB of float32 on top of the 2 GB of bool masks). Each instance is
    upsampled exactly as before (bilinear is per channel), so the masks are the same bit for bit.
    """
    import torch
    import torch.nn.functional as F

    h, w = orig_shape
    n = len(coefficients)
    masks = torch.empty((n, h, w), dtype=torch.bool, device=protos.device)  # every chunk writes its own
    if n == 0:
        return masks, torch.zeros(0, dtype=torch.bool, device=protos.device)
    c, mh, mw = protos.shape
    mixed = (coefficients.float() @ protos.float().view(c, -1)).view(n, mh, mw)  # small: prototype resolution
    gain = min(in_shape[0] / h, in_shape[1] / w)
    content_h, content_w = max(round(h * gain), 1), max(round(w * gain), 1)
    top = round((in_shape[0] - content_h) / 2 - 0.1)
    left = round((in_shape[1] - content_w) / 2 - 0.1)
    nonempty = torch.zeros(n, dtype=torch.bool, device=protos.device)
    step = masks_per_chunk(in_shape, orig_shape)
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        up = F.interpolate(mixed[None, chunk], in_shape, mode="bilinear")[0]
        binary = crop_to_boxes((up > 0).to(torch.uint8), boxes[chunk])
        del up
        nonempty[chunk] = binary.amax((-2, -1)) > 0
        content = binary[:, top : top + content_h, left : left + content_w][None].float()
        del binary
        torch.gt(F.interpolate(content, (h, w), mode="bilinear")[0], 0.5, out=masks[chunk])
    return masks, nonempty


def masks_per_chunk(in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> int:
    """How many instances one chunk of ``instance_masks`` upsamples within ``MASK_MEMORY_BUDGET`` (at least one).

    Per instance: the float32 upsampled mask at the original size (4 bytes a pixel), and at the letterboxed
    size the float32 mix, its uint8 binary, the box crop's temporaries and the float32 content (~16 bytes a
    pixel, generously)."""
    per_instance = 4 * orig_shape[0] * orig_shape[1] + 16 * in_shape[0] * in_shape[1]
    return max(1, MASK_MEMORY_BUDGET // per_instance)


class YoloSegmenter(YoloDetector):
    """Boxes and instance masks; backends subclass it with loading, ``collate`` and a ``forward`` that
    returns ``(raw, prototypes)``."""

    model_type = ModelType.INSTANCE_SEGMENTATION

    def masks_for(self, protos: Any, rows: Any, in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> Any:
        return instance_masks(protos, rows[:, 6:], rows[:, :4], in_shape, orig_shape)
