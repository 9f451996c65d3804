"""The extent of a binary mask: the rectangle that holds its set pixels (an instance covers a small part of its
image, so the codecs work on that rectangle and treat the zeros around it as arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def mask_extent(mask: np.ndarray, bounds: Sequence[int] | None = None) -> tuple[int, int, int, int]:
    """``x1, y1, x2, y2`` (half-open) of the set pixels of a bool ``(h, w)`` mask; ``0, 0, 0, 0`` if none is set.

    ``bounds`` (``x1, y1, x2, y2``, as ``Detections.mask_bounds``) says where the set pixels can be: only those are
    looked at; without it, the whole mask. ``cv2.boundingRect`` of a one-channel image is the rectangle of its
    non-zero pixels, found about twice as fast as numpy's ``any`` over rows, then columns."""
    left, top = (0, 0) if bounds is None else (int(bounds[0]), int(bounds[1]))
    window = mask if bounds is None else mask[top : int(bounds[3]), left : int(bounds[2])]
    window = window.view(np.uint8) if window.dtype == bool else (window != 0).view(np.uint8)
    if window.size == 0:
        return 0, 0, 0, 0
    if window.strides[1] != 1:  # cv2 reads rows of contiguous pixels
        window = np.ascontiguousarray(window)
    x, y, w, h = cv2.boundingRect(window)
    if not w:
        return 0, 0, 0, 0
    return left + x, top + y, left + x + w, top + y + h
