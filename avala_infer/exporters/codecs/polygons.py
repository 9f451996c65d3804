"""Binary masks to polygons (OpenCV contours), for the formats that want outlines (COCO polygons, YOLO-seg)."""

from __future__ import annotations

import cv2
import numpy as np


def mask_to_polygons(mask: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """(outer contours as ``(k, 2)`` float arrays of x, y pixels, whether the mask has holes).

    A polygon cannot hold a hole, so callers fall back to RLE when ``has_holes``. Contours of fewer than three
    points (single pixels, lines) are dropped.
    """
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
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
