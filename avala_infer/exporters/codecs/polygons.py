"""Binary masks to polygons (OpenCV contours), for the formats that want outlines (COCO polygons, YOLO-seg)."""

from __future__ import annotations

import cv2
import numpy as np


def mask_to_polygons(mask: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """(outer contours as ``(k, 2)`` float arrays of x, y pixels, whether the mask has holes).

    A polygon cannot hold a hole, so callers fall back to RLE when ``has_holes``. Contours of fewer than three
    points (single pixels, lines) are dropped.
    """
    # traced on the mask's extent plus a 1-pixel margin (where the image has one), with the points shifted back:
    # the same outlines in the same order as on the whole image (tracing sees only neighbours, and the margin
    # keeps the crop's edge as empty as the image around it), at the cost of the extent, not the image
    rows = np.flatnonzero(mask.any(1))
    if not len(rows):
        return [], False
    top, bottom = max(int(rows[0]) - 1, 0), int(rows[-1]) + 2
    cols = np.flatnonzero(mask[top:bottom].any(0))
    left, right = max(int(cols[0]) - 1, 0), int(cols[-1]) + 2
    crop = mask[top:bottom, left:right].astype(np.uint8)
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(left, top))
    if hierarchy is None:
        return [], False
    parents = hierarchy[0][:, 3]
    outer = [c.reshape(-1, 2).astype(np.float32) for c, p in zip(contours, parents) if p < 0 and len(c) >= 3]
    return outer, bool((parents >= 0).any())


def largest_polygon(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour with the largest area, or ``None`` for an empty mask (YOLO-seg keeps one per box)."""
    polygons, _ = mask_to_polygons(mask)
    if not polygons:
        return None
    return max(polygons, key=lambda p: cv2.contourArea(p))
