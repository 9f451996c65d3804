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
    """(bool masks (n, h, w) at the original resolution, which instances have a non-empty mask) of one image, from
    its prototypes ``protos`` (c, mh, mw), each instance's ``coefficients`` (n, c) and letterboxed ``boxes`` (n, 4);
    written into ``out`` (a bool (n, h, w) and a bool (n,) tensor on the device) when given.

    :func:`masks_into` for a batch of one (the batch's masks are made together, see there)."""
    import torch

    n = len(coefficients)
    h, w = orig_shape
    flat = torch.empty(n * (h * w + 1), dtype=torch.bool, device=protos.device)
    rows = torch.cat((boxes.to(coefficients.dtype), coefficients.new_zeros((n, 2)), coefficients), 1)
    masks_into(flat, protos[None], rows, [n], in_shape, [orig_shape])
    flags, masks = flat[:n], flat[n:].view(n, h, w)
    if out is None:
        return masks, flags
    out[0].copy_(masks)
    out[1].copy_(flags)
    return out


def masks_into(
    flat: Any,
    protos: Any,
    rows: Any,
    counts: Sequence[int],
    in_shape: tuple[int, int],
    orig_shapes: Sequence[tuple[int, int]],
) -> None:
    """Write a run of images' instance masks into the bool buffer ``flat``: first every instance's flag (whether its
    mask is non-empty: ultralytics drops those that are not), instance after instance, then each image's masks
    (n, h, w), image after image. ``protos`` (B, c, mh, mw) are the images' prototypes, ``rows`` their NMS rows
    (x1, y1, x2, y2, score, class, coefficients; ``counts[i]`` rows of image i, image after image).

    Mirrors ultralytics ``process_mask(..., upsample=True)`` and ``scale_masks`` per instance: the prototype mix
    (one matrix product per image, as ultralytics'), bilinear to the letterboxed input, > 0, cut to the box; then
    the content (the padding cut away) bilinear to the original size, > 0.5. Bilinear resizing is per channel, so
    doing the instances of many images in one call gives each the values it gets alone, bit for bit: the batch
    runs a few calls a chunk of instances (and one resize per run of instances whose images share a size) where it
    ran ~20 an image, which on a GPU were as many kernel launches from the postprocess thread.

    The float intermediates stay within ``MASK_MEMORY_BUDGET`` bytes: a chunk of instances at a time (100
    instances on a 21 MP image once took ~8.5 GB of float32 on top of the 2 GB of bool masks)."""
    import torch
    import torch.nn.functional as F

    total = sum(counts)
    if total == 0:
        return
    c, mh, mw = protos.shape[1:]
    image_rows = rows.split(list(counts))
    mixed = torch.cat(
        [(image_rows[i][:, 6:].float() @ protos[i].float().view(c, -1)) for i, n in enumerate(counts) if n]
    ).view(total, mh, mw)  # small: prototype resolution
    boxes = rows[:, :4]
    # each instance's image size, and where its mask starts in ``flat`` (an image's masks lie back to back, and
    # so do those of consecutive images of one size: one resize writes a run of them)
    shapes = [shape for shape, n in zip(orig_shapes, counts) for _ in range(n)]
    starts, offset = [], total
    for (h, w), n in zip(orig_shapes, counts):
        starts.extend(range(offset, offset + n * h * w, h * w))
        offset += n * h * w
    step = masks_per_chunk(in_shape, (max(h for h, _ in shapes), max(w for _, w in shapes)))
    for first in range(0, total, step):
        last = min(first + step, total)
        up = F.interpolate(mixed[None, first:last], in_shape, mode="bilinear")[0]
        binary = crop_to_boxes((up > 0).to(torch.uint8), boxes[first:last])
        del up
        torch.gt(binary.amax((-2, -1)), 0, out=flat[first:last])
        run = first
        while run < last:  # runs of instances whose images have one size
            h, w = shapes[run]
            stop = run + 1
            while stop < last and shapes[stop] == (h, w):
                stop += 1
            top, left, content_h, content_w = content_window(in_shape, (h, w))
            content = binary[run - first : stop - first, top : top + content_h, left : left + content_w][None].float()
            out = flat[starts[run] : starts[run] + (stop - run) * h * w].view(stop - run, h, w)
            torch.gt(F.interpolate(content, (h, w), mode="bilinear")[0], 0.5, out=out)
            del content
            run = stop


def content_window(in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an image's content in its letterboxed input (the padding around it cut)."""
    h, w = orig_shape
    gain = min(in_shape[0] / h, in_shape[1] / w)
    content_h, content_w = max(round(h * gain), 1), max(round(w * gain), 1)
    top = round((in_shape[0] - content_h) / 2 - 0.1)
    left = round((in_shape[1] - content_w) / 2 - 0.1)
    return top, left, content_h, content_w


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
    bytes (:func:`masks_into`), which comes to the host in one copy: a batch of photos reads its masks once, where
    a copy per image waited on the device once per image. Each image then gets arrays of its own (a copy on the
    host, here, on the postprocess thread), so that whoever drops an image's predictions frees that image's masks
    alone: with views of the group's copy, the thread consuming the predictions (the engine's main thread) freed
    the whole group (~100 MB for 64 photos) with its last image, ~100-150 µs an image of that thread's CPU on a
    2-core host, where small frees cost it next to nothing."""
    import torch

    sizes = [n * (h * w + 1) for n, (h, w) in zip(counts, orig_shapes)]  # n masks of h x w, and n flags
    bounds = np.cumsum([0, *counts]).tolist()  # image i's rows: bounds[i] to bounds[i + 1]
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for group in copy_groups(sizes, MASK_COPY_BUDGET):
        group_counts = [counts[i] for i in group]
        flat = torch.empty(sum(sizes[i] for i in group), dtype=torch.bool, device=protos.device)
        if len(flat):
            masks_into(
                flat,
                protos[group.start : group.stop],
                rows[bounds[group.start] : bounds[group.stop]],
                group_counts,
                in_shape,
                orig_shapes[group.start : group.stop],
            )
        host = flat.cpu().numpy() if len(flat) else np.zeros(0, dtype=bool)  # the group's one copy (none if empty)
        flag, mask = 0, sum(group_counts)  # the flags first, then each image's masks
        for i, n in zip(group, group_counts):
            h, w = orig_shapes[i]
            results.append((host[mask : mask + n * h * w].reshape(n, h, w).copy(), host[flag : flag + n].copy()))
            flag, mask = flag + n, mask + n * h * w
    return results


class YoloSegmenter(YoloDetector):
    """Boxes and instance masks; backends subclass it with loading, ``collate`` and a ``forward`` that
    returns ``(raw, prototypes)``."""

    model_type = ModelType.INSTANCE_SEGMENTATION

    masks_on_host = staticmethod(masks_on_host)  # the module's function: the hook YoloDetector.postprocess calls
