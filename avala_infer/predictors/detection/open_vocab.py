"""Open-vocabulary detection on transformers (OWLv2, OWL-ViT, Grounding DINO): boxes for labels given as text.

``weights`` is a folder saved with ``save_pretrained``: the model (``AutoModelForZeroShotObjectDetection``) and its
processor (``AutoProcessor``: image processor and tokenizer), loaded with ``local_files_only=True``. The family
comes from the folder's ``config.json`` (``model_type``), read by :meth:`OpenVocabDetector.for_weights` before
anything loads: ``owlv2``/``owlvit`` run :class:`~.open_vocab_owl.OwlDetector`, ``grounding-dino``
:class:`~.open_vocab_grounding_dino.GroundingDinoDetector`.

The model is prompted: its labels are the spec's ``labels`` or a run's vocabulary (``Engine(vocabulary=)``, a
job's labels, ``--labels``), each label prompted by itself or by the texts ``params.prompts`` lists for it
(:func:`~avala_infer.predictors.prompts.label_prompts`; ``params.template`` too). The prompts are encoded once,
when the model loads; a batch runs the images only (Grounding DINO fuses text and image inside its forward: its
token ids are made once, its text encoder runs per batch).

Every box the model proposes (one per OWL patch, one per Grounding DINO query) is scored against every prompt
(OWL: the sigmoid of its logit, as ``post_process_object_detection``; Grounding DINO: the best sigmoid over the
prompt's tokens, as ``post_process_grounded_object_detection`` scores a box over the tokens of its phrase). A row
is a (box, prompt) pair scoring at least the run's ``score_floor``, labelled with the prompt's label: so a box can
carry several labels, as in the transformers ``zero-shot-object-detection`` pipeline, which runs each label alone.
A label with several prompts goes through NMS at the run's ``iou`` over the rows of all its prompts (torchvision's
``nms``, per image and label): the same box found by two of its prompts, or overlapping boxes of
different prompts, become one row, the best-scoring, which keeps the prompt that scored it. A label with one
prompt gets no NMS (as the pipeline: these models are trained to propose without one). Each image's rows are then
sorted by score and cut at ``max_det``. Boxes are in original image pixels, clipped to the image.

Each row remembers its prompt (``Detections.prompt``), so a dry run can count and score prompts
(``summary.json``'s ``per_prompt``) for a user to tune them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avala_infer.annotations import Detections
from avala_infer.errors import ModelLoadError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.prompts import label_prompts
from avala_infer.predictors.torch_runtime import stacked_on_device
from avala_infer.predictors.transformers_loading import load_folder
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

# config.json model_type -> "module:Class" of the family that runs it
FAMILIES = {
    "owlv2": "avala_infer.predictors.detection.open_vocab_owl:OwlDetector",
    "owlvit": "avala_infer.predictors.detection.open_vocab_owl:OwlDetector",
    "grounding-dino": "avala_infer.predictors.detection.open_vocab_grounding_dino:GroundingDinoDetector",
}
PARAMS = frozenset({"prompts", "template"})


@dataclasses.dataclass(frozen=True)
class Processed:
    """The image processor's ``pixel_values`` (3, H, W) for one image, and the original (height, width)."""

    pixel_values: Any
    orig_shape: tuple[int, int]


def config_model_type(weights: Path) -> str:
    """``model_type`` of a ``save_pretrained`` folder's ``config.json``, read without loading the model."""
    config = weights / "config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"{weights} has no config.json: transformers weights are a folder saved with save_pretrained "
            "(config.json, the weights, the processor's files)"
        )
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read {config}: {exc}") from exc


