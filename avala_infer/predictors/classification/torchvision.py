"""torchvision classification models (``resnet18``, ``efficientnet_b0``, ``vit_b_16``, ...) from a local state dict.

Spec ``params``:

- ``architecture`` (required): a torchvision classification builder name (``torchvision.models.list_models``);
  built with ``weights=None`` and ``num_classes = len(labels)``, then the state dict in ``weights`` is loaded.
- ``label_set: imagenet``: torchvision's 1000 ImageNet category names, instead of ``labels`` in the spec.
- ``resize_size`` (default 256): the shorter side is resized to it; ``input_size`` (default 224 when the spec
  leaves it unset) is the centre crop, as torchvision's ``ImageClassification`` preset.
- ``mean`` / ``std`` (0..1 RGB scale, default ImageNet's), ``multi_label`` (sigmoid per class instead of
  softmax, default false), ``model_kwargs`` (extra builder arguments, e.g. ``{image_size: 384}`` for a ViT).

Pre-processing is the preset's: bilinear resize with antialias on the uint8 RGB image and the centre crop per
item in the loader threads; scaling to 0..1 and normalisation batched on the model's device.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.annotations import Classifications
from avala_infer.errors import ConfigError, ModelLoadError, ModelSpecError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.classification.preprocess import input_size_given
from avala_infer.predictors.imaging import IMAGENET_MEAN, IMAGENET_STD
from avala_infer.predictors.scoring import scores_from_logits
from avala_infer.predictors.torch_runtime import queued_to_device
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

DEFAULT_CROP = 224
DEFAULT_RESIZE = 256
PARAMS = frozenset({"architecture", "label_set", "resize_size", "mean", "std", "multi_label", "model_kwargs"})
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # training checkpoints nest the weights


def imagenet_labels() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def load_state_dict(weights: Path) -> dict:
    """A state dict from a ``.pth``/``.pt`` file (plain, or nested under a training checkpoint's key) or
    ``.safetensors``; never unpickles arbitrary objects."""
    import torch

    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types
        raise ModelLoadError(f"cannot read {weights} as a torch state dict: {exc}") from exc
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{weights} holds a {type(state).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel / DDP checkpoints


def build_model(architecture: str, num_classes: int, weights: Path, model_kwargs: dict):
    """The torchvision builder's model with ``num_classes`` outputs and the weights file's parameters loaded."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if architecture not in known:
        raise ModelSpecError(
            f"params.architecture {architecture!r} is not a torchvision classification model; use one of: "
            f"{', '.join(known)}"
        )
    builder = torchvision.models.get_model_builder(architecture)
    try:
        model = builder(weights=None, num_classes=num_classes, **model_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"cannot build {architecture} with params.model_kwargs {model_kwargs}: {exc}") from exc
    try:
        model.load_state_dict(load_state_dict(weights))
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{weights} does not fit {architecture} with {num_classes} classes (one per label): {exc}"
        ) from exc
    return model.eval()


class TorchvisionClassifier(Predictor):
    model_type = ModelType.IMAGE_CLASSIFICATION
    backend = "torchvision"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        import torch
        import torchvision.transforms.functional  # noqa: F401  (import once here, not racing in loader threads)

        spec.check_params(PARAMS)
        architecture = spec.param("architecture")
        if not architecture:
            raise ModelSpecError(
                f"model {spec.name!r} needs params.architecture: a torchvision builder name such as resnet18"
            )
        if spec.param("label_set", None, choices=(None, "imagenet")) == "imagenet":
            if not spec.labels_from_weights:
                raise ModelSpecError(f"model {spec.name!r} sets both labels and params.label_set; keep one")
            self._set_labels(imagenet_labels())
        else:
            if spec.labels_from_weights:
                raise ConfigError(
                    f"a torchvision state dict carries no class names: list them under `labels:` in the spec of "
                    f"{spec.name!r}, or set params.label_set: imagenet"
                )
            self._set_labels(None)
        self.multi_label = bool(spec.param("multi_label", False))
        self.crop = spec.input_size if input_size_given(spec) else DEFAULT_CROP
        self.resize = int(spec.param("resize_size", DEFAULT_RESIZE))
        self.mean = tuple(float(x) for x in spec.param("mean", IMAGENET_MEAN))
        self.std = tuple(float(x) for x in spec.param("std", IMAGENET_STD))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelSpecError(f"params.mean and params.std of {spec.name!r} need three values (R, G, B)")
        model_kwargs = dict(spec.param("model_kwargs", None) or {})
        model = build_model(str(architecture), len(self.labels), weights, model_kwargs)
        model = model.to(device).to(memory_format=torch.channels_last)
        self.model = model.half() if self.fp16 else model.float()

    def prepare(self, image: np.ndarray):
        """Resize (shorter side, bilinear, antialias) and centre-crop the uint8 RGB image, as the preset."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        rgb = torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)))
        rgb = F.resize(rgb, [self.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return F.center_crop(rgb, [self.crop]).contiguous()

    def batch_key(self, prepared) -> Hashable:
        return tuple(prepared.shape)

    def collate(self, prepared: Sequence[Any]):
        import torch

        batch = queued_to_device(torch.stack(list(prepared)), self.device)
        batch = batch.float().div_(255)
        batch = batch.sub_(batch.new_tensor(self.mean).view(1, 3, 1, 1)).div_(
            batch.new_tensor(self.std).view(1, 3, 1, 1)
        )
        batch = batch.half() if self.fp16 else batch
        return batch.contiguous(memory_format=torch.channels_last)

    def forward(self, batch):
        return self.model(batch)

    def postprocess(self, raw, prepared: Sequence[Any], **_: Any) -> list[Classifications]:
        scores = scores_from_logits(raw, self.multi_label)
        return [Classifications.from_scores(row, self.labels, self.multi_label) for row in scores]
