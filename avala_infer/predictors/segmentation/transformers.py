"""transformers semantic segmentation models (SegFormer, BEiT, DPT, MobileViT, UperNet...) from a local folder.

``weights`` is a folder saved with ``save_pretrained``: the model (``AutoModelForSemanticSegmentation``) and its
image processor (``AutoImageProcessor``), both loaded with ``local_files_only=True``. Class names come from the
model config's ``id2label`` unless the spec lists ``labels:``. No ``params``.

Each image goes through the image processor in the loader threads (fed RGB, which gives the same pixels as the
PIL image a transformers pipeline feeds it); the logits go up to the original size bilinearly, as the processor's
``post_process_semantic_segmentation`` does, then softmax and argmax (see :mod:`.semantic`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avala_infer.errors import ModelLoadError
from avala_infer.predictors.segmentation.semantic import SemanticSegmenter
from avala_infer.predictors.transformers_loading import quiet_loading
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Processed:
    """The image processor's ``pixel_values`` (3, H, W) for one image, and the original (height, width)."""

    pixel_values: Any
    orig_shape: tuple[int, int]


def id2label_names(config: Any) -> list[str] | None:
    """Class names in id order from a config's ``id2label``, or ``None`` when it has none."""
    id2label = getattr(config, "id2label", None) or {}
    if not id2label:
        return None
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def load_segmentation_folder(folder: Path) -> tuple[Any, Any]:
    """(image processor, model in eval mode on the CPU, fp32) from a ``save_pretrained`` folder."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder} is not a folder: transformers weights are a folder saved with save_pretrained "
            "(config.json, the weights and preprocessor_config.json)"
        )
    try:
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # OSError, ValueError, KeyError...: transformers raises many types
        raise ModelLoadError(
            f"cannot load an image processor from {folder} ({exc}); save one there with "
            "processor.save_pretrained(folder)"
        ) from exc
    try:
        with quiet_loading():
            model = AutoModelForSemanticSegmentation.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a semantic segmentation model from {folder}: {exc}") from exc
    return processor, model.float().eval()


class TransformersSemanticSegmenter(SemanticSegmenter):
    backend = "transformers"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(set())
        self.processor, model = load_segmentation_folder(weights)
        self._set_labels(id2label_names(model.config))
        model = model.to(device)
        self.model = model.half() if self.fp16 else model

    def prepare(self, image: np.ndarray) -> Processed:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        inputs = self.processor(images=rgb, return_tensors="pt", input_data_format="channels_last")
        return Processed(inputs["pixel_values"][0], image.shape[:2])

    def batch_key(self, prepared: Processed) -> Hashable:
        return tuple(prepared.pixel_values.shape)

    def collate(self, prepared: Sequence[Processed]):
        import torch

        batch = torch.stack([p.pixel_values for p in prepared])
        if self.device != "cpu":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch.half() if self.fp16 else batch.float()

    def forward(self, batch):
        return self.model(pixel_values=batch).logits
