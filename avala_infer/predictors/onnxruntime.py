"""ONNX exports of YOLO detectors and segmenters, run with onnxruntime.

CUDA provider when the device is CUDA (an error if onnxruntime-gpu is missing: never a silent CPU run),
CPU provider otherwise; the provider in use is logged. Class names, stride and task come from the
ultralytics export metadata, or from the spec.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avala_infer.errors import BackendUnavailableError, ConfigError, ModelLoadError
from avala_infer.predictors.yolo import Letterboxed, YoloDetector
from avala_infer.predictors.yolo_seg import YoloSegmenter
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)

TASKS = {"detect": "object_detection", "segment": "instance_segmentation"}


def open_session(weights: Path, device: str, threads: int | None = None):
    """An ``InferenceSession`` on the provider ``device`` asks for, or a clear error; ``threads`` caps the
    intra-op threads of one run (several runs may go at once)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                f"device {device} asked for, but onnxruntime offers only {available}; "
                "pip install onnxruntime-gpu (and uninstall onnxruntime), or use --device cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(weights), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime cannot load {weights}: {exc}") from exc
    used = session.get_providers()[0]
    if device.startswith("cuda") and used != "CUDAExecutionProvider":
        raise BackendUnavailableError(f"onnxruntime could not start the CUDA provider for {weights} (got {used})")
    log.info("onnxruntime runs %s with %s", weights.name, used)
    return session


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
