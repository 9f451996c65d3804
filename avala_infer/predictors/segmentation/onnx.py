"""ONNX semantic segmenters run with onnxruntime: any graph whose first output is per-pixel class scores.

The first input takes ``(N, 3, H, W)`` float RGB; the first output is ``(N, C, h, w)``: one channel per label
(C > 1: the argmax wins), or a single channel for a one-class model (every pixel is class 0, its score is the
class probability, and the confidence threshold decides which pixels are the class). Labels come from the spec
(ONNX files carry none).

Spec ``params``:

- ``output`` (required): ``logits`` (softmax over classes; the sigmoid for one channel) or ``probabilities``.
- ``mean``, ``std``: per RGB channel on the 0..1 scale (default ImageNet's).
- ``channel_order``: ``rgb`` (default) or ``bgr``, the order the graph takes its channels in (PaddleOCR models
  take BGR; mean and std are then given in that order too, as PaddleOCR's configs give them).
- ``resize``: ``multiple_of`` (default: keep the aspect, longest side to ``input_size``, then height and width
  each rounded to a multiple of ``multiple``, default 32) or ``fixed`` (an ``input_size`` square). A graph with a
  fixed input size is always fed that size.
- ``upscale`` (``multiple_of`` only, default true): false leaves images whose longest side is under
  ``input_size`` at their own size (rounded to the multiple), as PaddleOCR's ``limit_type: max`` does.

Scores go back to the original image size bilinearly (see :mod:`.semantic`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path

import cv2
import numpy as np

from avala_infer.errors import ModelSpecError
from avala_infer.predictors.imaging import IMAGENET_MEAN, IMAGENET_STD
from avala_infer.predictors.onnx_session import open_session
from avala_infer.predictors.segmentation.semantic import SemanticSegmenter
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)

PARAMS = {"output", "mean", "std", "resize", "multiple", "upscale", "channel_order"}


@dataclasses.dataclass(frozen=True)
class Normalized:
    """A resized, normalised image, CHW float32 RGB, and the original (height, width)."""

    image: np.ndarray
    orig_shape: tuple[int, int]


def multiple_of_size(height: int, width: int, size: int, multiple: int, upscale: bool) -> tuple[int, int]:
    """(height, width): longest side scaled to ``size`` (never up without ``upscale``), each side rounded to
    the nearest multiple of ``multiple`` (at least one multiple)."""
    scale = size / max(height, width)
    if not upscale:
        scale = min(scale, 1.0)
    return tuple(max(round(side * scale / multiple) * multiple, multiple) for side in (height, width))


def _channel_values(spec: ModelSpec, key: str, default: tuple[float, ...]) -> np.ndarray:
    value = spec.param(key, default)
    try:
        values = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        values = np.zeros(0, np.float32)
    if values.shape != (3,) or (key == "std" and (values <= 0).any()):
        raise ModelSpecError(
            f"params.{key} of model {spec.name!r} must be 3 numbers (R, G, B) on the 0..1 scale"
            f"{', all above 0' if key == 'std' else ''}; got {value!r}"
        )
    return values


class OnnxSemanticSegmenter(SemanticSegmenter):
    backend = "onnxruntime"
    default_input_size = 960  # PaddleOCR's det_limit_side_len

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(PARAMS)
        if "output" not in spec.params:
            raise ModelSpecError(
                f"model {spec.name!r} needs params.output: `logits` (softmax over classes, or the sigmoid of a "
                "single channel) or `probabilities` (used as they are), whichever the graph's output is"
            )
        self.scores_are_logits = spec.param("output", choices=("logits", "probabilities")) == "logits"
        self.resize = spec.param("resize", "multiple_of", choices=("multiple_of", "fixed"))
        self.multiple = spec.param("multiple", 32)
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ModelSpecError(f"params.multiple of model {spec.name!r} must be a whole number >= 1")
        self.upscale = bool(spec.param("upscale", True, choices=(True, False)))
        self.bgr = spec.param("channel_order", "rgb", choices=("rgb", "bgr")) == "bgr"
        mean = _channel_values(spec, "mean", IMAGENET_MEAN)
        std = _channel_values(spec, "std", IMAGENET_STD)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)  # (x / 255 - mean) / std, in one multiply-add
        self.shift = (mean / std).astype(np.float32)
        self._set_labels(None)
        self.session = open_session(weights, device, threads, spec=self.spec)
        self.fp16 = False  # the graph's own dtype decides
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        height, width = model_input.shape[2:4] if len(model_input.shape) == 4 else (None, None)
        self.fixed_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if self.fixed_size is not None:
            log.info("%s has a fixed %dx%d input: resizing every image to it", weights.name, height, width)
        channels = self.session.get_outputs()[0].shape
        if len(channels) == 4 and isinstance(channels[1], int) and channels[1] != len(self.labels):
            raise ModelSpecError(
                f"{weights} outputs {channels[1]} class channel(s) but model {spec.name!r} lists "
                f"{len(self.labels)} labels; list one label per channel (one label for a one-channel model)"
            )

    def input_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is fed at."""
        if self.fixed_size is not None:
            return self.fixed_size
        size = self.spec.input_size
        if self.resize == "fixed":
            return size, size
        return multiple_of_size(height, width, size, self.multiple, self.upscale)

    def prepare(self, image: np.ndarray) -> Normalized:
        orig_shape = image.shape[:2]
        height, width = self.input_size_for(*orig_shape)
        if (height, width) != orig_shape:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        ordered = (image if self.bgr else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).astype(np.float32)
        normalized = ordered * self.scale - self.shift
        return Normalized(np.ascontiguousarray(normalized.transpose(2, 0, 1)), orig_shape)

    def batch_key(self, prepared: Normalized) -> Hashable:
        return prepared.image.shape

    def collate(self, prepared: Sequence[Normalized]) -> np.ndarray:
        return np.stack([p.image for p in prepared])

    def forward(self, batch: np.ndarray):
        import torch

        scores = torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])
        return scores.to(self.device) if self.device != "cpu" else scores
