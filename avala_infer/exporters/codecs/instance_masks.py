"""The encodings of a :class:`Detections`' instance masks that writers share, worked out once per object.

A run that writes several formats (``--format coco,yolo,labelstudio``) needs the same runs and outlines in each;
they are kept in the detections' memo (``Detections.memo``: frozen, so it cannot go stale), read-only. Each mask
is worked on inside its extent (:func:`extents`, found inside the predictor's ``mask_bounds``), so
what a mask costs follows the instance's size, not the image's; the masks of an item are shared out over
``mask_pool``'s threads.
"""

from __future__ import annotations

import numpy as np

from avala_infer.annotations import Detections
from avala_infer.exporters.codecs import rle
from avala_infer.exporters.codecs.extent import mask_extent
from avala_infer.exporters.codecs.mask_pool import map_masks
from avala_infer.exporters.codecs.polygons import mask_to_polygons

Outlines = tuple[list[np.ndarray], bool]  # mask_to_polygons: outer contours, whether the mask has holes


def runs(detections: Detections) -> list[np.ndarray]:
    """Each mask's COCO RLE run lengths (``rle.counts``), read-only."""
    return detections.memo("coco_runs", lambda: map_masks(_runs, _with_extents(detections)))


def outlines(detections: Detections) -> list[Outlines]:
    """Each mask's ``mask_to_polygons``, its arrays read-only."""
    return detections.memo("outlines", lambda: map_masks(_outlines, _with_extents(detections)))


def extents(detections: Detections) -> list[tuple[int, int, int, int]]:
    """Each mask's ``x1, y1, x2, y2`` (``mask_extent``), looked for inside its ``mask_bounds`` when it has any."""
    if detections.mask is None:
        return []
    bounds = detections.mask_bounds.tolist() if detections.mask_bounds is not None else [None] * len(detections)
    return detections.memo("extents", lambda: [mask_extent(m, b) for m, b in zip(detections.mask, bounds)])


def _with_extents(detections: Detections) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    return list(zip(detections.mask, extents(detections))) if detections.mask is not None else []


def _runs(mask_and_extent: tuple[np.ndarray, tuple[int, int, int, int]]) -> np.ndarray:
    counts = rle.counts(*mask_and_extent)
    counts.flags.writeable = False
    return counts


def _outlines(mask_and_extent: tuple[np.ndarray, tuple[int, int, int, int]]) -> Outlines:
    polygons, has_holes = mask_to_polygons(*mask_and_extent)
    for polygon in polygons:
        polygon.flags.writeable = False
    return polygons, has_holes
