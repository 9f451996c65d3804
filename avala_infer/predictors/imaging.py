"""Image pre-processing that more than one model family uses: ImageNet's channel statistics and letterboxing."""

from __future__ import annotations

import cv2
import numpy as np

# ImageNet's per-channel mean and standard deviation, RGB order on the 0..1 scale: the normalisation most
# torchvision and ImageNet-trained models expect (and the default where a spec gives no mean/std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PAD_VALUE = 114  # ultralytics' letterbox grey


def letterbox(image: np.ndarray, size: int, stride: int, minimal: bool) -> np.ndarray:
    """Resize keeping aspect ratio, then pad with grey: to ``size`` x ``size``, or, with ``minimal``, only up
    to the next multiple of ``stride`` on each side (ultralytics ``LetterBox(auto=True)``)."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = size - new_w, size - new_h
    if minimal:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
