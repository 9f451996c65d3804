"""Text into model windows: tokenize once per item, split long texts, batch rows with little padding.

A text is tokenized in the loader thread with the model's fast tokenizer (its Rust backend, called directly:
no truncation, no padding, safe from several threads) into content tokens with character offsets; a chunk of
texts in one ``encode_batch`` call (:meth:`TextEncoder.encode_many`), which frees the GIL while it runs. It then
runs as one or more *windows* of at most ``max_length`` tokens, the model's special tokens included:

- ``long_text: truncate``: one window, the first ``max_length`` tokens (what a transformers pipeline does when
  it truncates).
- ``long_text: windows``: the whole text, in windows that share ``stride`` tokens with their neighbours, laid
  out as the fast tokenizer lays out its overflowing tokens (``return_overflowing_tokens`` with ``stride``).

``collate`` turns the windows of a batch's items into rows padded to the batch's longest row only; the engine
groups items by :func:`length_bucket` so that rows of a batch have similar lengths.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.errors import ModelLoadError, ModelSpecError
from avala_infer.specs import ModelSpec, resolve_path

log = logging.getLogger(__name__)

LONG_TEXT_MODES = ("truncate", "windows")
MAX_LENGTH_CAP = 512  # default window when the tokenizer names none, or a longer one
_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def bucket_count(max_length: int) -> int:
    """How many length buckets rows of at most ``max_length`` tokens fall into."""
    return len({length_bucket(n) for n in range(1, max_length + 1)})


def length_bucket(length: int) -> int:
    """The padded length a row of ``length`` tokens is grouped under (steps of about 1.5x)."""
    for bucket in _BUCKETS:
        if length <= bucket:
            return bucket
    return -(-length // 256) * 256


def load_fast_tokenizer(spec: ModelSpec, default_folder: Path, *, from_files: bool = False):
    """The model's fast tokenizer: from ``params.tokenizer`` (a folder, found as weights are) or ``default_folder``.

    ``from_files``: read straight from the folder's files where that gives what ``AutoTokenizer`` gives
    (:mod:`.tokenizer_files`: no transformers, so no torch, for the ONNX backend), else ``AutoTokenizer``."""
    name = spec.param("tokenizer")
    folder = resolve_path(spec, str(name), "tokenizer") if name else default_folder
    if from_files:
        from avala_infer.predictors.text.tokenizer_files import load_tokenizer_files

        tokenizer = load_tokenizer_files(folder)
        if tokenizer is not None:
            return tokenizer
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, and more
        raise ModelLoadError(
            f"cannot load a tokenizer from {folder} for model {spec.name!r}: {exc}; "
            "the folder needs tokenizer.json (or vocab files) and tokenizer_config.json"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"the tokenizer in {folder} is a slow (Python) tokenizer; avala-infer needs a fast one for character "
            "offsets: save it with tokenizer.json (AutoTokenizer.from_pretrained(...).save_pretrained(folder))"
        )
    return tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizedText:
    """One text as content tokens (no special tokens) and the windows it runs in.

    ``offsets[i]`` is the ``[start, end)`` character span of token ``i`` in ``text``; ``special`` marks special
    tokens that occur inside the text itself (a literal ``[SEP]``); ``tokens`` are the token strings (kept
    for entity words only). ``windows`` are ``[start, stop)`` ranges of content tokens, one model row each.
    """

    text: str
    ids: np.ndarray
    type_ids: np.ndarray
    offsets: np.ndarray
    special: np.ndarray
    tokens: tuple[str, ...] | None
    windows: tuple[tuple[int, int], ...]
    row_length: int  # the longest window's length, special tokens included
    extra: Any = None  # what a predictor derives from the tokens in the loader thread too

    @property
    def covered(self) -> int:
        """How many content tokens the windows cover (fewer than all when a long text is truncated)."""
        return self.windows[-1][1]

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """Padded rows (numpy, int64) for a batch's windows; ``backend`` holds the same as the backend wants them."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    backend: Any = None

    @property
    def rows(self) -> int:
        return len(self.input_ids)


