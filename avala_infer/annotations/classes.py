"""Classifications: the classes of one whole image or text, best first, as parallel numpy arrays."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Classifications:
    """Class scores of one item, sorted by score, highest first.

    ``class_id`` int64 ``(k,)``, ``confidence`` float32 ``(k,)``, ``class_name`` object ``(k,)``.
    ``multi_label`` says how the scores were made: ``False`` softmax over all classes (they sum to 1 before
    filtering), ``True`` an independent sigmoid per class. Predictors return every class; the engine filters
    by label and threshold, then keeps the ``top_k`` best.
    """

    class_id: np.ndarray
    confidence: np.ndarray
    class_name: np.ndarray
    multi_label: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_id", np.asarray(self.class_id, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "confidence", np.asarray(self.confidence, dtype=np.float32).reshape(-1))
        object.__setattr__(self, "class_name", np.asarray(self.class_name, dtype=object).reshape(-1))
        n = len(self.class_id)
        if self.confidence.shape != (n,) or self.class_name.shape != (n,):
            raise ValueError(
                f"class_id, confidence and class_name must have one length, got "
                f"{n}, {len(self.confidence)}, {len(self.class_name)}"
            )

    @classmethod
    def of_arrays(
        cls, class_id: np.ndarray, confidence: np.ndarray, class_name: np.ndarray, multi_label: bool = False
    ) -> Classifications:
        """A Classifications of arrays already in its form (int64, float32 and object arrays of one length, 1-D),
        taken as they are: for the predictors and the filter, which make one per item on the GPU engine's
        postprocess thread (the checks cost ~1.5 µs an item there)."""
        made = object.__new__(cls)
        object.__setattr__(made, "class_id", class_id)
        object.__setattr__(made, "confidence", confidence)
        object.__setattr__(made, "class_name", class_name)
        object.__setattr__(made, "multi_label", multi_label)
        return made

    @classmethod
    def from_scores(cls, scores: np.ndarray, labels: tuple[str, ...], multi_label: bool = False) -> Classifications:
        """All classes of one item from a ``(num_classes,)`` score vector, sorted best first (stable)."""
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(labels):
            raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
        order = np.argsort(-scores, kind="stable")
        names = np.asarray(labels, dtype=object)
        return cls(order, scores[order], names[order] if len(order) else np.zeros(0, object), multi_label)

    @classmethod
    def empty(cls) -> Classifications:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, object))

    def __len__(self) -> int:
        return len(self.class_id)

    def __getitem__(self, index: np.ndarray | slice | list[int]) -> Classifications:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Classifications.of_arrays(
            self.class_id[index], self.confidence[index], self.class_name[index], self.multi_label
        )

    def top(self, k: int | None) -> Classifications:
        """The ``k`` best classes (all when ``k`` is ``None``)."""
        return self if k is None or k >= len(self) else self[:k]
