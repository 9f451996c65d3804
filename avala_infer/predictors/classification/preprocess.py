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
    """ultralytics' host-side ``Resize`` + ``CenterCrop`` of a uint8 HWC image: torchvision's on a PIL image, done
    here with PIL alone (what torchvision calls; no torch import: an ONNX ``-cls`` run needs none).

    A square ``size`` resizes the shorter side to it, keeping the aspect ratio (the longer side to
    ``int(size * long / short)``, as torchvision computes it); another ``(h, w)`` stretches to it. An image already
    that size is not resampled. The crop starts at ``int(round((side - crop) / 2.0))`` on each axis; the resized
    image is never smaller than the crop, so torchvision's padding never applies. Channel order does not matter to
    either step: BGR in, BGR out, as in ultralytics.
    """
    from PIL import Image

    height, width = size
    image_height, image_width = image.shape[:2]
    if height == width:
        short, long = sorted((image_width, image_height))
        new_short, new_long = height, int(height * long / short)
        new_width, new_height = (new_short, new_long) if image_width <= image_height else (new_long, new_short)
    else:
        new_width, new_height = width, height
    picture = Image.fromarray(np.ascontiguousarray(image))
    if (new_height, new_width) != (image_height, image_width):
        picture = picture.resize((new_width, new_height), Image.BILINEAR)
    top, left = int(round((new_height - height) / 2.0)), int(round((new_width - width) / 2.0))
    return np.asarray(picture.crop((left, top, left + width, top + height)))
