"""YOLO instance segmentation: masks from prototypes and per-box coefficients, on the model's device.

Mirrors ultralytics ``process_mask(..., upsample=True)`` (upsample the prototype mix to the letterboxed input,
binarise, crop to the box, drop instances whose mask is empty) and ``scale_masks`` (cut the padding away,
bilinear to the original size, > 0.5), so masks match the reference's ``Results.masks`` mapped to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from avala_infer.predictors.detection.yolo import YoloDetector, content_box
from avala_infer.predictors.torch_runtime import queued_to_device
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
    rows = torch.cat((boxes.float(), boxes.new_zeros((n, 2), dtype=torch.float32), coefficients.float()), 1)
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
    starts = mask_starts(counts, orig_shapes).tolist()
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
            top, left, content_h, content_w = content_box(in_shape, (h, w))
            content = binary[run - first : stop - first, top : top + content_h, left : left + content_w][None].float()
            out = flat[starts[run] : starts[run] + (stop - run) * h * w].view(stop - run, h, w)
            torch.gt(F.interpolate(content, (h, w), mode="bilinear")[0], 0.5, out=out)
            del content
            run = stop


def mask_starts(counts: Sequence[int], orig_shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Where each instance's mask starts in a :func:`masks_into` buffer (int64, instance after instance): after the
    ``sum(counts)`` flags, image i's ``counts[i]`` masks of its size, image after image."""
    sizes = np.repeat([h * w for h, w in orig_shapes], counts).astype(np.int64)
    return sum(counts) + np.cumsum(sizes) - sizes


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
    bounds: np.ndarray | None = None,
    crops: bool | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each image's (bool masks (n, h, w), which are non-empty (n,)) on the host, from the batch's prototypes
    ``protos`` (B, c, mh, mw) and NMS ``rows`` (image after image, ``counts[i]`` rows of image i).

    Consecutive images write their masks and flags into one flat device buffer of up to ``MASK_COPY_BUDGET``
    bytes (:func:`masks_into`), which comes to the host in one copy: a batch of photos reads its masks once, where
    a copy per image waited on the device once per image. Each image then gets arrays of its own (made here, on
    the postprocess thread), so that whoever drops an image's predictions frees that image's masks alone: with
    views of the group's copy, the thread consuming the predictions (the engine's main thread) freed the whole
    group (~100 MB for 64 photos) with its last image, ~100-150 µs an image of that thread's CPU on a 2-core
    host, where small frees cost it next to nothing.

    ``crops`` (the default on a GPU, given ``bounds``, each row's ``mask_bounds``): only the pixels inside each
    mask's bounds cross to the host (:func:`crop_pixels`), and each image's masks are zeros with those pixels put
    back: the same arrays. An instance covers a small part of its image, so the copy, the host's pageable buffer
    and its page faults shrink: 12.5 MB instead of 93.4 MB for 64 coco128 images with yolo11n-seg (the bounds
    hold more than a mask's extent). On a CPU the buffer is host memory already: each image's masks are copied
    out whole (the gather would cost a CPU ~16 ms an image)."""
    import torch

    if crops is None:
        crops = bounds is not None and protos.device.type != "cpu"
    if crops and bounds is None:
        raise ValueError("crops need each row's mask bounds")
    sizes = [n * (h * w + 1) for n, (h, w) in zip(counts, orig_shapes)]  # n masks of h x w, and n flags
    first_rows = np.cumsum([0, *counts]).tolist()  # image i's rows: first_rows[i] to first_rows[i + 1]
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for group in copy_groups(sizes, MASK_COPY_BUDGET):
        group_counts = [counts[i] for i in group]
        group_shapes = orig_shapes[group.start : group.stop]
        group_rows = slice(first_rows[group.start], first_rows[group.stop])
        flat = torch.empty(sum(sizes[i] for i in group), dtype=torch.bool, device=protos.device)
        if not len(flat):
            results.extend((np.zeros((0, h, w), bool), np.zeros(0, bool)) for h, w in group_shapes)
            continue
        masks_into(flat, protos[group.start : group.stop], rows[group_rows], group_counts, in_shape, group_shapes)
        if crops:
            results.extend(_from_crops(flat, group_counts, group_shapes, bounds[group_rows]))
            continue
        host = flat.cpu().numpy()  # the group's one copy
        flag, mask = 0, sum(group_counts)  # the flags first, then each image's masks
        for n, (h, w) in zip(group_counts, group_shapes):
            results.append((host[mask : mask + n * h * w].reshape(n, h, w).copy(), host[flag : flag + n].copy()))
            flag, mask = flag + n, mask + n * h * w
    return results


def crop_pixels(flat: Any, starts: np.ndarray, widths: np.ndarray, bounds: np.ndarray) -> Any:
    """The flags (``flat``'s first ``len(bounds)`` values) and then, instance after instance, the pixels inside each
    mask's ``bounds`` (x1, y1, x2, y2, half-open), row by row: one gather on ``flat``'s device, its indices worked
    out there too (a few calls a group, whatever its instances; no index array crosses from the host).
    ``starts[k]`` is where mask k starts in ``flat``, ``widths[k]`` its image's width."""
    import torch

    n = len(bounds)
    crop_w = np.maximum(bounds[:, 2] - bounds[:, 0], 0)
    crop_h = np.maximum(bounds[:, 3] - bounds[:, 1], 0)
    pixels = crop_w * crop_h
    total = int(pixels.sum())
    first_pixel = starts + bounds[:, 1] * widths + bounds[:, 0]  # each crop's top-left in flat
    # per instance: its top-left, its image's width, its crop's width and where its pixels start in the output
    params = np.stack((first_pixel, widths, np.maximum(crop_w, 1), np.cumsum(pixels) - pixels + n), 1)
    params = queued_to_device(
        torch.as_tensor(np.concatenate((params.reshape(-1), pixels)).astype(np.int64)), flat.device
    )
    params, pixels = params[: 4 * n].view(n, 4), params[4 * n :]
    index = torch.arange(n + total, device=flat.device)
    instance = torch.repeat_interleave(torch.arange(n, device=flat.device), pixels, output_size=total)
    mine = params[instance]
    local = index[n:] - mine[:, 3]  # the pixel's place in its crop, row by row
    row = torch.div(local, mine[:, 2], rounding_mode="floor")
    index[n:] = mine[:, 0] + row * mine[:, 1] + (local - row * mine[:, 2])
    return flat[index]


def _from_crops(
    flat: Any, counts: Sequence[int], shapes: Sequence[tuple[int, int]], bounds: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each image's (masks, flags) of a group (``masks_into``'s layout in ``flat``), from one copy of the flags and
    the pixels inside each mask's bounds."""
    n = sum(counts)
    widths = np.repeat([w for _, w in shapes], counts).astype(np.int64)
    bounds = np.asarray(bounds, np.int64).reshape(-1, 4)
    host = crop_pixels(flat, mask_starts(counts, shapes), widths, bounds).cpu().numpy()  # the group's one copy
    flags, offset, k = host[:n], n, 0
    results = []
    for count, (h, w) in zip(counts, shapes):
        masks = np.zeros((count, h, w), bool)
        for j in range(count):
            x1, y1, x2, y2 = bounds[k + j].tolist()
            if x2 > x1 and y2 > y1:
                size = (x2 - x1) * (y2 - y1)
                masks[j, y1:y2, x1:x2] = host[offset : offset + size].reshape(y2 - y1, x2 - x1)
                offset += size
        results.append((masks, flags[k : k + count].copy()))
        k += count
    return results


class YoloSegmenter(YoloDetector):
    """Boxes and instance masks; backends subclass it with loading, ``collate`` and a ``forward`` that
    returns ``(raw, prototypes)``."""

    model_type = ModelType.INSTANCE_SEGMENTATION

    masks_on_host = staticmethod(masks_on_host)  # the module's function: the hook YoloDetector.postprocess calls
