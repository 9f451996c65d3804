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
from avala_infer.predictors.detection.yolo import TASKS, Letterboxed, YoloDetector
from avala_infer.predictors.detection.yolo_seg import YoloSegmenter
from avala_infer.predictors.onnx_session import open_session
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)


class OnnxYoloDetector(YoloDetector):
    backend = "onnxruntime"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        self.session = open_session(weights, device, threads)
        self.provider = self.session.get_providers()[0]
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
        batch = batch[..., ::-1].transpose(0, 3, 1, 2)  # BCHW RGB
        return np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255)

    def forward(self, batch: np.ndarray):
        import torch

        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: batch})]
        if self.device != "cpu":
            outputs = [o.to(self.device) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)  # segment: (raw, protos)


class OnnxYoloSegmenter(YoloSegmenter, OnnxYoloDetector):
    """ONNX exports of ultralytics ``-seg`` models: ``output0`` boxes, scores and mask coefficients,
    ``output1`` prototypes."""
