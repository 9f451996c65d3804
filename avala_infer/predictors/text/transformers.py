"""transformers text models from a local folder: sequence classification and token classification (NER).

``weights`` names the model's folder (``config.json``, weights, and usually the tokenizer); nothing is
downloaded. The model runs in eval mode, fp16 on CUDA unless the spec says fp32, with PyTorch's SDPA
attention (``params.attn_implementation: eager`` for the plain one; both give padded rows the same logits as
unpadded ones). See :mod:`.tasks` for the params every text model reads.
"""

from __future__ import annotations

import inspect
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.errors import ModelLoadError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.text.batching import TextBatch, bucket_count, length_bucket, load_fast_tokenizer
from avala_infer.predictors.text.tasks import SequenceClassifierBase, TokenClassifierBase, labels_from_config
from avala_infer.predictors.torch_runtime import (
    compile_module,
    mark_graph_step,
    queued_to_device,
    replays_cuda_graphs,
)
from avala_infer.predictors.transformers_loading import quiet_loading
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "eager")


class _TransformersText:
    """Loading and running a transformers model; mixed into the text task classes."""

    backend = "transformers"
    weights: Path
    spec: ModelSpec
    device: str
    fp16: bool

    def _check_folder(self) -> None:
        if not self.weights.is_dir():
            raise ModelLoadError(
                f"{self.weights} is a file; a transformers model is a folder (config.json and the weights): "
                "set the spec's weights to that folder"
            )

    def _load_model(self, auto_class: str, kind: str) -> Any:
        import torch
        import transformers

        chosen = self.spec.param("attn_implementation", None)
        if chosen is not None:
            self.spec.param("attn_implementation", chosen, choices=ATTENTION)
        loader = getattr(transformers, auto_class)
        model = info = None
        for attention in [chosen] if chosen else list(ATTENTION):
            try:
                with quiet_loading():
                    model, info = loader.from_pretrained(
                        str(self.weights),
                        local_files_only=True,
                        attn_implementation=attention,
                        output_loading_info=True,
                    )
                break
            except ValueError as exc:  # an architecture without SDPA support: try the next
                if chosen or attention == ATTENTION[-1]:
                    raise ModelLoadError(f"cannot load {self.weights} as a {kind} model: {exc}") from exc
                log.info("%s: %s attention unavailable (%s); trying the next", self.weights.name, attention, exc)
            except Exception as exc:  # transformers raises many types for unreadable or foreign folders
                raise ModelLoadError(f"cannot load {self.weights} as a {kind} model: {exc}") from exc
        missing = sorted(info.get("missing_keys") or ()) if info else []
        if missing:
            architectures = getattr(model.config, "architectures", None)
            raise ModelLoadError(
                f"{self.weights} has no trained weights for {', '.join(missing[:4])}: it is not a {kind} model "
                f"(its config lists {architectures}); check the spec's model_type"
            )
        self.fp16 = self.fp16 and self.device.startswith("cuda")
        model = model.to(self.device).eval()
        model = model.half() if self.fp16 else model.float()
        accepted = inspect.signature(model.forward).parameters
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
        self._torch = torch
        self._compile(model)
        return model

    def _compile(self, model: Any) -> None:
        """``spec.torch_compile``: the model compiled in that mode, run in fixed shapes (``call_rows`` rows of a
        length bucket's width: one compile per bucket, see :meth:`_run_fixed`); else eager, any shape."""
        mode = self.spec.torch_compile
        self.call_rows = max(1, self.spec.batch_size) if mode else None
        self._compiled_widths: set[int] = set()  # the shapes compiled so far (their width: the rows are fixed)
        self._compiling = threading.Lock()  # one stream compiles a new shape while the others wait for it
        self.cuda_graphs = replays_cuda_graphs(mode, self.device)
        if mode:
            import torch._dynamo

            # one compiled graph per length bucket, more than torch's default limit of 8 a function; and the limit
            # counts the graphs of every copy of the model class in the process (a predictor a GPU, a job's engine
            # beside a user's): room for 4 at once. Past it torch runs the model uncompiled, with a warning.
            limit = 4 * (bucket_count(self.encoder.max_length) + 1)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        self.model = compile_module(model, mode)

    def _to_backend(self, batch: TextBatch) -> dict[str, Any]:
        torch = self._torch
        arrays = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        arrays["token_type_ids"] = batch.token_type_ids
        tensors = {}
        for name in self.input_names:
            tensors[name] = queued_to_device(torch.from_numpy(arrays[name]), self.device)
        return tensors

    def _run(self, inputs: dict[str, Any], rows: slice, width: int) -> np.ndarray:
        if self.call_rows is not None:
            return self._run_fixed(inputs, rows, width)
        logits = self.model(**{name: t[rows, :width] for name, t in inputs.items()}).logits
        return logits.float().cpu().numpy()

    def _run_fixed(self, inputs: dict[str, Any], rows: slice, width: int) -> np.ndarray:
        """The rows in calls of exactly ``call_rows`` rows of the bucket width of ``width`` tokens (a compiled
        model's one shape per bucket): a short call is padded with rows attending to one padding token, a narrow
        one with masked padding tokens; only the real rows' logits (and tokens) come back."""
        fixed_width = min(length_bucket(width), max(width, self.encoder.max_length))
        parts = []
        for start in range(rows.start or 0, rows.stop, self.call_rows):
            stop = min(start + self.call_rows, rows.stop)
            args = {name: self._padded(name, t[start:stop, :width], fixed_width) for name, t in inputs.items()}
            logits = self._call_fixed(args, fixed_width).logits[: stop - start]
            parts.append((logits[:, :width] if logits.ndim == 3 else logits).float().cpu())  # out of a graph's pool
        return self._torch.cat(parts).numpy()

    def _call_fixed(self, args: dict[str, Any], width: int) -> Any:
        """The compiled model on one fixed-shape call. The first call of a shape holds a lock: CPU streams that
        met a new shape at once each compiled it (tens of seconds each), where one compile serves all."""
        if width in self._compiled_widths:
            if self.cuda_graphs:
                mark_graph_step()
            return self.model(**args)
        with self._compiling:
            if self.cuda_graphs:
                mark_graph_step()
            out = self.model(**args)
            self._compiled_widths.add(width)
        return out

    def _padded(self, name: str, part: Any, width: int) -> Any:
        """``part`` (rows, w) of input ``name`` padded to ``(call_rows, width)``."""
        rows, columns = part.shape
        if rows == self.call_rows and columns == width:
            return part
        out = part.new_full((self.call_rows, width), self.encoder.pad_id if name == "input_ids" else 0)
        out[:rows, :columns] = part
        if name == "attention_mask":
            out[rows:, 0] = 1  # no row of nothing but masked tokens (a softmax over none)
        return out


