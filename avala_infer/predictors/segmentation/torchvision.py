"""torchvision semantic segmentation models (DeepLabV3, FCN, LRASPP) from a local state dict.

Spec ``params``: ``architecture`` (required, one of :data:`ARCHITECTURES`), ``label_set`` (optional: ``voc``
gives the 21 Pascal VOC names torchvision's pretrained weights use; otherwise list ``labels:`` in the spec, as a
state dict carries no names). ``weights`` is a ``.pth``/``.pt`` state dict (or a training checkpoint holding one
under ``model``/``state_dict``), loaded strictly into the architecture built with ``weights=None``.

Preprocessing is torchvision's ``SemanticSegmentation`` preset (what ``<Weights>.transforms()`` does to a uint8
tensor): the shorter side resized to ``input_size`` (torchvision's weights use 520) with bilinear antialiasing,
rounded back to uint8 values, scaled to 0..1 and normalised with ImageNet mean/std. It runs on the model's
device in ``collate``. The ``"out"`` logits then go up to the original size (see :mod:`.semantic`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.errors import ConfigError, ModelLoadError, ModelSpecError
from avala_infer.predictors.imaging import IMAGENET_MEAN, IMAGENET_STD
from avala_infer.predictors.segmentation.semantic import SemanticSegmenter
from avala_infer.predictors.torch_runtime import queued_to_device
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)

ARCHITECTURES = (
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50",
    "fcn_resnet101",
    "lraspp_mobilenet_v3_large",
)
# torchvision.models._meta._VOC_CATEGORIES: the classes of torchvision's pretrained segmentation weights
VOC_LABELS = (
    "__background__",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
LABEL_SETS = {"voc": VOC_LABELS}


@dataclasses.dataclass(frozen=True)
class ToResize:
    """An original BGR uint8 image and the (height, width) the model will see it at."""

    image: np.ndarray
    size: tuple[int, int]

    @property
    def orig_shape(self) -> tuple[int, int]:
        return self.image.shape[:2]


def shorter_side_to(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``resize(img, [size])``: the shorter side becomes ``size``, the longer one is truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def read_state_dict(weights: Path) -> dict[str, Any]:
    """A state dict from a file: bare, or under ``model``/``state_dict`` in a training checkpoint."""
    import torch

    try:
        data = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelLoadError(
            f"cannot read {weights} as a torch state dict ({exc}); save one with torch.save(model.state_dict(), path)"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelLoadError(f"{weights} holds no state dict; save one with torch.save(model.state_dict(), path)")
    return data


def labels_for(spec: ModelSpec) -> tuple[str, ...] | None:
    """The names ``params.label_set`` gives, or ``None``; without either it and ``labels:``, a clear error."""
    label_set = spec.param("label_set")
    if label_set is not None:
        return LABEL_SETS[spec.param("label_set", choices=tuple(LABEL_SETS))]
    if spec.labels_from_weights:
        raise ConfigError(
            f"model {spec.name!r}: a torchvision state dict carries no class names; list them under `labels:` in "
            f"the spec, or set `params: {{label_set: voc}}` for torchvision's 21 Pascal VOC classes"
        )
    return None


def build_model(architecture: str, num_classes: int, state: dict[str, Any], weights: Path):
    """The architecture with ``state`` loaded strictly; an auxiliary head the state carries is loaded, then
    dropped (it is used in training only)."""
    import torchvision.models.segmentation as segmentation

    aux = any(key.startswith("aux_classifier.") for key in state)
    kwargs = {"aux_loss": aux} if not architecture.startswith("lraspp") else {}
    model = getattr(segmentation, architecture)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{weights} does not fit {architecture} with {num_classes} classes (the spec's labels): {exc}"
        ) from exc
    if aux:
        model.aux_classifier = None
    return model.eval()


class TorchvisionSemanticSegmenter(SemanticSegmenter):
    backend = "torchvision"
    default_input_size = 520  # what torchvision's own segmentation weights are evaluated at

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        import torch

        spec.check_params({"architecture", "label_set"})
        architecture = spec.param("architecture")
        if architecture not in ARCHITECTURES:
            where = f" in {spec.source}" if spec.source else ""
            raise ModelSpecError(
                f"model {spec.name!r}{where} needs params.architecture, one of {', '.join(ARCHITECTURES)}; "
                f"got {architecture!r}"
            )
        self._set_labels(labels_for(spec))
        model = build_model(architecture, len(self.labels), read_state_dict(weights), weights)
        model = model.to(device).to(memory_format=torch.channels_last)
        self.model = model.half() if self.fp16 else model.float()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def prepare(self, image: np.ndarray) -> ToResize:
        return ToResize(image, shorter_side_to(*image.shape[:2], self.spec.input_size))

    def batch_key(self, prepared: ToResize) -> Hashable:
        return prepared.size

    def collate(self, prepared: Sequence[ToResize]):
        import torch
        import torch.nn.functional as F

        same_size = len({p.image.shape for p in prepared}) == 1
        groups = [prepared] if same_size else [[p] for p in prepared]
        resized = []
        for group in groups:
            batch = queued_to_device(torch.from_numpy(np.stack([p.image for p in group])), self.device)
            batch = batch.permute(0, 3, 1, 2).flip(1).float()  # BHWC BGR uint8 -> BCHW RGB float
            if tuple(batch.shape[2:]) != group[0].size:
                batch = F.interpolate(batch, size=group[0].size, mode="bilinear", align_corners=False, antialias=True)
                batch = batch.round_()  # the preset resizes uint8 images: values come back rounded
            resized.append(batch)
        batch = torch.cat(resized).div_(255).sub_(self.mean).div_(self.std)
        batch = batch.half() if self.fp16 else batch
        return batch.contiguous(memory_format=torch.channels_last)

    def forward(self, batch):
        return self.model(batch)["out"]
