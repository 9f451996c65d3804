"""ONNX exports of YOLO detectors and segmenters, run with onnxruntime.

The session opens on the device's provider (see :mod:`avala_infer.predictors.onnx_session`). Class names, stride
and task come from the ultralytics export metadata, or from the spec.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avala_infer.errors import ConfigError
from avala_infer.predictors.detection.yolo import TASKS, Letterboxed, YoloDetector, stride_multiple
from avala_infer.predictors.detection.yolo_seg import YoloSegmenter
from avala_infer.predictors.onnx_binding import BoundSession
from avala_infer.predictors.onnx_session import InputRange, open_session
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)


class OnnxYoloDetector(YoloDetector):
    backend = "onnxruntime"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        # TensorRT builds one engine for every shape this predictor sends: batches of 1..batch_size, inputs up
        # to input_size (rounded up for a stride-64 model); rect letterboxing shrinks a side down to one stride
        size, batch = stride_multiple(self.spec.input_size, 64), self.spec.batch_size
        smallest = size if self.spec.letterbox == "square" else self.default_stride
        self.input_range = InputRange((1, 3, smallest, smallest), (batch, 3, size, size), (batch, 3, size, size))
        self.session = open_session(weights, device, threads, spec=self.spec, input_range=self.input_range)
        self.provider = self.session.get_providers()[0]
        self.bound = BoundSession(self.session, device)  # batches in and outputs out where they lie
        meta = self.session.get_modelmeta().custom_metadata_map
        task = meta.get("task", "detect")
        if TASKS.get(task) != self.model_type.value:
            raise ConfigError(f"{weights} is an exported {task!r} model, not {self.model_type.value}")
        names = ast.literal_eval(meta["names"]) if "names" in meta else None
        self._set_labels([names[i] for i in sorted(names)] if isinstance(names, dict) else names)
        self.stride = max(int(meta.get("stride", 32)), 32)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        height, width = model_input.shape[2:4]
        self.fixed_size = height if isinstance(height, int) and height == width else None
        if self.fixed_size is not None and (spec.letterbox != "square" or spec.input_size != self.fixed_size):
            log.info("%s has a fixed %dx%d input: letterboxing to that square", weights.name, height, width)
            self.spec = spec.with_overrides(letterbox="square", input_size=self.fixed_size)
        self.fp16 = False  # the graph's own dtype decides; exports here are fp32

    def collate(self, prepared: Sequence[Letterboxed]) -> np.ndarray:
        batch = np.stack([p.image for p in prepared])  # BHWC BGR uint8
        inputs = np.empty((batch.shape[0], 3, *batch.shape[1:3]), np.float32)
        # BCHW RGB, scaled to 0..1 in one pass (float32 division: the same values as converting, then dividing)
        np.divide(batch[..., ::-1].transpose(0, 3, 1, 2), np.float32(255), out=inputs)
        return inputs

    def forward(self, batch):
        """``batch``: the collated numpy array, or a torch tensor (on CUDA: on the device, bound by its pointer);
        the raw outputs come back as torch tensors on the device, with no host round trip before NMS."""
        outputs = self.bound.run(batch)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)  # segment: (raw, protos)


class OnnxYoloSegmenter(YoloSegmenter, OnnxYoloDetector):
    """ONNX exports of ultralytics ``-seg`` models: ``output0`` boxes, scores and mask coefficients,
    ``output1`` prototypes."""
