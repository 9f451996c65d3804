"""Detections: boxes as parallel numpy arrays (xyxy, confidence, class id, class name)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import numpy as np

_Value = TypeVar("_Value")


@dataclasses.dataclass(frozen=True)
class Detections:
    """Boxes of one image, in original image pixels.

    ``xyxy`` is float32 ``(n, 4)``, ``confidence`` float32 ``(n,)``, ``class_id`` int64 ``(n,)`` and
    ``class_name`` an object array of str ``(n,)``; ``mask``, for instance segmentation, a bool ``(n, H, W)``
    array at the original image's resolution (``None`` for boxes only). Index with a boolean mask, an index
    array or a slice.

    ``mask_bounds``, optional with ``mask``, is int64 ``(n, 4)`` ``x1, y1, x2, y2`` (half-open, clipped to the
    image) outside of which mask ``i`` is all False: a promise from whoever made the masks (the YOLO predictor
    derives it from the box and the upsampling), not necessarily tight. Work on a mask (its extent, runs,
    outlines: ``exporters/codecs/instance_masks.py``) then looks at the bounds' pixels only, not the whole image:
    an instance covers a small part of it.

    Two optional per-instance columns, ``None`` where a model gives none: ``mask_score``, float32 ``(n,)``, the
    segmenter's own score of each mask (a box-prompted SAM's predicted IoU; ``confidence`` stays the detector's
    score, which the thresholds read), and ``prompt``, an object array of str ``(n,)``, the text prompt that scored
    each box (open-vocabulary detectors, where one label may have several prompts).
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_name: np.ndarray
    mask: np.ndarray | None = None
    mask_bounds: np.ndarray | None = None
    mask_score: np.ndarray | None = None
    prompt: np.ndarray | None = None
    # encodings of the masks the writers of one run share (see ``memo``); never compared, copied or pickled
    _memo: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        object.__setattr__(self, "xyxy", xyxy.reshape(0, 4) if xyxy.size == 0 else xyxy)
        object.__setattr__(self, "confidence", np.asarray(self.confidence, dtype=np.float32))
        object.__setattr__(self, "class_id", np.asarray(self.class_id, dtype=np.int64))
        object.__setattr__(self, "class_name", np.asarray(self.class_name, dtype=object))
        n = len(self.xyxy)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (n, 4), got {self.xyxy.shape}")
        for field in ("confidence", "class_id", "class_name"):
            arr = getattr(self, field)
            if arr.shape != (n,):
                raise ValueError(f"{field} must have shape ({n},) to match xyxy, got {arr.shape}")
        if self.mask is not None:
            object.__setattr__(self, "mask", np.asarray(self.mask, dtype=bool))
            if self.mask.ndim != 3 or len(self.mask) != n:
                raise ValueError(f"mask must have shape ({n}, H, W) to match xyxy, got {self.mask.shape}")
        if self.mask_bounds is not None:
            if self.mask is None:
                raise ValueError("mask_bounds without masks")
            bounds = np.asarray(self.mask_bounds, dtype=np.int64).reshape(-1, 4)
            if len(bounds) != n:
                raise ValueError(f"mask_bounds must have shape ({n}, 4) to match xyxy, got {bounds.shape}")
            object.__setattr__(self, "mask_bounds", bounds)
        if self.mask_score is not None:
            if self.mask is None:
                raise ValueError("mask_score without masks")
            self._set_column("mask_score", np.float32, n)
        if self.prompt is not None:
            self._set_column("prompt", object, n)

    def _set_column(self, field: str, dtype: type, n: int) -> None:
        column = np.asarray(getattr(self, field), dtype=dtype).reshape(-1)
        if len(column) != n:
            raise ValueError(f"{field} must have shape ({n},) to match xyxy, got {column.shape}")
        object.__setattr__(self, field, column)

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int64),
            class_name=np.zeros(0, object),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: np.ndarray | slice | list[int]) -> Detections:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            class_id=self.class_id[index],
            class_name=self.class_name[index],
            mask=None if self.mask is None else self.mask[index],
            mask_bounds=None if self.mask_bounds is None else self.mask_bounds[index],
            mask_score=None if self.mask_score is None else self.mask_score[index],
            prompt=None if self.prompt is None else self.prompt[index],
        )

    # pickles and copies leave the memo behind: it is a cache of this object's own masks, remade on demand
    def __getstate__(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name != "_memo"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _memo={})

    @property
    def area(self) -> np.ndarray:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def memo(self, key: str, compute: Callable[[], _Value]) -> _Value:
        """``compute()``, once per object and ``key``: what several writers of one run need from the masks (their
        runs, their outlines) is worked out by the first. It cannot go stale: the fields are frozen, and
        indexing or ``dataclasses.replace`` makes a new object with an empty memo. Keep values read-only."""
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = compute()
            return value
