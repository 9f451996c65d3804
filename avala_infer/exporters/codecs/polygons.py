"""Binary masks to polygons (OpenCV contours), for the formats that want outlines (COCO polygons, YOLO-seg)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from avala_infer.exporters.codecs.extent import mask_extent


def mask_to_polygons(mask: np.ndarray, extent: Sequence[int] | None = None) -> tuple[list[np.ndarray], bool]:
    """(outer contours as ``(k, 2)`` float arrays of x, y pixels, whether the mask has holes).

    A polygon cannot hold a hole, so callers fall back to RLE when ``has_holes``. Contours of fewer than three
    points (single pixels, lines) are dropped. ``extent`` is the mask's ``x1, y1, x2, y2`` when the caller knows
    it (``instance_masks.extents``); without it the mask is scanned for it.
    """
    # traced on the mask's extent plus a 1-pixel margin (where the image has one), with the points shifted back:
    # the same outlines in the same order as on the whole image (tracing sees only neighbours, and the margin
    # keeps the crop's edge as empty as the image around it), at the cost of the extent, not the image
    x1, y1, x2, y2 = mask_extent(mask) if extent is None else (int(v) for v in extent)
    if x2 <= x1 or y2 <= y1:
        return [], False
    top, left = max(y1 - 1, 0), max(x1 - 1, 0)
    crop = mask[top : y2 + 1, left : x2 + 1]
    # a uint8 view, not a copy: findContours leaves its input alone (OpenCV >= 3.2) and reads 0 / 1 as bool does
    crop = crop.view(np.uint8) if crop.dtype == bool else crop.astype(np.uint8)
    if crop.strides[1] != 1:  # cv2 reads rows of contiguous pixels
        crop = np.ascontiguousarray(crop)
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(left, top))
    if hierarchy is None:
        return [], False
    parents = hierarchy[0][:, 3]
    outer = [c.reshape(-1, 2).astype(np.float32) for c, p in zip(contours, parents) if p < 0 and len(c) >= 3]
    return outer, bool((parents >= 0).any())


def largest(polygons: Sequence[np.ndarray]) -> np.ndarray | None:
    """The polygon of ``polygons`` with the largest area (the first of equals), or ``None`` if there are none."""
    if not polygons:
        return None
    return max(polygons, key=lambda p: cv2.contourArea(p))


def largest_polygon(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour with the largest area, or ``None`` for an empty mask (YOLO-seg keeps one per box)."""
    return largest(mask_to_polygons(mask)[0])