def load_zero_shot_folder(folder: Path) -> tuple[Any, Any]:
    """(processor, model in eval mode on the CPU, fp32) from a ``save_pretrained`` folder."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    return load_folder(folder, AutoProcessor, AutoModelForZeroShotObjectDetection, "a zero-shot object detection model")


class OpenVocabDetector(Predictor):
    """The registered class of ``object_detection``/``transformers``: picks the family from the weights
    (:meth:`for_weights`); each family subclass loads its model and defines ``forward`` and ``normalized_scale``.

    ``forward`` returns ``(scores, boxes)``: float32 ``(B, Q, P)`` the score of each of the Q proposed boxes
    for each of the P prompts, and ``(B, Q, 4)`` the boxes as normalized cx, cy, w, h.
    """

    model_type = ModelType.OBJECT_DETECTION
    backend = "transformers"
    prompted = True

    @classmethod
    def for_weights(cls, spec: ModelSpec, weights: Path) -> type[Predictor]:
        import importlib

        if cls is not OpenVocabDetector:
            return cls
        model_type = config_model_type(weights)
        target = FAMILIES.get(model_type)
        if target is None:
            raise ModelLoadError(
                f"{weights} holds a {model_type or 'model without a model_type'!r}; object_detection on "
                f"transformers runs open-vocabulary detectors: {', '.join(sorted(FAMILIES))}"
            )
        module_name, class_name = target.split(":")
        return getattr(importlib.import_module(module_name), class_name)

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        if type(self) is OpenVocabDetector:
            raise TypeError("OpenVocabDetector picks a family: construct OpenVocabDetector.for_weights(...)")
        super().__init__(spec, weights, device, threads)
        spec.check_params(PARAMS)
        prompts = label_prompts(self.spec)  # refuses a spec without labels: the vocabulary is text
        self.labels = tuple(prompts)
        self.prompts: tuple[str, ...] = tuple(text for texts in prompts.values() for text in texts)
        # prompt index -> label index, and which labels have several prompts (those go through NMS)
        self.prompt_label = np.repeat(np.arange(len(prompts)), [len(texts) for texts in prompts.values()])
        self.multi_prompt = np.array([len(texts) > 1 for texts in prompts.values()], dtype=bool)
        self.processor, model = load_zero_shot_folder(weights)
        self.model = model.to(device)
        if self.fp16:
            self.model = self.model.half()
        self._encode_prompts()

    def _encode_prompts(self) -> None:
        """Encode ``self.prompts`` once (family-specific)."""
        raise NotImplementedError

    def normalized_scale(self, orig_shape: tuple[int, int]) -> tuple[float, float]:
        """(x, y) factors from normalized box coordinates to original pixels (family-specific)."""
        height, width = orig_shape
        return float(width), float(height)

    def prepare(self, image: np.ndarray) -> Processed:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # an RGB array gives the processor the PIL image's pixels
        inputs = self.processor.image_processor(images=rgb, return_tensors="pt", input_data_format="channels_last")
        return Processed(inputs["pixel_values"][0], image.shape[:2])

    def batch_key(self, prepared: Processed) -> Hashable:
        return tuple(prepared.pixel_values.shape)

    def collate(self, prepared: Sequence[Processed]):
        return stacked_on_device([p.pixel_values for p in prepared], self.device, self.fp16)

    def postprocess(
        self,
        raw: Any,
        prepared: Sequence[Processed],
        *,
        score_floor: float = 0.1,
        iou: float = 0.7,
        max_det: int | None = 300,
        **_: Any,
    ) -> list[Detections]:
        import torch

        from avala_infer.predictors.nms_kernel import nms

        scores, boxes = raw
        scores, boxes = scores.float(), boxes.float()
        batch = len(prepared)
        scale = torch.tensor(
            [self.normalized_scale(p.orig_shape) for p in prepared], dtype=torch.float32, device=boxes.device
        ).repeat(1, 2)  # (B, 4): x, y, x, y
        limit = torch.tensor(
            [(p.orig_shape[1], p.orig_shape[0]) for p in prepared], dtype=torch.float32, device=boxes.device
        ).repeat(1, 2)
        cx, cy, w, h = boxes.unbind(-1)  # as transformers' center_to_corners_format, then scaled
        corners = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1) * scale[:, None, :]
        corners = torch.minimum(corners.clamp(min=0), limit[:, None, :])
        image, query, prompt = torch.nonzero(scores >= score_floor, as_tuple=True)
        row_scores = scores[image, query, prompt]
        row_boxes = corners[image, query]
        prompt_label = torch.as_tensor(self.prompt_label, device=scores.device)
        row_labels = prompt_label[prompt]
        keep = torch.ones_like(row_scores, dtype=torch.bool)
        merged = torch.as_tensor(self.multi_prompt, device=scores.device)[row_labels]
        if merged.any():  # NMS across the prompts of each label that has several, image by image
            candidates = merged.nonzero().flatten()
            groups = image[candidates] * len(self.labels) + row_labels[candidates]
            keep[candidates] = False
            # one nms per (image, label), not one batched_nms: its offset trick shifts boxes by the group number,
            # and float32 rounding there could make an image's boxes depend on its batch (see yolo.batched_nms)
            for group in torch.unique(groups).tolist():
                mine = candidates[groups == group]
                keep[mine[nms(row_boxes[mine], row_scores[mine], iou)]] = True
        # each image's rows by descending score (stable sorts: ties stay in proposal order), cut at max_det below
        order = keep.nonzero().flatten()
        order = order[torch.argsort(row_scores[order], descending=True, stable=True)]
        order = order[torch.argsort(image[order], stable=True)]
        columns = (row_scores[order, None], row_labels[order, None], prompt[order, None], image[order, None])
        host = torch.cat((row_boxes[order], *(c.float() for c in columns)), 1).cpu().numpy()  # the one copy
        host_boxes, host_scores = np.ascontiguousarray(host[:, :4]), np.ascontiguousarray(host[:, 4])
        host_labels, host_prompts, host_images = (host[:, i].astype(np.int64) for i in (5, 6, 7))
        names = np.asarray(self.labels, dtype=object)
        texts = np.asarray(self.prompts, dtype=object)
        results = []
        bounds = np.searchsorted(host_images, np.arange(batch + 1))
        for i in range(batch):
            end = bounds[i + 1] if max_det is None else min(bounds[i + 1], bounds[i] + max_det)
            mine = slice(bounds[i], end)
            results.append(
                Detections(
                    host_boxes[mine],
                    host_scores[mine],
                    host_labels[mine],
                    names[host_labels[mine]] if len(host_labels[mine]) else np.zeros(0, object),
                    prompt=texts[host_prompts[mine]] if len(host_prompts[mine]) else np.zeros(0, object),
                )
            )
        return results
