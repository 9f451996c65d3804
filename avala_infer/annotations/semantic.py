"""SemanticMask: a class per pixel of one image, with the winning class's probability."""

from __future__ import annotations

import dataclasses
import functools

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

    @functools.cached_property
    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present class ids ascending, their pixel areas, their mean scores), in one pass over the map."""
        flat = self.class_map.reshape(-1) + 1  # 0 = unlabeled
        size = len(self.labels) + 1
        areas = np.bincount(flat, minlength=size)[1:]
        sums = np.bincount(flat, weights=self.score_map.reshape(-1), minlength=size)[1:]
        ids = np.flatnonzero(areas)
        return ids, areas[ids], (sums[ids] / areas[ids]).astype(np.float32)

    def present(self) -> np.ndarray:
        """Ids of the classes that own at least one pixel, ascending."""
        return self._stats[0]

    @property
    def class_id(self) -> np.ndarray:
        """Present class ids (one per segment), as the other result types have."""
        return self._stats[0]

    @property
    def class_name(self) -> np.ndarray:
        return np.asarray([self.labels[i] for i in self._stats[0]], dtype=object)

    @property
    def confidence(self) -> np.ndarray:
        """Mean probability of each present class over its pixels."""
        return self._stats[2]

    @property
    def area(self) -> np.ndarray:
        """Pixels of each present class."""
        return self._stats[1]

    def __len__(self) -> int:
        return len(self._stats[0])

    def segments(self):
        """One :class:`Segment` per present class, by class id; masks made lazily, one at a time."""
        for class_id, area, score in zip(*self._stats):
            yield Segment(int(class_id), self.labels[class_id], self.class_map == class_id, int(area), float(score))