class TransformersTextClassifier(_TransformersText, SequenceClassifierBase):
    """``AutoModelForSequenceClassification`` from a folder: every class's score per text."""

    # zero_shot: false names this class (true picks the zero-shot one: for_weights)
    known_params = SequenceClassifierBase.known_params | {"attn_implementation", "zero_shot"}

    @classmethod
    def for_weights(cls, spec: ModelSpec, weights: Path) -> type[Predictor]:
        """``params.zero_shot: true`` runs an NLI model as a zero-shot classifier into the spec's labels
        (:mod:`.zero_shot`); otherwise the folder is the fixed-class classifier its config describes (an NLI
        model too: its classes are then entailment, neutral and contradiction)."""
        from avala_infer.predictors.text.zero_shot import ZeroShotTextClassifier, wants_zero_shot

        return ZeroShotTextClassifier if wants_zero_shot(spec) else cls

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(self.known_params)
        self._check_folder()
        self._init_text(load_fast_tokenizer(spec, weights), default_mode="truncate", keep_tokens=False)
        model = self._load_model("AutoModelForSequenceClassification", "sequence classification")
        config = model.config
        self._init_classes(labels_from_config(config), getattr(config, "problem_type", None), config.num_labels)


class TransformersTokenClassifier(_TransformersText, TokenClassifierBase):
    """``AutoModelForTokenClassification`` from a folder: entity spans per text (NER)."""

    known_params = TokenClassifierBase.known_params | {"attn_implementation"}

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(self.known_params)
        self._check_folder()
        self._init_text(load_fast_tokenizer(spec, weights), default_mode="windows", keep_tokens=True)
        model = self._load_model("AutoModelForTokenClassification", "token classification")
        self._init_tags(labels_from_config(model.config), model.config.num_labels)
