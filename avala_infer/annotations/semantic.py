"""SemanticMask: a class per pixel of one image, with the winning class's probability."""

from __future__ import annotations

import dataclasses

import numpy as np

UNLABELED = -1


@dataclasses.dataclass(frozen=True)
class Segment:
    """One class's pixels in a semantic mask."""

    class_id: int
    class_name: str
    mask: np.ndarray  # bool (H, W)
    area: int
    confidence: float  # mean probability over the class's pixels


@dataclasses.dataclass(frozen=True)
class SemanticMask:
    """``class_map`` int32 ``(H, W)`` at the original image's resolution: an index into ``labels`` or ``-1``
    (no class: below the confidence threshold, or a class the filter dropped). ``score_map`` float32 ``(H, W)``:
    the probability of the pixel's class (softmax over classes; for a one-channel model the sigmoid of its
    single class). ``labels`` names the ids.
    """

    class_map: np.ndarray
    score_map: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_map", np.asarray(self.class_map, dtype=np.int32))
        object.__setattr__(self, "score_map", np.asarray(self.score_map, dtype=np.float32))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.class_map.ndim != 2 or self.class_map.shape != self.score_map.shape:
            raise ValueError(
                f"class_map and score_map must be one (H, W) shape, got {self.class_map.shape} and "
                f"{self.score_map.shape}"
            )

    @classmethod
    def empty(cls) -> SemanticMask:
        return cls(np.full((0, 0), UNLABELED, np.int32), np.zeros((0, 0), np.float32), ())

    @property
    def shape(self) -> tuple[int, int]:
        return self.class_map.shape  # type: ignore[return-value]

    def present(self) -> np.ndarray:
        """Ids of the classes that own at least one pixel, ascending."""
        ids = np.unique(self.class_map)
        return ids[ids >= 0]

    def __len__(self) -> int:
        return len(self.present())

    def segments(self):
        """One :class:`Segment` per present class, by class id; computed lazily, one mask at a time."""
        for class_id in self.present():
            mask = self.class_map == class_id
            area = int(mask.sum())
            yield Segment(int(class_id), self.labels[class_id], mask, area, float(self.score_map[mask].mean()))
