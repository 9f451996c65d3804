"""ultralytics ``-cls`` checkpoints (``.pt``: YOLOv8/11 classifiers) run directly with torch.

Pre-processing is ultralytics' ``classify_transforms`` as its ``ClassificationPredictor`` applies it: the shorter
side resized to ``imgsz`` with PIL's (antialiased) bilinear filter, a centre crop of ``imgsz`` x ``imgsz``, RGB
scaled to 0..1, then the model's own normalisation (none for ultralytics' models). Resize and crop run per item in
the loader threads; scaling and normalisation run batched on the model's device. The scores are the
``Classify`` head's softmax.

``imgsz`` is the spec's ``input_size``; a spec that leaves it at its default (a bare ``-cls.pt`` path) predicts at
the size the checkpoint was trained at, as ``YOLO(path).predict`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.annotations import Classifications
from avala_infer.errors import ConfigError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.classification.preprocess import input_size_given, parse_size, ultralytics_resize_crop
from avala_infer.predictors.torch_runtime import queued_to_device
from avala_infer.predictors.ultralytics_loading import load_ultralytics_module
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)


def model_normalisation(model: Any, size: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the ``Normalize`` in the transforms a trained checkpoint carries, where ultralytics would use
    them (same size); else ultralytics' defaults (0, 1): no normalisation."""
    transforms = getattr(model, "transforms", None)
    steps = getattr(transforms, "transforms", None) or []
    resize_size = parse_size(getattr(steps[0], "size", None)) if steps else None
    if resize_size == size:
        for step in steps:
            if type(step).__name__ == "Normalize":
                return tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std)
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def to_normalised_batch(crops: Sequence[np.ndarray], device: str, fp16: bool, mean, std):
    """Stack BGR uint8 HWC crops into a normalised RGB NCHW float tensor (channels-last) on ``device``."""
    import torch

    batch = queued_to_device(torch.from_numpy(np.stack(crops)), device)
    batch = batch.permute(0, 3, 1, 2).flip(1)  # BHWC BGR -> BCHW RGB
    batch = batch.half() if fp16 else batch.float()
    batch = batch.div_(255)
    if tuple(mean) != (0.0, 0.0, 0.0) or tuple(std) != (1.0, 1.0, 1.0):
        batch = batch.sub_(batch.new_tensor(mean).view(1, -1, 1, 1)).div_(batch.new_tensor(std).view(1, -1, 1, 1))
    return batch.contiguous(memory_format=torch.channels_last)


class UltralyticsClassifier(Predictor):
    """ultralytics classification checkpoints; class names from the checkpoint (or the spec's ``labels``)."""

    model_type = ModelType.IMAGE_CLASSIFICATION
    backend = "ultralytics"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        import PIL.Image  # noqa: F401  (imported once here, not racing in loader threads)
        import torch

        spec.check_params(set())
        model = load_ultralytics_module(weights)
        task = getattr(model, "task", None)
        if task != "classify":
            raise ConfigError(
                f"{weights} is an ultralytics {task!r} model, not a classifier; set model_type to fit it in the spec"
            )
        names = getattr(model, "names", None)
        self._set_labels([names[i] for i in sorted(names)] if isinstance(names, dict) else names)
        trained = parse_size((getattr(model, "args", None) or {}).get("imgsz"))
        if input_size_given(spec) or trained is None:
            self.size = (spec.input_size, spec.input_size)
        else:
            self.size = trained
            log.info("%s: predicting at its training size %s (set input_size to change it)", weights.name, trained)
        self.mean, self.std = model_normalisation(model, self.size)
        model = model.to(device).to(memory_format=torch.channels_last)
        self.model = model.half() if self.fp16 else model.float()

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return ultralytics_resize_crop(image, self.size)

    def batch_key(self, prepared: np.ndarray) -> Hashable:
        return prepared.shape

    def collate(self, prepared: Sequence[np.ndarray]):
        return to_normalised_batch(prepared, self.device, self.fp16, self.mean, self.std)

    def forward(self, batch):
        out = self.model(batch)  # eval: (probabilities, logits)
        if not isinstance(out, (list, tuple)):
            return out
        if self.fp16 and len(out) > 1:
            # fp16 probabilities sum to 1 only within ~1e-3 (measured on an H200): the softmax of the logits in
            # fp32 instead, a distribution again; on fp32 the model's own probabilities, ultralytics' exactly
            return out[1].float().softmax(1)
        return out[0]

    def postprocess(self, raw, prepared: Sequence[np.ndarray], **_: Any) -> list[Classifications]:
        scores = raw.float().cpu().numpy()
        return [Classifications.from_scores(row, self.labels) for row in scores]
