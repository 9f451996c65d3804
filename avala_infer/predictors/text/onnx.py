"""ONNX exports of transformers text models, run with onnxruntime: text classification and NER.

``weights`` is the ``.onnx`` file. Its tokenizer and ``config.json`` (``id2label``, ``problem_type``) come from
``params.tokenizer``, a folder found as weights are (default: the folder holding the ``.onnx`` file). The graph
gets only the inputs it declares among ``input_ids``, ``attention_mask`` and ``token_type_ids``; its first
output is the logits. See :mod:`.tasks` for the other params.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.errors import ModelLoadError
from avala_infer.predictors.onnx_session import open_session
from avala_infer.predictors.text.batching import TextBatch, load_fast_tokenizer
from avala_infer.predictors.text.tasks import SequenceClassifierBase, TokenClassifierBase, labels_from_config
from avala_infer.specs import ModelSpec, resolve_path

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class _OnnxText:
    """Opening and running the session; mixed into the text task classes."""

    backend = "onnxruntime"
    uses_torch = False  # numpy in and out, the tokenizer read from its files where it can be: a run imports no torch
    weights: Path
    spec: ModelSpec
    device: str
    threads: int | None

    def _open(self, expected_rank: int) -> tuple[Any, dict[str, Any]]:
        """The tokenizer and the config (a dict, empty when the folder has no config.json)."""
        if not self.weights.is_file() or self.weights.suffix.lower() != ".onnx":
            raise ModelLoadError(f"{self.weights} is not an .onnx file; the onnxruntime backend runs ONNX graphs")
        name = self.spec.param("tokenizer")
        folder = resolve_path(self.spec, str(name), "tokenizer") if name else self.weights.parent
        tokenizer = load_fast_tokenizer(self.spec, folder, from_files=True)  # no transformers: no torch
        config: dict[str, Any] = {}
        config_path = folder / "config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read {config_path}: {exc}") from exc
        self.session = open_session(self.weights, self.device, self.threads, spec=self.spec)
        self.fp16 = False  # the graph's own dtypes decide
        self.feeds: dict[str, type] = {}
        for graph_input in self.session.get_inputs():
            if graph_input.name not in INPUTS or graph_input.type not in _DTYPES:
                raise ModelLoadError(
                    f"{self.weights} takes input {graph_input.name!r} ({graph_input.type}); avala-infer feeds text "
                    f"graphs only int32/int64 {', '.join(INPUTS)}"
                )
            self.feeds[graph_input.name] = _DTYPES[graph_input.type]
        if "input_ids" not in self.feeds:
            raise ModelLoadError(f"{self.weights} has no input_ids input: it is not a transformers text model export")
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        if len(output.shape) != expected_rank:
            raise ModelLoadError(
                f"{self.weights} outputs {output.name} of shape {output.shape}; a {self.model_type.value} model "
                f"outputs {'(batch, tokens, labels)' if expected_rank == 3 else '(batch, labels)'} logits"
            )
        self.output_width = output.shape[-1] if isinstance(output.shape[-1], int) else None
        return tokenizer, config

    def _to_backend(self, batch: TextBatch) -> dict[str, np.ndarray]:
        arrays = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        arrays["token_type_ids"] = batch.token_type_ids
        return {name: arrays[name].astype(dtype, copy=False) for name, dtype in self.feeds.items()}

    def _run(self, inputs: dict[str, np.ndarray], rows: slice, width: int) -> np.ndarray:
        feed = {name: np.ascontiguousarray(array[rows, :width]) for name, array in inputs.items()}
        return np.asarray(self.session.run([self.output_name], feed)[0], dtype=np.float32)


def _width(spec: ModelSpec, config: dict[str, Any], labels: list[str] | None, output_width: int | None) -> int:
    """Logits per text or token: the graph's static width, else the config's labels, else the spec's."""
    if not labels and not spec.labels_from_weights:
        labels = list(spec.labels)
    width = output_width or (len(labels) if labels else None) or config.get("num_labels")
    if width is None:
        raise ModelLoadError(f"cannot tell how many classes {spec.weights} has: give a config.json with id2label")
    return int(width)


class OnnxTextClassifier(_OnnxText, SequenceClassifierBase):
    """A sequence-classification export: every class's score per text."""

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(self.known_params)
        tokenizer, config = self._open(expected_rank=2)
        self._init_text(tokenizer, default_mode="truncate", keep_tokens=False)
        labels = labels_from_config(config)
        self._init_classes(labels, config.get("problem_type"), _width(spec, config, labels, self.output_width))


class OnnxTokenClassifier(_OnnxText, TokenClassifierBase):
    """A token-classification export: entity spans per text (NER)."""

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(self.known_params)
        tokenizer, config = self._open(expected_rank=3)
        self._init_text(tokenizer, default_mode="windows", keep_tokens=True)
        tags = labels_from_config(config)
        self._init_tags(tags, _width(spec, config, tags, self.output_width))
