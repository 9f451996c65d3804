"""ONNX image classifiers run with onnxruntime: ultralytics ``-cls`` exports, and any other classifier whose
pre-processing the spec describes.

An ultralytics export (``task: classify`` in its metadata) is run exactly as ``YOLO(path).predict`` runs it:
shorter side to ``imgsz`` (PIL bilinear), centre crop, RGB 0..1; names and ``imgsz`` from the metadata; the graph
outputs probabilities. It takes no ``params``.

Any other graph ``[N, 3, H, W] -> [N, classes]`` is described by spec ``params``:

- ``resize``: ``stretch`` (default) to the input size; ``shorter_side_then_center_crop``: the shorter side to
  ``resize_size`` (default ``input_size * 256 / 224``), then a centre crop; ``letterbox``: keep the aspect ratio
  and pad with grey (114) to a square.
- ``interpolation``: ``linear`` (default), ``area``, ``cubic``, ``lanczos`` or ``nearest`` (OpenCV's filters).
- ``mean`` / ``std``: per channel on the 0..1 scale, in RGB order (default 0 and 1: plain 0..1 input).
- ``channel_order``: ``rgb`` (default) or ``bgr``, the order the graph takes its channels in.
- ``output``: ``logits`` (default; softmax, or a sigmoid with ``multi_label``) or ``probabilities`` (used as is).
- ``multi_label``: true when classes are independent (sigmoid), false for one class per image (softmax).

The input size is the graph's when its height and width are fixed, else the spec's ``input_size`` (224 when the
spec leaves it unset). Class names come from the spec's ``labels``, else the metadata (``names`` as ultralytics
writes it, or ``character``: one name a line, as PaddleClas exports). Resizing runs per item in the loader threads;
scaling, normalisation and layout run batched.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avala_infer.annotations import Classifications
from avala_infer.errors import ConfigError, ModelSpecError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.classification.preprocess import input_size_given, parse_size, ultralytics_resize_crop
from avala_infer.predictors.imaging import letterbox
from avala_infer.predictors.onnx_session import open_session
from avala_infer.predictors.scoring import sigmoid, softmax
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

PARAMS = frozenset({"resize", "resize_size", "interpolation", "mean", "std", "channel_order", "output", "multi_label"})
RESIZE_MODES = ("stretch", "shorter_side_then_center_crop", "letterbox")
INTERPOLATIONS = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "nearest": cv2.INTER_NEAREST,
}
DEFAULT_SIZE = 224


def resize_shorter_side_then_crop(image: np.ndarray, shorter: int, size: tuple[int, int], interpolation: int):
    """Scale so the shorter side is ``shorter`` (rounded, aspect kept), then crop the centre ``(h, w)``."""
    height, width = image.shape[:2]
    scale = shorter / min(height, width)
    new_w, new_h = max(round(width * scale), 1), max(round(height * scale), 1)
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size[0]) // 2, (new_w - size[1]) // 2
    return image[top : top + size[0], left : left + size[1]]


def names_from_metadata(meta: dict[str, str]) -> list[str] | None:
    if "names" in meta:
        names = ast.literal_eval(meta["names"])
        return [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    if "character" in meta:
        return [line for line in meta["character"].splitlines() if line.strip()]
    return None


class OnnxImageClassifier(Predictor):
    model_type = ModelType.IMAGE_CLASSIFICATION
    backend = "onnxruntime"
    uses_torch = False  # numpy and cv2/PIL from the file to the scores: a run imports no torch

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        self.session = open_session(weights, device, threads, spec=self.spec)
        self.fp16 = False  # the graph's own dtype decides
        meta = self.session.get_modelmeta().custom_metadata_map
        task = meta.get("task")
        if task is not None and task != "classify":
            raise ConfigError(f"{weights} is an exported {task!r} model, not a classifier; set model_type to fit it")
        self.ultralytics = task == "classify"
        self._set_labels(names_from_metadata(meta))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch_dim, channels, height, width = model_input.shape
        if channels not in (3, None) and not isinstance(channels, str):
            raise ConfigError(f"{weights} takes {channels}-channel images; only 3-channel (colour) input is supported")
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        graph_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if self.ultralytics:
            spec.check_params(set())
            self._configure_ultralytics(spec, graph_size, parse_size(meta.get("imgsz")))
        else:
            spec.check_params(PARAMS)
            self._configure_generic(spec, graph_size)

    def _configure_ultralytics(self, spec: ModelSpec, graph_size, meta_size) -> None:
        import PIL.Image  # noqa: F401  (imported once here, not racing in loader threads)

        self.size = graph_size or ((spec.input_size,) * 2 if input_size_given(spec) else meta_size)
        self.size = self.size or (DEFAULT_SIZE, DEFAULT_SIZE)
        self.mean, self.std = np.zeros(3, np.float32), np.ones(3, np.float32)
        self.bgr = False
        self.output, self.multi_label = "probabilities", False

    def _configure_generic(self, spec: ModelSpec, graph_size) -> None:
        wanted = (spec.input_size,) * 2 if input_size_given(spec) else None
        if graph_size is not None and wanted is not None and graph_size != wanted:
            log.info("%s has a fixed %dx%d input: resizing to that", self.weights.name, *graph_size)
        self.size = graph_size or wanted or (DEFAULT_SIZE, DEFAULT_SIZE)
        self.resize = spec.param("resize", "stretch", choices=RESIZE_MODES)
        self.interpolation = INTERPOLATIONS[spec.param("interpolation", "linear", choices=tuple(INTERPOLATIONS))]
        self.resize_size = int(spec.param("resize_size", round(min(self.size) * 256 / 224)))
        if self.resize == "shorter_side_then_center_crop" and self.resize_size < max(self.size):
            raise ModelSpecError(
                f"params.resize_size {self.resize_size} of {spec.name!r} is smaller than the {self.size} crop; "
                "make it at least the input size"
            )
        if self.resize == "letterbox" and self.size[0] != self.size[1]:
            raise ModelSpecError(f"resize: letterbox needs a square input; {spec.name!r} has {self.size}")
        self.mean = np.asarray(spec.param("mean", (0.0, 0.0, 0.0)), np.float32).reshape(-1)
        self.std = np.asarray(spec.param("std", (1.0, 1.0, 1.0)), np.float32).reshape(-1)
        if self.mean.shape != (3,) or self.std.shape != (3,):
            raise ModelSpecError(f"params.mean and params.std of {spec.name!r} need three values (R, G, B)")
        self.bgr = spec.param("channel_order", "rgb", choices=("rgb", "bgr")) == "bgr"
        self.output = spec.param("output", "logits", choices=("logits", "probabilities"))
        self.multi_label = bool(spec.param("multi_label", False))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize per item; BGR uint8 HWC in, BGR uint8 HWC of the input size out."""
        if self.ultralytics:
            return ultralytics_resize_crop(image, self.size)
        if self.resize == "shorter_side_then_center_crop":
            return resize_shorter_side_then_crop(image, self.resize_size, self.size, self.interpolation)
        if self.resize == "letterbox":
            return letterbox(image, self.size[0], 32, minimal=False)
        return cv2.resize(image, (self.size[1], self.size[0]), interpolation=self.interpolation)

    def batch_key(self, prepared: np.ndarray) -> Hashable:
        return prepared.shape

    def collate(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(prepared)  # BHWC BGR uint8
        if not self.bgr:
            batch = batch[..., ::-1]
        mean, std = (self.mean[::-1], self.std[::-1]) if self.bgr else (self.mean, self.std)
        batch = (batch.astype(np.float32) * np.float32(1 / 255) - mean) / std
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def forward(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(batch)  # graphs exported with a fixed batch run in chunks of it
        outputs = [
            self.session.run(None, {self.input_name: batch[i : i + step]})[0] for i in range(0, len(batch), step)
        ]
        return np.concatenate(outputs).reshape(len(batch), -1)

    def postprocess(self, raw: np.ndarray, prepared: Sequence[np.ndarray], **_: Any) -> list[Classifications]:
        scores = raw.astype(np.float32)
        if self.output == "logits":
            scores = sigmoid(scores) if self.multi_label else softmax(scores)
        return [Classifications.from_scores(row, self.labels, self.multi_label) for row in scores]