class TextEncoder:
    """Splits texts into windows for one model and pads windows into rows; shared by every text predictor."""

    def __init__(self, tokenizer: Any, spec: ModelSpec, *, default_mode: str, keep_tokens: bool) -> None:
        self.tokenizer = tokenizer
        backend = tokenizer.backend_tokenizer
        backend.no_truncation()  # we window texts ourselves; the backend belongs to this tokenizer alone
        backend.no_padding()
        self.backend = backend
        self.keep_tokens = keep_tokens
        self.prefix, self.prefix_types, self.suffix, self.suffix_types = _special_tokens(backend)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        specials = len(self.prefix) + len(self.suffix)

        model_max = getattr(tokenizer, "model_max_length", None) or MAX_LENGTH_CAP
        model_max = int(model_max) if model_max < 1_000_000 else None  # "no limit" is a huge number
        default_length = min(model_max or MAX_LENGTH_CAP, MAX_LENGTH_CAP)
        where = f" of model {spec.name!r}" + (f" in {spec.source}" if spec.source else "")
        self.max_length = _int_param(spec, "max_length", default_length, where)
        if self.max_length <= specials:
            raise ModelSpecError(f"params.max_length{where} must be over {specials} (the special tokens)")
        if model_max is not None and self.max_length > model_max:
            raise ModelSpecError(
                f"params.max_length{where} is {self.max_length} but the tokenizer's model_max_length is {model_max}: "
                "the model has no positions beyond it; use a smaller max_length"
            )
        self.content_length = self.max_length - specials
        self.mode = spec.param("long_text", default_mode, choices=LONG_TEXT_MODES)
        self.stride = _int_param(spec, "stride", self.content_length // 4, where)
        if not 0 <= self.stride < self.content_length:
            raise ModelSpecError(
                f"params.stride{where} is {self.stride}; it must be at least 0 and below {self.content_length} "
                f"(max_length {self.max_length} less {specials} special tokens)"
            )

    def window_spans(self, n: int) -> tuple[tuple[int, int], ...]:
        """``[start, stop)`` content ranges, one per window: the fast tokenizer's overflow layout."""
        size = self.content_length
        if n <= size:
            return ((0, n),)
        if self.mode == "truncate":
            return ((0, size),)
        step = size - self.stride
        spans = []
        for start in range(0, n, step):
            stop = min(start + size, n)
            spans.append((start, stop))
            if stop == n:
                break
        return tuple(spans)

    def encode(self, text: str) -> TokenizedText:
        """Tokenize one text (in a loader thread)."""
        return self._tokenized(text, self.backend.encode(text, add_special_tokens=False))

    def encode_many(self, texts: Sequence[str]) -> list[TokenizedText]:
        """Tokenize a chunk of texts in one call: what :meth:`encode` gives for each, in order.

        ``encode_batch`` releases the GIL and tokenizes the chunk on the Rust side's thread pool, where
        ``encode`` holds the GIL for every text (loader threads then take turns). Each element must be a
        ``str``: ``encode_batch`` would read a pair of strings as a question and its context.
        """
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [self._tokenized(text, encoding) for text, encoding in zip(texts, encodings, strict=True)]

    def _tokenized(self, text: str, encoding: Any) -> TokenizedText:
        """One tokenizers ``Encoding`` (content tokens only) as arrays, with its windows."""
        ids = np.asarray(encoding.ids, dtype=np.int64)
        n = len(ids)
        # from a flat iterator: ~1.6x faster than np.asarray on the list of pairs (it runs under the GIL)
        offsets = np.fromiter(itertools.chain.from_iterable(encoding.offsets), np.int64, count=2 * n).reshape(n, 2)
        windows = self.window_spans(n)
        longest = max(stop - start for start, stop in windows)
        return TokenizedText(
            text=text,
            ids=ids,
            type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
            offsets=offsets,
            special=np.asarray(encoding.special_tokens_mask, dtype=bool),
            tokens=tuple(encoding.tokens) if self.keep_tokens else None,
            windows=windows,
            row_length=len(self.prefix) + longest + len(self.suffix),
        )

    def batch_key(self, prepared: TokenizedText) -> int:
        return length_bucket(prepared.row_length)

    def collate(self, prepared: Sequence[TokenizedText]) -> TextBatch:
        """Every window of every item as one row, right-padded to the longest row of the batch."""
        rows = [(item, start, stop) for item in prepared for start, stop in item.windows]
        width = max(item.row_length for item in prepared)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        type_ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        p, s = len(self.prefix), len(self.suffix)
        for r, (item, start, stop) in enumerate(rows):
            end = p + stop - start
            input_ids[r, :p] = self.prefix
            input_ids[r, p:end] = item.ids[start:stop]
            input_ids[r, end : end + s] = self.suffix
            type_ids[r, :p] = self.prefix_types
            type_ids[r, p:end] = item.type_ids[start:stop]
            type_ids[r, end : end + s] = self.suffix_types
            mask[r, : end + s] = 1
        return TextBatch(input_ids, mask, type_ids)


def row_ranges(prepared: Sequence[TokenizedText]) -> list[slice]:
    """The rows of each item in a collated batch."""
    bounds = np.cumsum([0] + [len(item.windows) for item in prepared])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def token_positions(windows: Sequence[tuple[int, int]], first: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the model's values for each content token of a text sit among its windows' rows.

    Returns ``(window, column)``, one entry per token the windows cover: token ``t``'s values are at row
    ``window[t]`` of the text's rows, column ``column[t]`` (``first`` is the number of special tokens before a
    window's content). A token seen by two windows takes the one where it has more context: the overlap is
    split at its middle. Every token comes from exactly one window, so entities over window boundaries are
    neither cut nor found twice.
    """
    if len(windows) == 1:
        start, stop = windows[0]
        return np.zeros(stop - start, np.int64), np.arange(first, first + stop - start, dtype=np.int64)
    window_parts, column_parts = [], []
    low = 0
    for w, (start, stop) in enumerate(windows):
        high = stop if w == len(windows) - 1 else (windows[w + 1][0] + stop) // 2
        window_parts.append(np.full(high - low, w, dtype=np.int64))
        column_parts.append(np.arange(first + low - start, first + high - start, dtype=np.int64))
        low = high
    return np.concatenate(window_parts), np.concatenate(column_parts)


def _int_param(spec: ModelSpec, key: str, default: int, where: str) -> int:
    value = spec.param(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelSpecError(f"params.{key}{where} must be a whole number, got {value!r}")
    return value


def _special_tokens(backend: Any) -> tuple[list[int], list[int], list[int], list[int]]:
    """The ids and type ids the tokenizer adds before and after one text (``[CLS]`` / ``[SEP]`` for BERT)."""
    probe = "hello world"
    plain = backend.encode(probe, add_special_tokens=False)
    full = backend.encode(probe, add_special_tokens=True)
    n, ids = len(plain.ids), list(full.ids)
    for at in range(len(ids) - n + 1):
        if ids[at : at + n] == list(plain.ids):
            types = list(full.type_ids)
            return ids[:at], types[:at], ids[at + n :], types[at + n :]
    raise ModelLoadError("cannot tell which special tokens the tokenizer adds around a text")
