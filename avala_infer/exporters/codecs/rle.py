"""Run-length encoding of binary masks in COCO's layout (column-major runs, starting with a run of zeros).

``encode`` gives the uncompressed form (``{"size": [h, w], "counts": [int, ...]}``) with numpy alone;
``compress`` turns it into COCO's compressed string form and ``encode_compressed`` gives that form of masks, both
through pycocotools (the ``coco`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from avala_infer.errors import BackendUnavailableError
from avala_infer.exporters.codecs.extent import mask_extent


def encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of one ``(h, w)`` bool mask: ``{"size": [h, w], "counts": [int, ...]}``."""
    h, w = mask.shape
    return {"size": [h, w], "counts": counts(mask).tolist()}


def counts(mask: np.ndarray, extent: Sequence[int] | None = None) -> np.ndarray:
    """The run lengths of :func:`encode` as an int64 array (for writers that print or compress them at once).

    ``extent`` is the mask's ``x1, y1, x2, y2`` (:func:`~avala_infer.exporters.codecs.extent.mask_extent`, or
    ``instance_masks.extents``: found once, shared by every codec); without it the mask is scanned for it. The
    runs are found on the extent only: each column of the extent, framed by a zero above and below, gives its
    changes, placed back at their column-major index in the whole image. The zero frame stands for the empty rows
    around the extent; where the extent reaches the bottom of one column and the top of the next, the two changes
    it adds land on one index and cancel."""
    h, w = mask.shape
    if h * w == 0:
        return np.zeros(0, np.int64)
    mask = np.asarray(mask, dtype=bool)
    left, top, right, bottom = mask_extent(mask) if extent is None else (int(v) for v in extent)
    if right <= left or bottom <= top:
        return np.array([h * w], np.int64)
    crop = mask[top:bottom, left:right].view(np.uint8)
    if crop.strides[1] != 1:  # cv2 reads rows of contiguous pixels
        crop = np.ascontiguousarray(crop)
    # column-major: one row per image column, a zero before and after its pixels (cv2 transposes several times
    # faster than a numpy copy of ``.T``)
    framed = cv2.copyMakeBorder(cv2.transpose(crop), 0, 0, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flat = framed.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    column, row = np.divmod(changes, bottom - top + 2)
    edges = (left + column) * h + (top - 1 + row)
    if top == 0 and bottom == h:  # a column's end and the next one's start on one index: no change there
        same = np.flatnonzero(edges[1:] == edges[:-1])
        edges = np.delete(edges, np.concatenate((same, same + 1)))
    if len(edges) and edges[-1] == h * w:  # the last pixel is set: its run ends with the image, not at a change
        edges = edges[:-1]
    # a change at 0 (the first pixel is set) makes the zero-length first run COCO's layout starts with
    return np.diff(np.concatenate(([0], edges, [h * w]))).astype(np.int64, copy=False)


def decode(rle: dict) -> np.ndarray:
    """The bool mask of an uncompressed COCO RLE."""
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise ValueError(f"RLE counts add up to {flat.size}, not {h}x{w}")
    return flat.reshape((w, h)).T


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise BackendUnavailableError("COCO masks need pycocotools: pip install 'avala-infer[coco]'") from exc
    return mask_utils


def compress(uncompressed: dict) -> dict:
    """COCO compressed RLE (``counts`` as a str) of an uncompressed one (:func:`encode`; its counts may be the
    array :func:`counts` gives), through pycocotools.

    The same string pycocotools makes from the mask itself (its counts are :func:`encode`'s), from the runs
    alone: no whole-image copy of the mask in Fortran order."""
    h, w = uncompressed["size"]
    compressed = _mask_utils().frPyObjects(uncompressed, h, w)
    compressed["counts"] = compressed["counts"].decode("ascii")
    return compressed


def encode_compressed(masks: np.ndarray) -> list[dict]:
    """COCO compressed RLE (``counts`` as a str) of each of ``masks`` ``(n, h, w)``, through pycocotools."""
    mask_utils = _mask_utils()
    if len(masks) == 0:
        return []
    if masks.shape[1] * masks.shape[2]:
        return [compress({"size": list(mask.shape), "counts": counts(mask)}) for mask in masks]
    encoded = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)).astype(np.uint8)))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return encoded
