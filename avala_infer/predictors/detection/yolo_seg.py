"""YOLO instance segmentation: masks from prototypes and per-box coefficients, on the model's device.

Mirrors ultralytics ``process_mask(..., upsample=True)`` (upsample the prototype mix to the letterboxed input,
binarise, crop to the box, drop instances whose mask is empty) and ``scale_masks`` (cut the padding away,
bilinear to the original size, > 0.5), so masks match the reference's ``Results.masks`` mapped to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from avala_infer.predictors.detection.yolo import YoloDetector
from avala_infer.types import ModelType

# bytes: what the float intermediates of one chunk of instance masks may take on top of the bool masks returned
MASK_MEMORY_BUDGET = 256 * 1024 * 1024
# bytes: the bool masks of a batch's images gathered on the device for one device-to-host copy (an image whose
# masks alone take more gets a copy of its own); a batch of typical photos fits in one
MASK_COPY_BUDGET = 256 * 1024 * 1024


def crop_to_boxes(masks: Any, boxes: Any) -> Any:
    """Zero every mask outside its box (``masks`` (n, H, W), ``boxes`` (n, 4) xyxy in the same pixels)."""
    import torch

    _, h, w = masks.shape
    x1, y1, x2, y2 = torch.chunk(boxes[:, :, None], 4, 1)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype)[None, None, :]
    rows = torch.arange(h, device=masks.device, dtype=x1.dtype)[None, :, None]
    return masks * ((cols >= x1) & (cols < x2)) * ((rows >= y1) & (rows < y2))


def instance_masks(
    protos: Any,
    coefficients: Any,
    boxes: Any,
    in_shape: tuple[int, int],
    orig_shape: tuple[int, int],
    out: tuple[Any, Any] | None = None,
) -> tuple[Any, Any]:
    """(bool masks (n, h, w) at the original resolution, which instances have a non-empty mask), written into
    ``out`` (a bool (n, h, w) and a bool (n,) tensor on the device) when given.

    The output is the only full-resolution array of all instances: the float upsampling runs a chunk of
    instances at a time, the chunk sized so its intermediates stay within ``MASK_MEMORY_BUDGET`` bytes (100
    instances on a 21 MP image once took ~8.5 GB of float32 on top of the 2 GB of bool masks). Each instance is
    upsampled exactly as before (bilinear is per channel), so the masks are the same bit for bit.
    """
    import torch
    import torch.nn.functional as F

    h, w = orig_shape
    n = len(coefficients)
    if out is None:
        out = (
            torch.empty((n, h, w), dtype=torch.bool, device=protos.device),
            torch.empty(n, dtype=torch.bool, device=protos.device),
        )
    masks, nonempty = out  # every chunk writes its own rows of both
    if n == 0:
        return masks, nonempty
    c, mh, mw = protos.shape
    mixed = (coefficients.float() @ protos.float().view(c, -1)).view(n, mh, mw)  # small: prototype resolution
    gain = min(in_shape[0] / h, in_shape[1] / w)
    content_h, content_w = max(round(h * gain), 1), max(round(w * gain), 1)
    top = round((in_shape[0] - content_h) / 2 - 0.1)
    left = round((in_shape[1] - content_w) / 2 - 0.1)
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


def copy_groups(sizes: Sequence[int], budget: int) -> list[range]:
    """Runs of consecutive images whose ``sizes`` (bytes) add up to at most ``budget``; an image larger than the
    budget is a run of its own, but for images of size 0 (no detections: they cost no copy) beside it."""
    groups, first, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total and size and total + size > budget:
            groups.append(range(first, i))
            first, total = i, 0
        total += size
    return [*groups, range(first, len(sizes))] if sizes else []


def masks_on_host(
    protos: Any,
    rows: Any,
    counts: Sequence[int],
    in_shape: tuple[int, int],
    orig_shapes: Sequence[tuple[int, int]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each image's (bool masks (n, h, w), which are non-empty (n,)) on the host, from the batch's prototypes
    ``protos`` (B, c, mh, mw) and NMS ``rows`` (image after image, ``counts[i]`` rows of image i).

    Consecutive images write their masks and flags into one flat device buffer of up to ``MASK_COPY_BUDGET``
    bytes, which comes to the host in one copy: a batch of photos reads its masks once, where a copy per image
    waited on the device once per image. Each image then gets arrays of its own (a copy on the host, here, on
    the postprocess thread), so that whoever drops an image's predictions frees that image's masks alone: with
    views of the group's copy, the thread consuming the predictions (the engine's main thread) freed the whole
    group (~100 MB for 64 photos) with its last image, ~100-150 µs an image of that thread's CPU on a 2-core
    host, where small frees cost it next to nothing."""
    import torch

    sizes = [n * (h * w + 1) for n, (h, w) in zip(counts, orig_shapes)]  # n masks of h x w, then n flags
    image_rows = rows.split(list(counts))
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for group in copy_groups(sizes, MASK_COPY_BUDGET):
        flat = torch.empty(sum(sizes[i] for i in group), dtype=torch.bool, device=protos.device)
        spans, offset = [], 0
        for i in group:
            (h, w), n = orig_shapes[i], counts[i]
            masks, flags = flat[offset : offset + n * h * w].view(n, h, w), flat[offset + n * h * w : offset + sizes[i]]
            if n:
                instance_masks(protos[i], image_rows[i][:, 6:], image_rows[i][:, :4], in_shape, (h, w), (masks, flags))
            spans.append((offset, offset + n * h * w, offset + sizes[i]))
            offset += sizes[i]
        host = flat.cpu().numpy() if offset else np.zeros(0, dtype=bool)  # the group's one copy (none if empty)
        for i, (start, flags_start, stop) in zip(group, spans):
            h, w = orig_shapes[i]
            results.append((host[start:flags_start].reshape(counts[i], h, w).copy(), host[flags_start:stop].copy()))
    return results


class YoloSegmenter(YoloDetector):
    """Boxes and instance masks; backends subclass it with loading, ``collate`` and a ``forward`` that
    returns ``(raw, prototypes)``."""

    model_type = ModelType.INSTANCE_SEGMENTATION

    masks_on_host = staticmethod(masks_on_host)  # the module's function: the hook YoloDetector.postprocess calls
