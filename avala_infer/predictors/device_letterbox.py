"""Letterboxing a picture that is already a tensor (decoded on the GPU), with imaging.letterbox's geometry.

The same output size, offsets and 114 grey as :func:`avala_infer.predictors.imaging.letterbox` (ultralytics'
rounding), so the boxes map back to the original pixels by the same arithmetic. The resize is bilinear with
half-pixel centres and no antialiasing (``interpolate(align_corners=False, antialias=False)``), which is what cv2's
``INTER_LINEAR`` computes; cv2 does it in 11-bit fixed point on uint8, torch in float32 rounded once, so a pixel
may differ by one grey level (tests/test_device_letterbox.py measures it on coco128, up- and downscaling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from avala_infer.predictors.imaging import PAD_VALUE

if TYPE_CHECKING:
    import torch


class LetterboxGeometry(NamedTuple):
    """Where a ``width`` x ``height`` picture lands: resized to ``new_width`` x ``new_height``, then padded."""

    new_width: int
    new_height: int
    top: int
    bottom: int
    left: int
    right: int


def letterbox_geometry(width: int, height: int, size: int, stride: int, minimal: bool) -> LetterboxGeometry:
    """imaging.letterbox's arithmetic: scale to fit ``size``, pad to ``size`` x ``size`` or, with ``minimal``,
    only to the next multiple of ``stride`` on each side; the odd pixel of padding goes bottom/right."""
    r = min(size / height, size / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = size - new_w, size - new_h
    if minimal:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    return LetterboxGeometry(new_w, new_h, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))


def letterbox_tensor(image: torch.Tensor, size: int, stride: int, minimal: bool) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 picture letterboxed to a ``(3, H', W')`` uint8 one on the same device."""
    import torch
    import torch.nn.functional as F

    if image.ndim != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected a (C, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
    height, width = image.shape[1:]
    box = letterbox_geometry(width, height, size, stride, minimal)
    if (box.new_width, box.new_height) != (width, height):
        resized = F.interpolate(
            image[None].float(),
            size=(box.new_height, box.new_width),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return F.pad(image, (box.left, box.right, box.top, box.bottom), value=PAD_VALUE)
