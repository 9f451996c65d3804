"""Token scores into entity spans, as transformers' ``TokenClassificationPipeline`` makes them, with arrays.

The five ``aggregation`` strategies of the pipeline (``none``, ``simple``, ``first``, ``average``, ``max``)
are mirrored step for step (``gather_pre_entities``, ``aggregate_words``, ``group_entities``,
``group_sub_entities``): the same labels, character offsets, scores and ``word`` strings, but computed with
numpy over a whole batch of texts at once instead of one dict per token (on a GPU the main thread's time per
text is what caps the rate). What depends on the tokens alone (which tokens count, where words start, where
each token's scores sit in the batch's rows) is found in the loader threads, by :func:`gather_pre_entities`.
Spans tagged ``O`` are dropped, as the pipeline's default ``ignore_labels`` does.
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
    """The non-special tokens of one text, as the pipeline's ``gather_pre_entities`` sees them.

    ``window``/``column``: where each token's scores sit among the text's model rows (see
    :func:`~avala_infer.predictors.text.batching.token_positions`). ``word_first``/``word_last``: each word's
    first and last token (indices into these tokens), words as ``is_subword`` splits them.
    """

    position: np.ndarray  # index of the token among the text's content tokens
    words: list[str]  # token strings; the text's own characters for unknown tokens
    start: np.ndarray
    end: np.ndarray
    is_subword: np.ndarray
    window: np.ndarray
    column: np.ndarray
    word_first: np.ndarray
    word_last: np.ndarray

    def __len__(self) -> int:
        return len(self.position)


def gather_pre_entities(
    text: str,
    tokens: Sequence[str],
    ids: np.ndarray,
    offsets: np.ndarray,
    special: np.ndarray,
    positions: tuple[np.ndarray, np.ndarray],
    *,
    word_aware: bool,
    unk_id: int | None,
) -> PreEntities:
    """Tokens that can be part of an entity, and whether each continues the word before it.

    ``positions``: the window and column of each content token's scores. ``word_aware``: the tokenizer marks
    word pieces (WordPiece's ``##``), so a token is a sub-word when its string is not as long as its span in
    the text; otherwise the pipeline's heuristic: a token that does not start the text and touches no space on
    its left.
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
    n = len(keep)
    starts_word = np.ones(n, dtype=bool)
    starts_word[1:] = ~is_subword[1:]  # the first token starts a word whatever it looks like
    word_first = np.flatnonzero(starts_word)
    word_last = np.append(word_first[1:], n) - 1 if n else word_first
    window, column = positions
    return PreEntities(keep, words, start, end, is_subword, window[keep], column[keep], word_first, word_last)


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
    texts: Sequence[PreEntities],
    scheme: TagScheme,
    strategy: str,
    decode: Callable[[list[str]], str],
) -> list[Spans]:
    """Entity spans of each text from the class probabilities of all the texts' tokens.

    ``scores`` is ``(tokens, labels)``: the tokens of ``texts[0]``, then those of ``texts[1]``... (one row per
    :class:`PreEntities` token, in order). ``decode`` joins token strings into text (the tokenizer's
    ``convert_tokens_to_string``). Every step runs on the batch's arrays at once; a text's boundaries also
    bound its words and spans.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"aggregation must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not len(scores):
        return [_empty_spans() for _ in texts]
    batch = _Batch.of(texts)
    units = (
        _Units.of_tokens(scores, batch)
        if strategy in ("none", "simple")
        else _Units.of_words(scores, batch, strategy, decode)
    )
    if strategy == "none":
        keep = np.flatnonzero(~scheme.ignored[units.label] & (scheme.type_of[units.label] >= 0))
        spans = Spans(
            start=units.start[keep],
            end=units.end[keep],
            score=units.score[keep],
            type_id=scheme.type_of[units.label[keep]],
            word=[units.word(i) for i in keep],
            tag=[scheme.labels[units.label[i]] for i in keep],
        )
        return _split(spans, units.text_of[keep], len(texts))
    return _group(units, scheme, decode, len(texts))


@dataclasses.dataclass
class _Batch:
    """The texts' tokens end to end: their strings, spans, and each text's first token and word."""

    words: list[str]
    start: np.ndarray
    end: np.ndarray
    token_offset: np.ndarray  # first token of each text, and the total at the end
    word_first: np.ndarray  # each word's first and last token, over the whole batch
    word_last: np.ndarray
    word_offset: np.ndarray  # first word of each text, and the total at the end

    @classmethod
    def of(cls, texts: Sequence[PreEntities]) -> _Batch:
        token_offset = np.cumsum([0] + [len(pre) for pre in texts])
        word_offset = np.cumsum([0] + [len(pre.word_first) for pre in texts])
        shifts = token_offset[:-1]
        return cls(
            words=[word for pre in texts for word in pre.words],
            start=np.concatenate([pre.start for pre in texts]),
            end=np.concatenate([pre.end for pre in texts]),
            token_offset=token_offset,
            word_first=np.concatenate([pre.word_first + shift for pre, shift in zip(texts, shifts)]),
            word_last=np.concatenate([pre.word_last + shift for pre, shift in zip(texts, shifts)]),
            word_offset=word_offset,
        )


@dataclasses.dataclass
class _Units:
    """What ``group_entities`` groups: tokens (``simple``) or words (``first``/``average``/``max``)."""

    label: np.ndarray
    score: np.ndarray
    start: np.ndarray
    end: np.ndarray
    text_of: np.ndarray  # the text each unit belongs to
    word: Callable[[int], str]

    @classmethod
    def of_tokens(cls, token_scores: np.ndarray, batch: _Batch) -> _Units:
        label = token_scores.argmax(-1)
        score = np.take_along_axis(token_scores, label[:, None], -1)[:, 0]
        text_of = np.repeat(np.arange(len(batch.token_offset) - 1), np.diff(batch.token_offset))
        return cls(label, score, batch.start, batch.end, text_of, batch.words.__getitem__)

    @classmethod
    def of_words(
        cls, token_scores: np.ndarray, batch: _Batch, strategy: str, decode: Callable[[list[str]], str]
    ) -> _Units:
        first, last = batch.word_first, batch.word_last
        if strategy == "first":
            vectors = token_scores[first]
        elif strategy == "average":
            vectors = np.add.reduceat(token_scores, first, axis=0) / (last - first + 1)[:, None]
        else:  # max: the token whose best score is highest (the first one on ties)
            best = token_scores.max(-1)
            starts_word = np.zeros(len(token_scores), dtype=bool)
            starts_word[first] = True
            word_of = np.cumsum(starts_word) - 1
            hits = np.flatnonzero(best == np.maximum.reduceat(best, first)[word_of])
            chosen = hits[np.unique(word_of[hits], return_index=True)[1]]
            vectors = token_scores[chosen]
        label = vectors.argmax(-1)
        score = np.take_along_axis(vectors, label[:, None], -1)[:, 0]
        text_of = np.repeat(np.arange(len(batch.word_offset) - 1), np.diff(batch.word_offset))
        words = batch.words

        def word(i: int) -> str:
            return decode(words[first[i] : last[i] + 1])

        return cls(label, score, batch.start[first], batch.end[last], text_of, word)


def _group(units: _Units, scheme: TagScheme, decode: Callable[[list[str]], str], texts: int) -> list[Spans]:
    """``group_entities``: adjacent units of one type join unless a unit is a ``B-`` tag or starts a new text;
    ``O`` spans dropped."""
    n = len(units.label)
    if n == 0:
        return [_empty_spans() for _ in range(texts)]
    key = scheme.group_key[units.label]
    new = np.ones(n, dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | scheme.begins[units.label[1:]] | (units.text_of[1:] != units.text_of[:-1])
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:], n) - 1
    type_id = scheme.type_of[units.label[firsts]]
    mean = np.add.reduceat(units.score.astype(np.float64), firsts) / (lasts - firsts + 1)
    keep = np.flatnonzero(type_id >= 0)
    words = [decode([units.word(i) for i in range(firsts[g], lasts[g] + 1)]) for g in keep]
    spans = Spans(
        start=units.start[firsts[keep]],
        end=units.end[lasts[keep]],
        score=mean[keep].astype(np.float32),
        type_id=type_id[keep],
        word=words,
        tag=[None] * len(keep),
    )
    return _split(spans, units.text_of[firsts[keep]], texts)


def _split(spans: Spans, text_of: np.ndarray, texts: int) -> list[Spans]:
    """The batch's spans (in text order) cut into one :class:`Spans` per text."""
    bounds = np.searchsorted(text_of, np.arange(texts + 1)).tolist()
    return [
        Spans(
            start=spans.start[a:b],
            end=spans.end[a:b],
            score=spans.score[a:b],
            type_id=spans.type_id[a:b],
            word=spans.word[a:b],
            tag=spans.tag[a:b],
        )
        if b > a
        else _empty_spans()
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def _empty_spans() -> Spans:
    empty = np.zeros(0, np.int64)
    return Spans(empty, empty, np.zeros(0, np.float32), empty, [], [])
