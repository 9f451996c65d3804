"""Image pre-processing that more than one model family uses: ImageNet's channel statistics and letterboxing."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

# ImageNet's per-channel mean and standard deviation, RGB order on the 0..1 scale: the normalisation most
# torchvision and ImageNet-trained models expect (and the default where a spec gives no mean/std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PAD_VALUE = 114  # ultralytics' letterbox grey


class LetterboxGeometry(NamedTuple):
    """Where a ``width`` x ``height`` picture lands: resized to ``new_width`` x ``new_height``, then padded."""

    new_width: int
    new_height: int
    top: int
    bottom: int
    left: int
    right: int


def letterbox_geometry(width: int, height: int, size: int, stride: int, minimal: bool) -> LetterboxGeometry:
    """:func:`letterbox`'s arithmetic (ultralytics' rounding): scale to fit ``size``, pad to ``size`` x ``size``
    or, with ``minimal``, only to the next multiple of ``stride`` on each side; the odd pixel goes bottom/right."""
    r = min(size / height, size / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = size - new_w, size - new_h
    if minimal:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    return LetterboxGeometry(new_w, new_h, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))


def letterbox(image: np.ndarray, size: int, stride: int, minimal: bool) -> np.ndarray:
    """Resize keeping aspect ratio, then pad with grey: to ``size`` x ``size``, or, with ``minimal``, only up
    to the next multiple of ``stride`` on each side (ultralytics ``LetterBox(auto=True)``)."""
    h, w = image.shape[:2]
    box = letterbox_geometry(w, h, size, stride, minimal)
    if (w, h) != (box.new_width, box.new_height):
        image = cv2.resize(image, (box.new_width, box.new_height), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(
        image, box.top, box.bottom, box.left, box.right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
