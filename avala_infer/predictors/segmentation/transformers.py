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

from avala_infer.predictors.segmentation.semantic import SemanticSegmenter
from avala_infer.predictors.torch_runtime import stacked_on_device
from avala_infer.predictors.transformers_loading import load_folder
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

    return load_folder(folder, AutoImageProcessor, AutoModelForSemanticSegmentation, "a semantic segmentation model")


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
        return stacked_on_device([p.pixel_values for p in prepared], self.device, self.fp16)

    def forward(self, batch):
        return self.model(pixel_values=batch).logits
