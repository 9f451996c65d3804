"""ONNX exports of YOLO detectors and segmenters, run with onnxruntime.

The session opens on the device's provider (see :mod:`avala_infer.predictors.onnx_session`). Class names, stride
and task come from the ultralytics export metadata, or from the spec; so does the head: an end-to-end graph
(YOLO26 exported with ``nms=False``, or any export with ``nms=True``: NMS inside the graph) gives final rows and gets
no NMS here, as ultralytics' ONNX backend reads the same metadata (see :func:`exported_end_to_end`). An in-graph NMS
runs on as many images a batch as the export was traced with (usually one): such a graph gets batches that size.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avala_infer.errors import ConfigError
from avala_infer.predictors.detection.yolo import (
    END_TO_END_CANDIDATES,
    TASKS,
    Letterboxed,
    YoloDetector,
    stride_multiple,
)
from avala_infer.predictors.detection.yolo_seg import YoloSegmenter
from avala_infer.predictors.imaging import letterbox
from avala_infer.predictors.onnx_binding import BoundSession
from avala_infer.predictors.onnx_session import InputRange, open_session
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)


def export_args(meta: dict[str, str]) -> dict:
    """The export arguments an ultralytics export records in its metadata (``{}`` when it records none)."""
    try:
        args = ast.literal_eval(meta.get("args", "{}"))
    except (ValueError, SyntaxError):
        return {}
    return args if isinstance(args, dict) else {}


def exported_end_to_end(meta: dict[str, str]) -> bool:
    """Whether an ultralytics export's graph gives final rows ``(B, k, 6 + extra)`` rather than raw outputs for NMS,
    from its metadata, by ultralytics' own rule (its ONNX backend: ``end2end``, or ``nms`` among the export args)."""
    try:
        end2end = ast.literal_eval(meta.get("end2end", "False"))
    except (ValueError, SyntaxError):
        end2end = False
    return bool(end2end or export_args(meta).get("nms"))


def anchor_count(shape: tuple[int, int], stride: int) -> int:
    """Anchors a P3-P5 head has for an input of ``shape`` at strides ``stride / 4``, ``/ 2`` and ``stride`` (a
    lower bound for heads with more levels)."""
    return sum((shape[0] // s) * (shape[1] // s) for s in (stride // 4, stride // 2, stride))


class OnnxYoloDetector(YoloDetector):
    backend = "onnxruntime"
    # on a CPU the outputs stay numpy arrays and NMS runs in numpy (``batched_nms``): a run never imports torch
    # (1.5 s of its start-up); segmenters make their masks with torch, as ultralytics does
    numpy_on_cpu = True

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        # TensorRT builds one engine for every shape this predictor sends: batches of 1..batch_size, inputs up
        # to input_size (rounded up for a stride-64 model); rect letterboxing shrinks a side down to one stride
        size, batch = stride_multiple(self.spec.input_size, 64), self.spec.batch_size
        smallest = size if self.spec.letterbox == "square" else self.default_stride
        self.input_range = InputRange((1, 3, smallest, smallest), (batch, 3, size, size), (batch, 3, size, size))
        self.session = open_session(weights, device, threads, spec=self.spec, input_range=self.input_range)
        self.provider = self.session.get_providers()[0]
        # batches in and outputs out where they lie
        self.bound = BoundSession(self.session, device, numpy_outputs=self.numpy_on_cpu)
        self.uses_torch = not self.bound.numpy_outputs
        meta = self.session.get_modelmeta().custom_metadata_map
        task = meta.get("task", "detect")
        if TASKS.get(task) != self.model_type.value:
            raise ConfigError(f"{weights} is an exported {task!r} model, not {self.model_type.value}")
        names = ast.literal_eval(meta["names"]) if "names" in meta else None
        self._set_labels([names[i] for i in sorted(names)] if isinstance(names, dict) else names)
        self.stride = max(int(meta.get("stride", 32)), 32)
        self.end_to_end = exported_end_to_end(meta)
        traced_batch = int(meta.get("batch", 1))
        if export_args(meta).get("nms") and self.spec.batch_size > traced_batch:
            # ultralytics' in-graph NMS loops over the images of the batch it was traced with (its ``batch``): the
            # images after those would come back with no rows at all
            log.info("%s has NMS in its graph, traced for %d image(s) a batch: batching that many", weights.name,
                     traced_batch)  # fmt: skip
            self.spec = self.spec.with_overrides(batch_size=traced_batch)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        height, width = model_input.shape[2:4]
        self.fixed_size = height if isinstance(height, int) and height == width else None
        if self.fixed_size is not None and (spec.letterbox != "square" or spec.input_size != self.fixed_size):
            log.info("%s has a fixed %dx%d input: letterboxing to that square", weights.name, height, width)
            self.spec = spec.with_overrides(letterbox="square", input_size=self.fixed_size)
        self.fp16 = False  # the graph's own dtype decides; exports here are fp32

    def prepare(self, image: np.ndarray) -> Letterboxed:
        """The letterbox, but square for an end-to-end graph where rect letterboxing (a very wide or tall image)
        would leave fewer anchors than the graph's top-k takes: onnxruntime refuses such a TopK (ultralytics'
        predict fails on that image; here it is padded to the square, which has anchors enough)."""
        prepared = super().prepare(image)
        if self.end_to_end and anchor_count(prepared.image.shape[:2], self.stride) < END_TO_END_CANDIDATES:
            return Letterboxed(letterbox(image, self.spec.input_size, self.stride, False), image.shape[:2])
        return prepared

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

    numpy_on_cpu = False
