"""transformers image classifiers (ViT, ConvNeXt, Swin, BEiT, ...) from a local folder.

``weights`` is a folder saved with ``save_pretrained`` (config, weights and ``preprocessor_config.json``);
nothing is downloaded. Spec ``params``:

- ``image_processor``: a separate folder holding the image processor (default: the weights folder).
- ``multi_label``: true for an independent sigmoid per class, false for a softmax over classes. Unset, the
  model's config decides as the transformers ``image-classification`` pipeline does: a sigmoid for
  ``problem_type: multi_label_classification`` or a single label, a softmax otherwise.

Class names come from the config's ``id2label`` (or the spec's ``labels``). The image processor runs per item in
the loader threads on the RGB image, exactly as the pipeline runs it on a PIL image; the model runs batched.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.annotations import Classifications
from avala_infer.errors import ConfigError, ModelLoadError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.scoring import scores_from_logits
from avala_infer.predictors.torch_runtime import stacked_on_device
from avala_infer.predictors.transformers_loading import quiet_loading
from avala_infer.specs import ModelSpec, resolve_path
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

PARAMS = frozenset({"image_processor", "multi_label"})


def pipeline_uses_sigmoid(config: Any) -> bool:
    """The transformers image-classification pipeline's default scoring function for this config."""
    if config.problem_type == "regression":
        raise ConfigError("the model is a regression model (problem_type: regression), not a classifier")
    return config.problem_type == "multi_label_classification" or config.num_labels == 1


class ProcessorImageBatches:
    """``prepare``, ``batch_key`` and ``collate`` of a model fed by a transformers image processor
    (``self.processor``): per image in the loader threads, BGR to RGB and the processor's ``pixel_values``; per
    batch, stacked (pinned and sent ahead on a GPU) in the model's precision."""

    processor: Any
    device: str
    fp16: bool

    def prepare(self, image: np.ndarray):
        rgb = np.ascontiguousarray(image[..., ::-1])
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"][0]

    def batch_key(self, prepared) -> Hashable:
        return tuple(prepared.shape)

    def collate(self, prepared: Sequence[Any]):
        return stacked_on_device(prepared, self.device, self.fp16)


class TransformersImageClassifier(ProcessorImageBatches, Predictor):
    model_type = ModelType.IMAGE_CLASSIFICATION
    backend = "transformers"

    @classmethod
    def for_weights(cls, spec: ModelSpec, weights: Path) -> type[Predictor]:
        """A CLIP-family folder (its config.json's model_type) is a zero-shot classifier whose labels are text
        prompts (:mod:`.zero_shot`); any other folder is a fixed-class one, run by this class."""
        from avala_infer.predictors.classification.zero_shot import ZeroShotImageClassifier, zero_shot_family

        return ZeroShotImageClassifier if zero_shot_family(weights) else cls

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        spec.check_params(PARAMS)
        processor_name = spec.param("image_processor")
        processor_path = resolve_path(spec, processor_name, "image processor") if processor_name else weights
        if not weights.is_dir():
            raise ModelLoadError(f"{weights} must be a transformers model folder (save_pretrained), not a file")
        try:
            with quiet_loading():
                model = AutoModelForImageClassification.from_pretrained(
                    str(weights), local_files_only=True, dtype=torch.float32
                )
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError...
            raise ModelLoadError(f"cannot load {weights} as a transformers image classifier: {exc}") from exc
        try:
            self.processor = AutoImageProcessor.from_pretrained(str(processor_path), local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load an image processor from {processor_path}: {exc}; save it next to the model "
                "(image_processor.save_pretrained) or name its folder in params.image_processor"
            ) from exc
        config = model.config
        id2label = getattr(config, "id2label", None) or {}
        self._set_labels([str(id2label.get(i, i)) for i in range(config.num_labels)])
        multi_label = spec.param("multi_label")
        self.multi_label = pipeline_uses_sigmoid(config) if multi_label is None else bool(multi_label)
        model = model.to(device).eval()
        self.model = model.half() if self.fp16 else model

    def forward(self, batch):
        return self.model(pixel_values=batch).logits

    def postprocess(self, raw, prepared: Sequence[Any], **_: Any) -> list[Classifications]:
        scores = scores_from_logits(raw, self.multi_label)
        return [Classifications.from_scores(row, self.labels, self.multi_label) for row in scores]
