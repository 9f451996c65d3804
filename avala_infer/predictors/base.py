"""The predictor contract: one model, split into prepare / collate / forward / postprocess.

The engine calls ``prepare`` in its loader threads (CPU, per item, must be thread-safe) with a decoded BGR
uint8 image (image model types) or a ``str`` (text model types), groups prepared
items whose ``batch_key`` is equal, then calls ``collate``, ``forward`` and ``postprocess`` for each batch, in
inference mode, on threads of its own: on a GPU each of the three on its own thread, so ``collate`` of one batch,
``forward`` of the one before and ``postprocess`` of the one before that run at once (on CUDA ``collate`` runs
with a side stream current: it should queue its copies to the device on the current stream, as ``.to(device,
non_blocking=True)`` from pinned memory does). Only ``forward`` touches the model.
A predictor keeps no per-call state on ``self``: everything a batch needs travels with the prepared items.

An optional ``prepare_many(datas) -> list`` (one prepared value per data, in order) is called instead of
``prepare`` on runs of consecutive items when a predictor defines it (a tokenizer that encodes many texts in one
call); if it raises, the engine prepares those items one by one, so only the items that fail alone fail.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from avala_infer.annotations import Result
from avala_infer.errors import BackendUnavailableError, ConfigError
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)


def cuda_driver_loads() -> bool:
    """Whether the NVIDIA driver's library (``libcuda.so.1``, ``nvcuda.dll``) loads in this process: without it
    torch sees no GPU, whatever its build. Asked before importing torch (1.5 s of start-up), so a CPU-only run of
    a model that needs no torch (an ONNX detector) never imports it; with the driver present, torch decides."""
    import ctypes
    import sys

    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so", "libcuda.dylib")
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def resolve_device(device: str | None) -> str:
    """``auto``/``None`` -> ``cuda:0`` when torch sees a GPU, else ``cpu``; ``cuda`` -> ``cuda:0``.

    Asking for CUDA where there is none is an error, never a silent fall back to the CPU. ``cpu``, and ``auto`` on
    a host without the NVIDIA driver, are answered without importing torch.
    """
    text = (device or "auto").strip().lower()
    if text == "cpu" or (text == "auto" and not cuda_driver_loads()):
        return "cpu"
    import torch

    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "cuda":
        text = "cuda:0"
    if not text.startswith("cuda:") or not text[5:].isdigit():
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); use --device cpu, or install a CUDA build of torch"
        )
    index = int(text[5:])
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return text


class Predictor(abc.ABC):
    """Base class of all predictors. Subclasses load their model in ``__init__``.

    ``forward`` may be called from several threads at once (the engine runs CPU batches side by side).
    """

    model_type: ClassVar[ModelType]
    backend: ClassVar[str]
    # input_size when the spec gives none; None: the predictor works it out (from the weights, a processor...)
    default_input_size: ClassVar[int | None] = None
    # a prompted model (open-vocabulary detection, zero-shot classes): its vocabulary is text, chosen per run
    # (a job's or a call's labels: ``Engine(vocabulary=)``), not fixed by the weights
    prompted: ClassVar[bool] = False
    # whether collate, forward and postprocess run torch (the engine then runs them in its inference mode and sets
    # its CPU thread count); a predictor that needs none (an ONNX detector on the CPU) never makes a run import it
    uses_torch: bool = True

    @classmethod
    def for_weights(cls, spec: ModelSpec, weights: Path) -> type[Predictor]:
        """The class that runs these weights. The registry maps a (model type, backend) pair to one class; a
        backend whose checkpoints come in families that run differently (a CLIP folder is a zero-shot image
        classifier, a ViT folder a fixed-class one) overrides this to pick the family's class from the weights
        or spec, without loading the model. Default: this class."""
        return cls

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        if spec.input_size is None and self.default_input_size is not None:
            spec = spec.with_overrides(input_size=self.default_input_size)
        self.spec = spec
        self.threads = threads  # CPU threads one forward pass may use; None: the backend's default
        self.weights = weights
        self.device = device
        self.fp16 = spec.precision == "fp16" or (spec.precision == "auto" and device.startswith("cuda"))
        self.labels: tuple[str, ...] = ()

    def _set_labels(self, from_weights: Sequence[str] | None) -> None:
        """Labels from the spec when it lists them, else from the weights; checked against the model's width."""
        if not self.spec.labels_from_weights:
            labels = tuple(self.spec.labels)
            if from_weights is not None and len(from_weights) != len(labels):
                raise ConfigError(
                    f"model spec {self.spec.name!r} lists {len(labels)} labels but {self.weights} has "
                    f"{len(from_weights)} classes; fix the spec's labels"
                )
        elif from_weights is None:
            raise ConfigError(f"{self.weights} carries no class names; list them under `labels:` in the model spec")
        else:
            labels = tuple(from_weights)
        self.labels = labels

    @abc.abstractmethod
    def prepare(self, data: np.ndarray | str) -> Any:
        """Per item, in a loader thread: turn a decoded BGR uint8 image, or a text, into model-ready data."""

    def batch_key(self, prepared: Any) -> Hashable:
        """Items with equal keys can share one forward pass. Default: all can."""
        return None

    @abc.abstractmethod
    def collate(self, prepared: Sequence[Any]) -> Any:
        """Stack prepared items into one batch input, on the model's device."""

    @abc.abstractmethod
    def forward(self, batch: Any) -> Any:
        """Run the model; the only method that touches it."""

    @abc.abstractmethod
    def postprocess(self, raw: Any, prepared: Sequence[Any], **options: Any) -> list[Result]:
        """Turn the raw batch output into one result per item, in original image pixels / text characters.

        ``options`` (see ``PredictOptions.postprocess_options``): ``score_floor`` (anything below may be
        dropped early), ``iou`` and ``max_det`` (boxes), ``aggregation`` (entities), ``label_filter`` (the run's
        compiled :class:`~avala_infer.filters.LabelFilter`: a chain prompts its second model with the boxes it
        keeps); ignore the rest. Return
        every class a classifier scores and unfiltered labels: the engine's filter maps and keeps them.
        """

    def describe(self) -> str:
        precision = "fp16" if self.fp16 else "fp32"
        return f"{self.spec.name} ({self.model_type.value}, {self.backend}, {self.device}, {precision})"


class ReplicaPool:
    """One copy of a torch module per concurrent caller.

    Modules may keep per-call state: ultralytics' ``Detect`` head caches the anchors of the last input shape on
    itself, so two threads running different shapes through one module get each other's anchors (wrong boxes
    when the anchor counts agree, a crash when not). Copies are made on demand from a pristine template that
    never runs; without a template (a GPU, one stream) callers wait for the one module instead.
    """

    def __init__(self, module: Any, *, spare_copies: bool) -> None:
        import copy
        import queue

        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._free.put(module)
        self._template = copy.deepcopy(module) if spare_copies else None
        self.size = 1

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Any]:
        import copy
        import queue

        try:
            module = self._free.get_nowait()
        except queue.Empty:
            if self._template is None:
                module = self._free.get()
            else:
                module = copy.deepcopy(self._template)
                self.size += 1
        try:
            yield module
        finally:
            self._free.put(module)
