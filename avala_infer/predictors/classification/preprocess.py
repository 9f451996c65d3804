"""Pre-processing that more than one image-classification backend shares: input sizes, and ultralytics' classify
resize and centre crop (used for ``-cls`` checkpoints and for their ONNX exports)."""

from __future__ import annotations

import ast
from typing import Any

import numpy as np

from avala_infer.specs import ModelSpec


def input_size_given(spec: ModelSpec) -> bool:
    """Whether the spec (or an override) names an input size, rather than leaving the default."""
    return spec.input_size is not None


def parse_size(value: Any) -> tuple[int, int] | None:
    """``(height, width)`` from an int, a pair, or their text (``"224"``, ``"[224, 224]"``); ``None`` if absent."""
    if value is None:
        return None
    if isinstance(value, str):
        value = ast.literal_eval(value)
    if isinstance(value, (int, float)):
        return int(value), int(value)
    height, width = value
    return int(height), int(width)


def ultralytics_resize_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """ultralytics' host-side ``Resize`` + ``CenterCrop`` (torchvision on a PIL image) of a uint8 HWC image.

    A square ``size`` resizes the shorter side to it, keeping the aspect ratio; another ``(h, w)`` stretches to
    it. Channel order does not matter to either step: BGR in, BGR out, as in ultralytics.
    """
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    height, width = size
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture = F.resize(picture, height if height == width else [height, width], InterpolationMode.BILINEAR)
    return np.asarray(F.center_crop(picture, [height, width]))
