"""Issue 13, item 5: the tensor letterbox (for pictures decoded on the GPU) lands every picture where
imaging.letterbox (cv2) does, padded with the same grey, and its bilinear resize stays within one grey level of
cv2's INTER_LINEAR (measured on coco128, shrinking and enlarging). Run on CPU tensors here; the code is the same
on a GPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from avala_infer.predictors.device_letterbox import letterbox_geometry, letterbox_tensor
from avala_infer.predictors.imaging import PAD_VALUE, letterbox
from tests.conftest import VAL_IMAGES, need

# (height, width): landscape, portrait, square, exact fits, tiny, thin, odd, larger and smaller than the target
SHAPES = [(480, 640), (640, 480), (640, 640), (427, 640), (640, 427), (1, 1), (1, 500), (500, 1), (3, 7),
          (333, 517), (1080, 810), (720, 1280), (100, 100), (2000, 3000), (31, 33), (64, 32)]  # fmt: skip
# Measured on all of coco128 val2017 (rect, stride 32): mean |difference| 0.114 grey levels shrinking to 320,
# 0.024 at 640 (26 of 128 resized), 0.114 enlarging to 1024; no pixel differed by more than 1. The bounds leave
# a margin.
MEAN_BOUND, MAX_BOUND = 0.2, 1


def as_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


def as_hwc(chw: torch.Tensor) -> np.ndarray:
    return chw.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("minimal", [True, False], ids=["rect", "square"])
@pytest.mark.parametrize("size", [640, 320, 1024, 224])
def test_the_geometry_and_padding_match_the_cv2_letterbox(size, minimal):
    for height, width in SHAPES:
        flat = np.full((height, width, 3), 7, np.uint8)  # a flat picture resizes to itself: only geometry shows
        theirs = letterbox(flat, size, 32, minimal)
        ours = as_hwc(letterbox_tensor(as_chw(flat), size, 32, minimal))
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), (height, width)
        box = letterbox_geometry(width, height, size, 32, minimal)
        inside = ours[box.top : box.top + box.new_height, box.left : box.left + box.new_width]
        assert (inside == 7).all() and (ours == PAD_VALUE).sum() == ours.size - inside.size, (height, width)
        if minimal:
            assert ours.shape[0] % 32 == 0 and ours.shape[1] % 32 == 0 and max(ours.shape[:2]) == size
        else:
            assert ours.shape[:2] == (size, size)


@pytest.mark.assets
@pytest.mark.parametrize("size", [320, 640, 1024], ids=["shrink", "as-is", "enlarge"])
def test_the_resize_stays_within_one_grey_level_of_cv2_on_coco128(size):
    differences = []
    resized = 0
    for path in sorted(need(VAL_IMAGES).glob("*.jpg"))[::4]:  # 32 pictures: the bound is the same on all 128
        picture = cv2.imread(str(path))
        theirs = letterbox(picture, size, 32, True)
        ours = as_hwc(letterbox_tensor(as_chw(picture), size, 32, True))
        assert ours.shape == theirs.shape, path
        differences.append(np.abs(ours.astype(np.int16) - theirs).ravel())
        resized += max(picture.shape[:2]) != size
    every = np.concatenate(differences)
    mean, p99, worst = every.mean(), np.percentile(every, 99), every.max()
    print(f"letterbox {size}: {resized} of {len(differences)} resized; |torch - cv2| mean {mean:.4f}, "
          f"99th percentile {p99:.0f}, max {worst}, pixels differing {np.mean(every > 0):.2%}")  # fmt: skip
    assert resized > 0
    assert mean <= MEAN_BOUND and p99 <= MAX_BOUND and worst <= MAX_BOUND


def test_only_chw_uint8_pictures_are_taken():
    with pytest.raises(ValueError, match="uint8"):
        letterbox_tensor(torch.zeros(3, 8, 8), 32, 32, True)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        letterbox_tensor(torch.zeros(8, 8, dtype=torch.uint8), 32, 32, True)
