"""Run-length encoding of binary masks in COCO's layout (column-major runs, starting with a run of zeros).

``encode`` gives the uncompressed form (``{"size": [h, w], "counts": [int, ...]}``) with numpy alone;
``encode_compressed`` gives COCO's compressed string form through pycocotools (the ``coco`` extra).
"""

from __future__ import annotations

import numpy as np

from avala_infer.errors import BackendUnavailableError


def encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of one ``(h, w)`` bool mask."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


def decode(rle: dict) -> np.ndarray:
    """The bool mask of an uncompressed COCO RLE."""
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise ValueError(f"RLE counts add up to {flat.size}, not {h}x{w}")
    return flat.reshape((w, h)).T


def encode_compressed(masks: np.ndarray) -> list[dict]:
    """COCO compressed RLE (``counts`` as a str) of each of ``masks`` ``(n, h, w)``, through pycocotools."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise BackendUnavailableError("COCO masks need pycocotools: pip install 'avala-infer[coco]'") from exc
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)).astype(np.uint8)))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return encoded
