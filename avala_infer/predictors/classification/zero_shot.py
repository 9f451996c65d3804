"""Zero-shot image classification with a CLIP-family model (CLIP, SigLIP): the labels are text prompts.

``weights`` is a folder saved with ``save_pretrained`` (the model, its image processor and tokenizer), loaded
with ``AutoModelForZeroShotImageClassification``; nothing is downloaded. The transformers image-classification
backend hands a folder whose ``config.json`` names a zero-shot family to this class
(:meth:`.TransformersImageClassifier.for_weights`), so a spec looks like any other transformers classifier's::

    model_type: image_classification
    backend: transformers
    weights: clip-vit-base-patch32        # the folder
    labels: [cat, dog, forklift]          # the vocabulary; a run may replace it (Engine(vocabulary=))
    params:
      template: "a photo of a {}."        # default: the pipeline's "This is a photo of {}."
      prompts: {dog: [dog, puppy]}        # optional: several prompts for one label

Spec ``params`` (besides ``template`` and ``prompts``, read by :mod:`avala_infer.predictors.prompts`):

- ``image_processor``, ``tokenizer``: separate folders for them (default: the weights folder).
- ``multi_label``: true for an independent sigmoid per label, false for a softmax over labels. Unset, the family
  decides as the transformers ``zero-shot-image-classification`` pipeline does: a sigmoid for SigLIP (trained
  with a sigmoid loss), a softmax for CLIP.

Scores equal the pipeline's on the same weights when each label has one prompt. A label with several prompts
scores as its best prompt: the highest image-text logit among its prompts, then the softmax (or sigmoid) over
labels, the same "best of them" rule as the open-vocabulary detectors. (CLIP's paper averages the normalised
embeddings of a label's prompts instead; that suits templates that rephrase one label, where the best-of rule
suits synonyms, ``car: [car, sedan, suv]``, which is what ``params.prompts`` is for.)

The prompts are encoded once, when the model loads; each batch then runs only the image tower and one matrix
product with the cached, normalised text embeddings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.annotations import Classifications
from avala_infer.errors import ModelLoadError, ModelSpecError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.classification.transformers import ProcessorImageBatches
from avala_infer.predictors.prompts import label_prompts
from avala_infer.predictors.transformers_loading import quiet_loading
from avala_infer.specs import ModelSpec, resolve_path
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

PARAMS = frozenset({"image_processor", "tokenizer", "multi_label", "template", "prompts"})
DEFAULT_TEMPLATE = "This is a photo of {}."  # the transformers zero-shot-image-classification pipeline's
# config.json model_type -> scores from a sigmoid (True) or a softmax (False) by default. Both families score an
# image against a text as exp(logit_scale) * cosine(image, text) (+ logit_bias, SigLIP)
SUPPORTED = {"clip": False, "siglip": True}
# transformers' other zero-shot image classification families: this class names them in its refusal, so a user
# with such a folder learns why, rather than that it is "not an image classifier"
OTHER_ZERO_SHOT = frozenset(
    {"align", "altclip", "blip", "blip-2", "chinese_clip", "clipseg", "metaclip_2", "siglip2", "tipsv2", "videoprism"}
)
# SigLIP was trained on texts padded to 64 tokens and pools the last position: the pipeline pads it so, and so do we
SIGLIP_TEXT = {"padding": "max_length", "max_length": 64, "truncation": True}


def zero_shot_family(weights: Path) -> str | None:
    """The ``model_type`` in a model folder's ``config.json`` when it is a zero-shot image family, else ``None``
    (a file, no or an unreadable config: the fixed-class loader reports that)."""
    try:
        model_type = json.loads((weights / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if model_type in SUPPORTED or model_type in OTHER_ZERO_SHOT else None


class ZeroShotImageClassifier(ProcessorImageBatches, Predictor):
    """A CLIP-family model scoring each image against the labels' prompts."""

    model_type = ModelType.IMAGE_CLASSIFICATION
    backend = "transformers"
    prompted = True

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        import torch
        from transformers import AutoImageProcessor, AutoModelForZeroShotImageClassification, AutoTokenizer

        spec.check_params(PARAMS)
        family = zero_shot_family(weights)
        if family not in SUPPORTED:
            raise ModelLoadError(
                f"{weights} is a {family} model; zero-shot image classification runs "
                f"{', '.join(sorted(SUPPORTED))} folders (tested with CLIP and SigLIP)"
            )
        prompts = label_prompts(spec, spec.param("template", DEFAULT_TEMPLATE))
        try:
            with quiet_loading():
                model = AutoModelForZeroShotImageClassification.from_pretrained(
                    str(weights), local_files_only=True, dtype=torch.float32
                )
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError...
            raise ModelLoadError(f"cannot load {weights} as a zero-shot image classifier: {exc}") from exc
        self.processor = _load_part(spec, weights, "image_processor", AutoImageProcessor, "image processor")
        tokenizer = _load_part(spec, weights, "tokenizer", AutoTokenizer, "tokenizer")
        multi_label = spec.param("multi_label", SUPPORTED[family])
        if not isinstance(multi_label, bool):
            raise ModelSpecError(
                f"params.multi_label of model {spec.name!r} must be true or false, got {multi_label!r}"
            )
        self.multi_label = multi_label
        self.labels = tuple(prompts)
        model = model.to(device).eval()
        self.model = model.half() if self.fp16 else model
        bias = getattr(model, "logit_bias", None)
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.logit_bias = float(bias.detach().float()) if bias is not None else 0.0
        texts = [text for label_texts in prompts.values() for text in label_texts]
        # prompt i belongs to label prompt_label[i]; a batch's logits per prompt reduce to one per label
        owners = [i for i, label_texts in enumerate(prompts.values()) for _ in label_texts]
        self.prompt_label = torch.tensor(owners, dtype=torch.int64, device=device)
        self.one_prompt_each = len(texts) == len(prompts)
        with torch.inference_mode():
            self.text_embeddings = self._encode_texts(tokenizer, texts, family)  # (prompts, dim), normalised

    def _encode_texts(self, tokenizer: Any, texts: list[str], family: str):
        """The prompts' normalised embeddings, float32, tokenized together as the pipeline tokenizes them."""
        text_config = getattr(self.model.config, "text_config", None)
        positions = getattr(text_config, "max_position_embeddings", None)
        if family == "siglip":
            options = dict(SIGLIP_TEXT)
        elif positions:  # the pipeline would fail on a longer prompt: cut it at the model's positions instead
            options = {"padding": True, "truncation": True, "max_length": positions}
        else:
            options = {"padding": True}
        tokens = tokenizer(texts, return_tensors="pt", **options)
        accepted = ("input_ids", "attention_mask", "position_ids")
        inputs = {name: tensor.to(self.device) for name, tensor in tokens.items() if name in accepted}
        return _normalised(_pooled(self.model.get_text_features(**inputs)))

    def forward(self, batch):
        """Logits per label ``(images, labels)``: each label's best prompt."""
        images = _normalised(_pooled(self.model.get_image_features(pixel_values=batch)))
        logits = images @ self.text_embeddings.T * self.logit_scale + self.logit_bias
        if self.one_prompt_each:
            return logits
        owners = self.prompt_label.expand(len(logits), -1)
        best = logits.new_full((len(logits), len(self.labels)), float("-inf"))
        return best.scatter_reduce(1, owners, logits, reduce="amax")

    def postprocess(self, raw, prepared: Sequence[Any], **_: Any) -> list[Classifications]:
        scores = (raw.sigmoid() if self.multi_label else raw.softmax(-1)).cpu().numpy()
        return [Classifications.from_scores(row, self.labels, self.multi_label) for row in scores]


def _load_part(spec: ModelSpec, weights: Path, key: str, auto_class: Any, what: str) -> Any:
    """The image processor or tokenizer: from ``params[key]`` (a folder found as weights are) or the weights."""
    name = spec.param(key)
    folder = resolve_path(spec, str(name), what) if name else weights
    try:
        return auto_class.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, and more
        raise ModelLoadError(
            f"cannot load a {what} from {folder} for model {spec.name!r}: {exc}; save it next to the model "
            f"(processor.save_pretrained) or name its folder in params.{key}"
        ) from exc


def _pooled(output: Any):
    """``get_*_features`` returns the projected embeddings (transformers 4) or an output holding them as its
    ``pooler_output`` (transformers 5)."""
    return output if hasattr(output, "ndim") else output.pooler_output


def _normalised(embeddings: Any):
    """Unit-length rows in float32 (an fp16 model's embeddings too: the cosine is computed once, in fp32)."""
    embeddings = embeddings.float()
    return embeddings / embeddings.norm(p=2, dim=-1, keepdim=True)
