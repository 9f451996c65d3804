"""Entities: named-entity spans of one text, as parallel numpy arrays with character offsets."""

from __future__ import annotations

import dataclasses

import numpy as np

_FIELDS = ("start", "end", "confidence", "class_id", "class_name", "word", "tag")


@dataclasses.dataclass(frozen=True)
class Entities:
    """Spans in one text, in text order.

    ``start``/``end`` are character offsets into the original text (``text[start:end]`` is the span),
    ``confidence`` float32, ``class_id`` the entity type's index into the model's entity types and
    ``class_name`` its name (``PER``, ``LOC``...). ``word`` is the tokenizer's rendering of the span (what the
    transformers pipeline calls ``word``; lower-case for an uncased tokenizer). ``tag`` is the token's IOB tag
    (``B-PER``) with aggregation ``none``, where every span is one token, and ``None`` for grouped spans.
    """

    start: np.ndarray
    end: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_name: np.ndarray
    word: np.ndarray
    tag: np.ndarray

    def __post_init__(self) -> None:
        for field, dtype in zip(_FIELDS, (np.int64, np.int64, np.float32, np.int64, object, object, object)):
            object.__setattr__(self, field, np.asarray(getattr(self, field), dtype=dtype).reshape(-1))
        n = len(self.start)
        lengths = {field: len(getattr(self, field)) for field in _FIELDS}
        if set(lengths.values()) != {n} and n + sum(lengths.values()):
            raise ValueError(f"entity arrays must have one length, got {lengths}")

    @classmethod
    def from_records(cls, records: list[dict]) -> Entities:
        """From dicts with start, end, score, class_id, label, word and (optionally) tag."""
        if not records:
            return cls.empty()
        return cls(
            start=[r["start"] for r in records],
            end=[r["end"] for r in records],
            confidence=[r["score"] for r in records],
            class_id=[r["class_id"] for r in records],
            class_name=[r["label"] for r in records],
            word=[r["word"] for r in records],
            tag=[r.get("tag") for r in records],
        )

    @classmethod
    def empty(cls) -> Entities:
        dtypes = (np.int64, np.int64, np.float32, np.int64, object, object, object)
        return cls(*(np.zeros(0, dtype) for dtype in dtypes))

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, index: np.ndarray | slice | list[int]) -> Entities:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Entities(*(getattr(self, field)[index] for field in _FIELDS))

    def spans(self, text: str) -> list[str]:
        """The spans' surface strings in ``text``."""
        return [text[s:e] for s, e in zip(self.start, self.end)]
