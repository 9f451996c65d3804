"""Detections: boxes as parallel numpy arrays (xyxy, confidence, class id, class name)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Detections:
    """Boxes of one image, in original image pixels.

    ``xyxy`` is float32 ``(n, 4)``, ``confidence`` float32 ``(n,)``, ``class_id`` int64 ``(n,)`` and
    ``class_name`` an object array of str ``(n,)``; ``mask``, for instance segmentation, a bool ``(n, H, W)``
    array at the original image's resolution (``None`` for boxes only). Index with a boolean mask, an index
    array or a slice.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_name: np.ndarray
    mask: np.ndarray | None = None

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
        )

    @property
    def area(self) -> np.ndarray:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]
