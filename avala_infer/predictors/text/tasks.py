"""Text classification and token classification (NER) over any backend that maps token rows to logits.

A backend subclass loads its model, then calls :meth:`TextPredictor._init_text`; it implements
``_to_backend`` (numpy rows into what its model takes, on its device) and ``_run`` (one chunk of rows to
float32 logits). Everything else is shared: tokenizing on the loader threads, windows and batching
(:mod:`.batching`), scores and entity spans (:mod:`.ner_aggregation`).

Spec params every text predictor reads (``params:`` in the model spec):

- ``tokenizer``: folder of the fast tokenizer, found as weights are (default: the model's own folder).
- ``max_length``: tokens per window, special tokens included (default: the tokenizer's ``model_max_length``,
  at most 512).
- ``long_text``: ``truncate`` or ``windows`` (default ``truncate`` for text classification, whose windowed
  score is the mean of the windows' scores; ``windows`` for NER, whose windows are merged token by token).
- ``stride``: tokens that neighbouring windows share (default a quarter of a window).
- ``multi_label`` (text classification): ``true`` for an independent sigmoid per class, ``false`` for a
  softmax over classes; default as the transformers pipeline decides: sigmoid for a
  ``multi_label_classification`` model or a single logit, else softmax.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from avala_infer.annotations import Classifications, Entities, Result
from avala_infer.errors import ModelLoadError, ModelSpecError, UnsupportedInputError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.scoring import sigmoid, softmax
from avala_infer.predictors.text.batching import TextBatch, TextEncoder, TokenizedText, row_ranges, token_positions
from avala_infer.predictors.text.ner_aggregation import TagScheme, aggregate, gather_pre_entities
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

TEXT_PARAMS = frozenset({"tokenizer", "max_length", "long_text", "stride"})
ROW_TOKENS_PER_ITEM = 512  # a forward call takes up to batch_size * this many tokens (more rows when short)


def labels_from_config(config: Any) -> list[str] | None:
    """``id2label`` in id order (keys may be ints or strings), or ``None`` when the config has none."""
    id2label = getattr(config, "id2label", None) if not isinstance(config, dict) else config.get("id2label")
    if not id2label:
        return None
    by_id = {int(k): str(v) for k, v in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ModelLoadError(f"the model config's id2label ids are not 0..{len(by_id) - 1}: {sorted(by_id)}")
    return [by_id[i] for i in range(len(by_id))]


class TextPredictor(Predictor):
    """What text classifiers and token classifiers share: tokenizing, windows, batching, row chunks."""

    encoder: TextEncoder
    width: int  # logits per token or per text, checked against the labels

    def _init_text(self, tokenizer: Any, *, default_mode: str, keep_tokens: bool) -> None:
        self.encoder = TextEncoder(tokenizer, self.spec, default_mode=default_mode, keep_tokens=keep_tokens)
        self.max_tokens = max(1, self.spec.batch_size) * ROW_TOKENS_PER_ITEM

    def prepare(self, data: np.ndarray | str) -> TokenizedText:
        return self._finish(self.encoder.encode(self._checked(data)))

    def prepare_many(self, texts: Sequence[str]) -> list[TokenizedText]:
        """:meth:`prepare` of each text, tokenized in one call (see :meth:`.TextEncoder.encode_many`).

        Any text that fails fails the call (no partial list): the engine then prepares that chunk item by
        item, so only the bad text fails, with ``prepare``'s own error.
        """
        checked = [self._checked(text) for text in texts]
        return [self._finish(tokenized) for tokenized in self.encoder.encode_many(checked)]

    def _checked(self, data: Any) -> str:
        if not isinstance(data, str):
            raise UnsupportedInputError(f"{self.spec.name} is a text model; it cannot take an image")
        return data

    def _finish(self, tokenized: TokenizedText) -> TokenizedText:
        """What a task derives from the tokens in the loader thread too (nothing by default)."""
        return tokenized

    def batch_key(self, prepared: TokenizedText) -> int:
        return self.encoder.batch_key(prepared)

    def collate(self, prepared: Sequence[TokenizedText]) -> TextBatch:
        batch = self.encoder.collate(prepared)
        return TextBatch(batch.input_ids, batch.attention_mask, batch.token_type_ids, self._to_backend(batch))

    def forward(self, batch: TextBatch) -> np.ndarray:
        """float32 logits of every row: ``(rows, labels)`` or ``(rows, tokens, labels)``. Rows run in chunks
        of at most ``max_tokens`` padded tokens (all of a batch's windows can make many rows)."""
        lengths = batch.attention_mask.sum(1)
        width = batch.input_ids.shape[1]
        per_call = max(1, self.max_tokens // max(width, 1))
        if batch.rows <= per_call:
            return self._run(batch.backend, slice(0, batch.rows), width)
        out = None
        for start in range(0, batch.rows, per_call):
            rows = slice(start, min(start + per_call, batch.rows))
            chunk_width = int(lengths[rows].max())
            logits = self._run(batch.backend, rows, chunk_width)
            if out is None:
                shape = (batch.rows, width, *logits.shape[2:]) if logits.ndim == 3 else (batch.rows, *logits.shape[1:])
                out = np.zeros(shape, dtype=np.float32)
            if logits.ndim == 3:
                out[rows, :chunk_width] = logits
            else:
                out[rows] = logits
        return out

    def _to_backend(self, batch: TextBatch) -> Any:
        """The batch as the backend's model takes it (tensors on the device, say)."""
        return batch

    def _run(self, inputs: Any, rows: slice, width: int) -> np.ndarray:
        """Logits (float32 numpy) of ``rows``, their first ``width`` tokens."""
        raise NotImplementedError


class SequenceClassifierBase(TextPredictor):
    """One set of class scores per text; long texts in windows score the mean of their windows' scores."""

    model_type = ModelType.TEXT_CLASSIFICATION
    known_params = TEXT_PARAMS | {"multi_label"}

    def _init_classes(self, labels: list[str] | None, problem_type: str | None, width: int) -> None:
        if problem_type == "regression":
            raise ModelLoadError(
                f"{self.weights} is a regression model (problem_type regression): it scores, not classifies; "
                "avala-infer runs classification models only"
            )
        self.width = width
        self._set_labels(labels)
        if len(self.labels) != width:
            raise ModelLoadError(f"{self.weights} outputs {width} logits but has {len(self.labels)} labels")
        choice = self.spec.param("multi_label")
        if choice is None:
            self.multi_label = problem_type == "multi_label_classification" or width == 1
        elif isinstance(choice, bool):
            self.multi_label = choice
        else:
            raise ModelSpecError(
                f"params.multi_label of model {self.spec.name!r} must be true or false, got {choice!r}"
            )

    def postprocess(self, raw: np.ndarray, prepared: Sequence[TokenizedText], **options: Any) -> list[Result]:
        scores = sigmoid(raw) if self.multi_label else softmax(raw)
        if len(scores) != len(prepared):  # some text ran in several windows: each text scores their mean
            scores = np.stack([scores[rows].mean(0) for rows in row_ranges(prepared)])
        # Classifications.from_scores for the whole batch at once: classes best first (a stable sort)
        scores = scores.astype(np.float32, copy=False)
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=1)
        names = np.asarray(self.labels, dtype=object)[order]
        return [Classifications.of_arrays(*row, self.multi_label) for row in zip(order, ranked, names)]


class TokenClassifierBase(TextPredictor):
    """Entity spans per text, as the transformers token-classification pipeline makes them.

    ``labels`` are the entity types (``PER``, ``ORG``...: the model's tags less ``B-``/``I-``, ``O`` left out);
    ``postprocess`` reads ``aggregation`` (``none``, ``simple``, ``first``, ``average``, ``max``).
    """

    model_type = ModelType.NAMED_ENTITY_RECOGNITION
    known_params = TEXT_PARAMS

    def _init_tags(self, tags: list[str] | None, width: int) -> None:
        if tags is None:
            raise ModelLoadError(f"{self.weights} has no id2label in its config.json: the model's tags are unknown")
        if len(tags) != width:
            raise ModelLoadError(f"{self.weights} outputs {width} logits per token but has {len(tags)} tags")
        self.width = width
        self.scheme = TagScheme.from_labels(tags)
        self._set_labels(self.scheme.types)
        tokenizer = self.encoder.tokenizer
        self.word_aware = bool(getattr(self.encoder.backend.model, "continuing_subword_prefix", None))
        self.unk_id = tokenizer.unk_token_id
        self.decode = tokenizer.convert_tokens_to_string

    def _finish(self, tokenized: TokenizedText) -> TokenizedText:
        """The tokens that may be part of an entity, found once here rather than in ``postprocess``."""
        used = tokenized.covered
        pre = gather_pre_entities(
            tokenized.text,
            tokenized.tokens[:used],
            tokenized.ids[:used],
            tokenized.offsets[:used],
            tokenized.special[:used],
            token_positions(tokenized.windows, len(self.encoder.prefix)),
            word_aware=self.word_aware,
            unk_id=self.unk_id,
        )
        return dataclasses.replace(tokenized, tokens=None, extra=pre)

    def postprocess(self, raw: np.ndarray, prepared: Sequence[TokenizedText], **options: Any) -> list[Result]:
        strategy = options.get("aggregation", "first")
        texts = [item.extra for item in prepared]
        # the logits of the tokens that count, all texts end to end: the padding and special tokens are never
        # softmaxed, and the spans come out of one pass over the batch's arrays
        rows = np.concatenate([pre.window + span.start for pre, span in zip(texts, row_ranges(prepared))])
        columns = np.concatenate([pre.column for pre in texts])
        probabilities = softmax(raw[rows, columns])
        names = np.asarray(self.labels, dtype=object)
        results: list[Result] = []
        for spans in aggregate(probabilities, texts, self.scheme, strategy, self.decode):
            if not len(spans.start):
                results.append(Entities.empty())
                continue
            results.append(
                Entities(
                    start=spans.start,
                    end=spans.end,
                    confidence=spans.score,
                    class_id=spans.type_id,
                    class_name=names[spans.type_id],
                    word=spans.word,
                    tag=spans.tag,
                )
            )
        return results
