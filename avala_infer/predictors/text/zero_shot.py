"""Zero-shot text classification with an NLI model, as the transformers ``zero-shot-classification`` pipeline
runs it: each label becomes a hypothesis ("This example is {label}.") that the text (the premise) entails or not.

An NLI model (``AutoModelForSequenceClassification`` whose ``id2label`` has an *entailment* class: MNLI/XNLI
fine-tunes of BERT, RoBERTa, BART, DeBERTa...) is, as it stands, a 3-class classifier of one text (entailment,
neutral, contradiction); it classifies into the spec's labels only when the spec asks for it::

    model_type: text_classification
    backend: transformers
    weights: bart-large-mnli              # the folder
    labels: [urgent, billing, other]      # the vocabulary; a run may replace it (Engine(vocabulary=))
    params:
      zero_shot: true                     # without it the folder runs as its own 3-class classifier
      hypothesis_template: "This ticket is about {}."   # default "This example is {}."
      multi_label: false                  # default false
      prompts: {billing: [billing, an invoice]}         # optional: several hypotheses for one label

Scores, as the pipeline computes them: a softmax of the entailment logits across labels; with
``multi_label: true`` (or a single label) each label on its own, the softmax of its entailment and contradiction
logits. A label with several hypotheses scores as its best one (its highest entailment logit, or its highest
entailment probability when multi-label), so one hypothesis per label gives the pipeline's scores exactly.

Each text is tokenized once (the loader threads); the hypotheses once, at load. A batch runs every (text,
hypothesis) pair as one row of one forward call: rows are ``[CLS] text [SEP] hypothesis [SEP]`` (whatever
special tokens the tokenizer puts around a pair), the text cut to fit ``max_length`` as the pipeline cuts it
(``only_first``: the hypothesis is never cut). Params ``tokenizer``, ``max_length`` and ``attn_implementation``
are as for any transformers text model; long texts are truncated (there are no windows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.annotations import Classifications, Result
from avala_infer.errors import ModelLoadError, ModelSpecError
from avala_infer.predictors.prompts import label_prompts
from avala_infer.predictors.scoring import softmax
from avala_infer.predictors.text.batching import TextBatch, TokenizedText, length_bucket, load_fast_tokenizer
from avala_infer.predictors.text.tasks import TextPredictor
from avala_infer.predictors.text.transformers import _TransformersText
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "This example is {}."  # the transformers zero-shot-classification pipeline's
KNOWN_PARAMS = frozenset(
    {"tokenizer", "max_length", "attn_implementation", "zero_shot", "hypothesis_template", "multi_label", "prompts"}
)


def wants_zero_shot(spec: ModelSpec) -> bool:
    """``params.zero_shot`` of a text classification spec: true, or false/unset."""
    choice = spec.params.get("zero_shot", False)
    if not isinstance(choice, bool):
        where = f" in {spec.source}" if spec.source else ""
        raise ModelSpecError(f"params.zero_shot of model {spec.name!r}{where} must be true or false, got {choice!r}")
    return choice


def entailment_index(config: Any) -> int:
    """The entailment class, found as the pipeline finds it: the first ``label2id`` name starting "entail"."""
    for name, index in (getattr(config, "label2id", None) or {}).items():
        if str(name).lower().startswith("entail"):
            return int(index)
    return -1


class _PairLayout:
    """Where a tokenizer puts its special tokens around a (premise, hypothesis) pair, and their type ids."""

    def __init__(self, backend: Any) -> None:
        first, second = "premise", "hypothesis"
        a = backend.encode(first, add_special_tokens=False)
        b = backend.encode(second, add_special_tokens=False)
        full = backend.encode(first, second, add_special_tokens=True)
        ids, types = list(full.ids), list(full.type_ids)
        at_a = _find(ids, list(a.ids), 0)
        at_b = _find(ids, list(b.ids), at_a + len(a.ids)) if at_a >= 0 else -1
        if at_b < 0:
            raise ModelLoadError("cannot tell which special tokens the tokenizer puts around a pair of texts")
        end_a, end_b = at_a + len(a.ids), at_b + len(b.ids)
        self.prefix, self.prefix_types = ids[:at_a], types[:at_a]
        self.middle, self.middle_types = ids[end_a:at_b], types[end_a:at_b]
        self.suffix, self.suffix_types = ids[end_b:], types[end_b:]
        self.first_type, self.second_type = types[at_a], types[at_b]
        self.specials = len(self.prefix) + len(self.middle) + len(self.suffix)


def _find(values: list[int], part: list[int], start: int) -> int:
    for at in range(start, len(values) - len(part) + 1):
        if values[at : at + len(part)] == part:
            return at
    return -1


class ZeroShotTextClassifier(_TransformersText, TextPredictor):
    """An NLI model scoring each text against a hypothesis per label."""

    model_type = ModelType.TEXT_CLASSIFICATION
    prompted = True
    known_params = KNOWN_PARAMS

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(self.known_params)
        self._check_folder()
        multi_label = spec.param("multi_label", False)
        if not isinstance(multi_label, bool):
            raise ModelSpecError(
                f"params.multi_label of model {spec.name!r} must be true or false, got {multi_label!r}"
            )
        prompts = label_prompts(spec, spec.param("hypothesis_template", DEFAULT_TEMPLATE))
        self._init_text(load_fast_tokenizer(spec, weights), default_mode="truncate", keep_tokens=False)
        model = self._load_model("AutoModelForSequenceClassification", "NLI (sequence classification)")
        self.entailment = entailment_index(model.config)
        if self.entailment < 0:
            raise ModelLoadError(
                f"{weights} is not an NLI model: its labels {dict(model.config.id2label)} have no entailment class "
                "(zero_shot: true needs one, as the transformers zero-shot-classification pipeline does)"
            )
        # the pipeline's choice: contradiction is class 0, or the last class when entailment is class 0
        self.contradiction = model.config.num_labels - 1 if self.entailment == 0 else 0
        self.labels = tuple(prompts)
        # one label alone would always score 1 in a softmax across labels: the pipeline scores it on its own
        self.multi_label = multi_label or len(self.labels) == 1
        self.layout = _PairLayout(self.encoder.backend)
        hypotheses = [text for texts in prompts.values() for text in texts]
        self.hypothesis_label = np.array([i for i, texts in enumerate(prompts.values()) for _ in texts])
        self.hypotheses = [
            np.asarray(encoding.ids, dtype=np.int64)
            for encoding in self.encoder.backend.encode_batch(hypotheses, add_special_tokens=False)
        ]
        self.hypothesis_lengths = np.array([len(ids) for ids in self.hypotheses])
        # the premise tokens that fit next to each hypothesis (only the premise is cut)
        self.premise_room = self.encoder.max_length - self.layout.specials - self.hypothesis_lengths
        too_long = [text for text, room in zip(hypotheses, self.premise_room) if room < 1]
        if too_long:
            raise ModelSpecError(
                f"hypothesis {too_long[0]!r} of model {spec.name!r} leaves no room for the text in "
                f"{self.encoder.max_length} tokens (params.max_length); shorten it or its template"
            )

    def _row_lengths(self, tokenized: TokenizedText) -> np.ndarray:
        """Tokens of each of the text's rows, one per hypothesis, special tokens included."""
        return np.minimum(len(tokenized.ids), self.premise_room) + self.hypothesis_lengths + self.layout.specials

    def batch_key(self, prepared: TokenizedText) -> int:
        return length_bucket(int(self._row_lengths(prepared).max()))

    def collate(self, prepared: Sequence[TokenizedText]) -> TextBatch:
        """One row per (text, hypothesis), texts major, right-padded to the batch's longest row."""
        layout = self.layout
        per_text = len(self.hypotheses)
        width = max(int(self._row_lengths(item).max()) for item in prepared)
        rows = len(prepared) * per_text
        input_ids = np.full((rows, width), self.encoder.pad_id, dtype=np.int64)
        type_ids = np.zeros((rows, width), dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        p, m, s = len(layout.prefix), len(layout.middle), len(layout.suffix)
        for t, item in enumerate(prepared):
            for h, hypothesis in enumerate(self.hypotheses):
                r = t * per_text + h
                premise = item.ids[: self.premise_room[h]]
                a_end = p + len(premise)
                b_start = a_end + m
                b_end = b_start + len(hypothesis)
                input_ids[r, :p] = layout.prefix
                input_ids[r, p:a_end] = premise
                input_ids[r, a_end:b_start] = layout.middle
                input_ids[r, b_start:b_end] = hypothesis
                input_ids[r, b_end : b_end + s] = layout.suffix
                type_ids[r, :p] = layout.prefix_types
                type_ids[r, p:a_end] = layout.first_type
                type_ids[r, a_end:b_start] = layout.middle_types
                type_ids[r, b_start:b_end] = layout.second_type
                type_ids[r, b_end : b_end + s] = layout.suffix_types
                mask[r, : b_end + s] = 1
        batch = TextBatch(input_ids, mask, type_ids)
        return TextBatch(input_ids, mask, type_ids, self._to_backend(batch))

    def forward(self, batch: TextBatch) -> np.ndarray:
        """Logits ``(texts * hypotheses, classes)`` of every pair of the batch, in one call of the model."""
        return self._run(batch.backend, slice(0, batch.rows), batch.input_ids.shape[1])

    def postprocess(self, raw: np.ndarray, prepared: Sequence[TokenizedText], **options: Any) -> list[Result]:
        logits = raw.reshape(len(prepared), len(self.hypotheses), -1)
        if self.multi_label:  # each hypothesis: entailment vs contradiction
            pairs = logits[..., [self.contradiction, self.entailment]]
            scores = self._best_per_label(softmax(pairs)[..., 1])
        else:
            scores = softmax(self._best_per_label(logits[..., self.entailment]))
        scores = scores.astype(np.float32, copy=False)
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=1)
        names = np.asarray(self.labels, dtype=object)[order]
        return [Classifications(*row, self.multi_label) for row in zip(order, ranked, names)]

    def _best_per_label(self, values: np.ndarray) -> np.ndarray:
        """``(texts, hypotheses)`` -> ``(texts, labels)``: each label's highest value among its hypotheses."""
        if len(self.hypotheses) == len(self.labels):
            return values
        return np.stack([values[:, self.hypothesis_label == i].max(1) for i in range(len(self.labels))], axis=1)
