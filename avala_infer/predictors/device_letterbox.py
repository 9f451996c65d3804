"""Letterboxing a picture that is already a tensor (decoded on the GPU), with imaging.letterbox's geometry.

The same output size, offsets and 114 grey as :func:`avala_infer.predictors.imaging.letterbox` (ultralytics'
rounding), so the boxes map back to the original pixels by the same arithmetic. The resize is bilinear with
half-pixel centres and no antialiasing (``interpolate(align_corners=False, antialias=False)``), which is what cv2's
``INTER_LINEAR`` computes; cv2 does it in 11-bit fixed point on uint8, torch in float32 rounded once, so a pixel
may differ by one grey level (tests/test_device_letterbox.py measures it on coco128, up- and downscaling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avala_infer.predictors.imaging import PAD_VALUE, letterbox_geometry

if TYPE_CHECKING:
    import torch


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
