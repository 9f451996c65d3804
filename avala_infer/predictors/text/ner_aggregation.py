"""Token scores into entity spans, as transformers' ``TokenClassificationPipeline`` makes them, with arrays.

The five ``aggregation`` strategies of the pipeline (``none``, ``simple``, ``first``, ``average``, ``max``)
are mirrored step for step (``gather_pre_entities``, ``aggregate_words``, ``group_entities``,
``group_sub_entities``): the same labels, character offsets, scores and ``word`` strings, but computed over a
whole text at once with numpy instead of one dict per token. Spans tagged ``O`` are dropped, as the
pipeline's default ``ignore_labels`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from avala_infer.types import AGGREGATIONS

IGNORED_LABELS = ("O",)
STRATEGIES = AGGREGATIONS


def _bio(label: str) -> tuple[bool, str]:
    """``(is a B- tag, the tag's type)`` as the pipeline's ``get_tag`` reads a label."""
    if label.startswith("B-"):
        return True, label[2:]
    if label.startswith("I-"):
        return False, label[2:]
    return False, label


@dataclasses.dataclass(frozen=True)
class TagScheme:
    """What each of a model's labels (``B-PER``, ``I-PER``, ``O``...) means for grouping.

    ``types`` are the entity types in the order their first tag appears in the labels (``O`` left out);
    ``type_of[label_id]`` is the label's type index, -1 for ignored labels; ``begins`` marks ``B-`` labels;
    ``group_key`` codes the type a label continues (labels with equal codes may join one span);
    ``ignored`` marks the labels whose tokens are never entities by themselves (``O``).
    """

    labels: tuple[str, ...]
    types: tuple[str, ...]
    type_of: np.ndarray
    ignored: np.ndarray
    begins: np.ndarray
    group_key: np.ndarray

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> TagScheme:
        labels = tuple(labels)
        names = [label.split("-", 1)[-1] for label in labels]  # the pipeline's entity_group name
        types = tuple(dict.fromkeys(name for name in names if name not in IGNORED_LABELS))
        index = {name: i for i, name in enumerate(types)}
        bio = [_bio(label) for label in labels]
        keys = {key: i for i, key in enumerate(dict.fromkeys(key for _, key in bio))}
        return cls(
            labels=labels,
            types=types,
            type_of=np.array([index.get(name, -1) for name in names], dtype=np.int64),
            ignored=np.array([label in IGNORED_LABELS for label in labels], dtype=bool),
            begins=np.array([b for b, _ in bio], dtype=bool),
            group_key=np.array([keys[key] for _, key in bio], dtype=np.int64),
        )


@dataclasses.dataclass(frozen=True)
class PreEntities:
    """The non-special tokens of one text, as the pipeline's ``gather_pre_entities`` sees them."""

    position: np.ndarray  # index of the token among the text's content tokens
    words: list[str]  # token strings; the text's own characters for unknown tokens
    start: np.ndarray
    end: np.ndarray
    is_subword: np.ndarray


def gather_pre_entities(
    text: str,
    tokens: Sequence[str],
    ids: np.ndarray,
    offsets: np.ndarray,
    special: np.ndarray,
    *,
    word_aware: bool,
    unk_id: int | None,
) -> PreEntities:
    """Tokens that can be part of an entity, and whether each continues the word before it.

    ``word_aware``: the tokenizer marks word pieces (WordPiece's ``##``), so a token is a sub-word when its
    string is not as long as its span in the text; otherwise the pipeline's heuristic: a token that does not
    start the text and touches no space on its left.
    """
    keep = np.flatnonzero(~special)
    start = offsets[keep, 0]
    end = offsets[keep, 1]
    words = [tokens[i] for i in keep]
    if word_aware:
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        is_subword = lengths != end - start
    else:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        space = np.append(codes == 32, False)  # index -1 (start 0) reads the appended False
        is_subword = (start > 0) & ~space[start - 1] & ~space[np.minimum(start, len(codes))]
    if unk_id is not None:
        unknown = np.flatnonzero(ids[keep] == unk_id)
        for i in unknown:
            words[i] = text[start[i] : end[i]]
        is_subword[unknown] = False
    return PreEntities(keep, words, start, end, is_subword)


@dataclasses.dataclass(frozen=True)
class Spans:
    """Entity spans of one text as arrays: the :class:`~avala_infer.annotations.Entities` fields less names."""

    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    type_id: np.ndarray
    word: list[str]
    tag: list[str | None]


def aggregate(
    scores: np.ndarray,
    pre: PreEntities,
    scheme: TagScheme,
    strategy: str,
    decode: Callable[[list[str]], str],
) -> Spans:
    """Entity spans from per-token class probabilities ``scores`` (``(content tokens, labels)``).

    ``decode`` joins token strings into text (the tokenizer's ``convert_tokens_to_string``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"aggregation must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    token_scores = scores[pre.position]
    if strategy in ("none", "simple"):
        units = _Units.of_tokens(token_scores, pre)
    else:
        units = _Units.of_words(token_scores, pre, strategy, decode)
    if strategy == "none":
        keep = np.flatnonzero(~scheme.ignored[units.label] & (scheme.type_of[units.label] >= 0))
        return Spans(
            start=units.start[keep],
            end=units.end[keep],
            score=units.score[keep],
            type_id=scheme.type_of[units.label[keep]],
            word=[units.word(i) for i in keep],
            tag=[scheme.labels[units.label[i]] for i in keep],
        )
    return _group(units, scheme, decode)


@dataclasses.dataclass
class _Units:
    """What ``group_entities`` groups: tokens (``simple``) or words (``first``/``average``/``max``)."""

    label: np.ndarray
    score: np.ndarray
    start: np.ndarray
    end: np.ndarray
    word: Callable[[int], str]

    @classmethod
    def of_tokens(cls, token_scores: np.ndarray, pre: PreEntities) -> _Units:
        label = token_scores.argmax(-1) if len(token_scores) else np.zeros(0, np.int64)
        score = np.take_along_axis(token_scores, label[:, None], -1)[:, 0] if len(label) else np.zeros(0, np.float32)
        return cls(label, score, pre.start, pre.end, lambda i: pre.words[i])

    @classmethod
    def of_words(
        cls, token_scores: np.ndarray, pre: PreEntities, strategy: str, decode: Callable[[list[str]], str]
    ) -> _Units:
        n = len(token_scores)
        if n == 0:
            empty = np.zeros(0, np.int64)
            return cls(empty, np.zeros(0, np.float32), empty, empty, lambda i: "")
        first = np.flatnonzero(np.append(True, ~pre.is_subword[1:]))  # each word's first token
        last = np.append(first[1:], n) - 1
        if strategy == "first":
            vectors = token_scores[first]
        elif strategy == "average":
            vectors = np.add.reduceat(token_scores, first, axis=0) / np.diff(np.append(first, n))[:, None]
        else:  # max: the token whose best score is highest (the first one on ties)
            best = token_scores.max(-1)
            starts_word = np.zeros(n, dtype=bool)
            starts_word[first] = True
            word_of = np.cumsum(starts_word) - 1
            hits = np.flatnonzero(best == np.maximum.reduceat(best, first)[word_of])
            chosen = hits[np.unique(word_of[hits], return_index=True)[1]]
            vectors = token_scores[chosen]
        label = vectors.argmax(-1)
        score = np.take_along_axis(vectors, label[:, None], -1)[:, 0]

        def word(i: int) -> str:
            return decode(pre.words[first[i] : last[i] + 1])

        return cls(label, score, pre.start[first], pre.end[last], word)


def _group(units: _Units, scheme: TagScheme, decode: Callable[[list[str]], str]) -> Spans:
    """``group_entities``: adjacent units of one type join unless a unit is a ``B-`` tag; ``O`` spans dropped."""
    n = len(units.label)
    if n == 0:
        return _empty_spans()
    key = scheme.group_key[units.label]
    new = np.ones(n, dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | scheme.begins[units.label[1:]]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:], n) - 1
    type_id = scheme.type_of[units.label[firsts]]
    mean = np.add.reduceat(units.score.astype(np.float64), firsts) / (lasts - firsts + 1)
    keep = np.flatnonzero(type_id >= 0)
    words = [decode([units.word(i) for i in range(firsts[g], lasts[g] + 1)]) for g in keep]
    return Spans(
        start=units.start[firsts[keep]],
        end=units.end[lasts[keep]],
        score=mean[keep].astype(np.float32),
        type_id=type_id[keep],
        word=words,
        tag=[None] * len(keep),
    )


def _empty_spans() -> Spans:
    empty = np.zeros(0, np.int64)
    return Spans(empty, empty, np.zeros(0, np.float32), empty, [], [])
