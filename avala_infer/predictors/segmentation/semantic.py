"""Semantic segmentation shared by every backend: per-pixel class scores in, one :class:`SemanticMask` per image
out, computed on the model's device.

Scores go up to the original image size first (bilinear, ``align_corners=False``, as torchvision's references
and transformers' ``post_process_semantic_segmentation`` do), then become probabilities: softmax over classes
for logits, or the sigmoid of a single class's logit. The class map is the argmax; the score map is the winning
class's probability. A one-channel model has one class: every pixel is class 0, and the engine's per-pixel
confidence filter decides which pixels are that class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avala_infer.annotations import SemanticMask
from avala_infer.errors import ConfigError
from avala_infer.predictors.base import Predictor
from avala_infer.types import ModelType

UPSAMPLE_BUDGET = 1 << 27  # float elements (512 MiB) upsampled in one call; more images go one at a time


def _chunks(sizes: Sequence[tuple[int, int]], channels: int) -> list[tuple[int, int]]:
    """(start, stop) runs of consecutive images that share an output size and fit the upsampling budget."""
    runs = []
    start = 0
    for i in range(1, len(sizes) + 1):
        if (
            i == len(sizes)
            or sizes[i] != sizes[start]
            or (i - start + 1) * channels * _area(sizes[i]) > UPSAMPLE_BUDGET
        ):
            runs.append((start, i))
            start = i
    return runs


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def class_and_score(scores: Any, from_logits: bool) -> tuple[Any, Any]:
    """``scores`` (N, C, H, W) float -> class ids (N, H, W) int32 and the winner's probability (N, H, W).

    Overwrites ``scores`` when it computes a softmax (the caller's upsampled copy, never the model's output).
    """
    import torch

    if scores.shape[1] == 1:
        probability = scores[:, 0]
        if from_logits:
            probability = probability.sigmoid()
        return torch.zeros(probability.shape, dtype=torch.int32, device=scores.device), probability
    best, class_id = scores.max(1)
    if from_logits:  # max softmax probability = 1 / sum(exp(logit - max)), without a second C x H x W tensor
        best = scores.sub_(best[:, None]).exp_().sum(1).reciprocal_()
    return class_id.to(torch.int32), best


def semantic_masks(
    scores: Any, sizes: Sequence[tuple[int, int]], labels: Sequence[str], *, from_logits: bool
) -> list[SemanticMask]:
    """One mask per image from ``scores`` (N, C, h, w) on any device; ``sizes``: each original (height, width)."""
    import torch.nn.functional as F

    results = []
    for start, stop in _chunks(list(sizes), scores.shape[1]):
        chunk = scores[start:stop].float()
        upsampled = F.interpolate(chunk, size=sizes[start], mode="bilinear", align_corners=False)
        class_map, score_map = class_and_score(upsampled, from_logits)
        class_map, score_map = class_map.cpu().numpy(), score_map.cpu().numpy()
        results += [SemanticMask(class_map[i], score_map[i], labels) for i in range(stop - start)]
    return results


class SemanticSegmenter(Predictor):
    """A class per pixel; backends subclass it with loading, ``prepare`` (items carry ``orig_shape``),
    ``collate`` and a ``forward`` that returns class scores (N, C, h, w) on the model's device."""

    model_type = ModelType.SEMANTIC_SEGMENTATION
    scores_are_logits: bool = True

    def postprocess(self, raw: Any, prepared: Sequence[Any], **_: Any) -> list[SemanticMask]:
        if raw.ndim != 4 or raw.shape[1] != len(self.labels):
            raise ConfigError(
                f"{self.weights} gave class scores of shape {tuple(raw.shape)}, but model {self.spec.name!r} has "
                f"{len(self.labels)} labels: a semantic model must output (N, classes, H, W), one channel per label"
            )
        sizes = [tuple(p.orig_shape) for p in prepared]
        return semantic_masks(raw, sizes, self.labels, from_logits=self.scores_are_logits)
