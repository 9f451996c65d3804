"""The detectors' NMS is torchvision's kernel, loaded without importing the torchvision package (whose import pulls in
torch._dynamo: a second or more of every run's start-up); an ONNX detector on the CPU runs its twin in numpy
(``host_nms``) and never imports torch at all."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from avala_infer.predictors import host_nms, nms_kernel
from tests.conftest import ASSETS, VAL_IMAGES, need


def random_boxes(count: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 600
    sizes = torch.rand(count, 2, generator=generator) * 120 + 1
    scores = torch.rand(count, generator=generator)
    quarter = count // 4
    scores[:quarter] = scores[quarter : 2 * quarter]  # ties: the kernel breaks them as torchvision's does
    return torch.cat((corners, corners + sizes), 1), scores


def test_the_kernel_keeps_what_torchvision_ops_nms_keeps():
    import torchvision

    assert nms_kernel.extension_path() is not None  # found beside the package, without importing it
    for seed, count in enumerate((0, 1, 7, 300, 3000)):
        boxes, scores = random_boxes(count, seed)
        for iou in (0.3, 0.7):
            ours = nms_kernel.nms(boxes, scores, iou)
            assert ours.tolist() == torchvision.ops.nms(boxes, scores, iou).tolist()


def test_without_the_extension_file_the_package_loads_it(monkeypatch):
    monkeypatch.setattr(nms_kernel, "_kernel", None)
    monkeypatch.setattr(nms_kernel, "extension_path", lambda: None)
    boxes, scores = random_boxes(200, 9)
    import torchvision

    assert nms_kernel.nms(boxes, scores, 0.5).tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist()
    assert nms_kernel._kernel is torchvision.ops.nms


@pytest.mark.parametrize("name", ["yolo11n.pt", "yolo11n.onnx"])
def test_a_yolo_run_imports_neither_torchvision_nor_dynamo(name):
    """A fresh process: the engine predicts one photo with real weights and finds its boxes without the torchvision
    package or torch._dynamo in ``sys.modules``."""
    image = need(VAL_IMAGES / "000000000139.jpg")
    model = need(ASSETS / "models" / name)
    code = (
        "import sys\n"
        "from avala_infer import Engine\n"
        f"with Engine({str(model)!r}, device='cpu') as engine:\n"
        f"    found = next(engine.predict([{str(image)!r}])).detections\n"
        "print(len(found), 'torchvision' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    count, torchvision_imported, dynamo_imported = done.stdout.split()
    assert int(count) > 5
    assert torchvision_imported == "False" and dynamo_imported == "False"


def test_numpy_nms_keeps_what_torchvision_keeps():
    """``host_nms.nms``: the same indices in the same order as ``torchvision.ops.nms``, ties in scores and in
    overlaps (boxes on whole and eighth pixels) included, at thresholds from 0 to 1."""
    import torchvision

    for seed, count in enumerate((0, 1, 2, 7, 300, 3000)):
        boxes, scores = random_boxes(count, seed)
        for grid in (boxes, boxes.round(), (boxes * 8).round() / 8):
            for iou in (0.0, 0.3, 0.45, 0.7, 1.0):
                expected = torchvision.ops.nms(grid, scores, iou).tolist()
                assert host_nms.nms(grid.numpy(), scores.numpy(), iou).tolist() == expected, (seed, iou)


def test_class_aware_numpy_nms_keeps_what_one_torchvision_call_keeps():
    """``host_nms.class_nms`` (one NMS per class where the shift keeps classes apart) keeps what torchvision keeps
    of the shifted boxes in one call; and where the boxes span more than the shift, so shifted boxes of two classes
    overlap, it runs the one call itself and still agrees."""
    import torch
    import torchvision

    for seed, count in enumerate((1, 2, 50, 300, 3000)):
        boxes, scores = random_boxes(count, seed)
        generator = torch.Generator().manual_seed(seed)
        for classes_count, shift in ((1, 7680), (3, 7680), (80, 7680), (3, 400)):  # 400: classes overlap
            classes = torch.randint(0, classes_count, (count,), generator=generator).float()
            for iou in (0.0, 0.3, 0.7):
                expected = torchvision.ops.nms(boxes + classes[:, None] * shift, scores, iou).tolist()
                ours = host_nms.class_nms(boxes.numpy(), scores.numpy(), classes.numpy(), iou, shift)
                assert ours.tolist() == expected, (seed, classes_count, shift, iou)


@pytest.fixture(scope="module")
def onnx_raw_outputs():
    """yolo11n.onnx's raw outputs on 48 coco128 images, one rect batch of one image each."""
    import cv2

    from avala_infer.predictors.detection.onnx import OnnxYoloDetector
    from avala_infer.specs import find_spec

    weights = need(ASSETS / "models" / "yolo11n.onnx")
    predictor = OnnxYoloDetector(find_spec(weights), weights, "cpu", threads=2)
    images = [cv2.imread(str(path)) for path in sorted(VAL_IMAGES.glob("*.jpg"))[:48]]
    return [predictor.forward(predictor.collate([predictor.prepare(image)])) for image in images]


@pytest.mark.parametrize("score_floor", [0.25, 0.001])
@pytest.mark.parametrize("with_floors", [False, True])
def test_numpy_batched_nms_gives_the_torch_rows(onnx_raw_outputs, score_floor, with_floors):
    """``batched_nms`` of numpy outputs (an ONNX detector on the CPU) gives the rows the torch path gives for the
    same outputs, bit for bit: at the default floor, at an evaluation's (100+ candidates an image), and with a
    run's per-label floors (three labels kept)."""
    import torch

    from avala_infer.predictors.detection.yolo import batched_nms

    floors = None
    if with_floors:
        floors = np.full(80, np.inf, np.float32)
        floors[[0, 2, 56]] = 0.3
    rows_total = 0
    for raw in onnx_raw_outputs:
        assert isinstance(raw, np.ndarray)
        rows, counts = batched_nms(raw, score_floor, 0.7, 80, 300, floors)
        expected_rows, expected_counts = batched_nms(torch.from_numpy(raw), score_floor, 0.7, 80, 300, floors)
        assert isinstance(rows, np.ndarray) and counts == expected_counts
        np.testing.assert_array_equal(rows, expected_rows.numpy())
        rows_total += len(rows)
    assert rows_total > (3000 if score_floor < 0.01 and not with_floors else 100)


def test_an_onnx_detection_run_on_the_cpu_never_imports_torch():
    """A fresh process labels a photo with yolo11n.onnx through the Engine (on ``auto`` where the host has no NVIDIA
    driver, as here), the ``label`` writers and a dry run's preview, on ``cpu``: boxes found, torch never
    imported."""
    image = need(VAL_IMAGES / "000000000139.jpg")
    model = need(ASSETS / "models" / "yolo11n.onnx")
    code = (
        "import sys, tempfile\n"
        "from avala_infer import Engine, label\n"
        "from avala_infer.predictors.base import cuda_driver_loads\n"
        "device = 'cpu' if cuda_driver_loads() else 'auto'\n"
        f"with Engine({str(model)!r}, device=device) as engine:\n"
        f"    found = next(engine.predict([{str(image)!r}])).detections\n"
        "out = tempfile.mkdtemp()\n"
        f"label([{str(image)!r}], model={str(model)!r}, device='cpu', out=out, formats=['coco', 'yolo'])\n"
        f"label([{str(image)!r}], model={str(model)!r}, device='cpu', out=out + '/dry', dry_run=True)\n"
        "print(len(found), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    count, torch_imported = done.stdout.split()
    assert int(count) > 5 and torch_imported == "False"


@pytest.mark.parametrize("max_det", [None, 300, 5])
@pytest.mark.parametrize("with_floors", [False, True])
def test_numpy_end_to_end_rows_are_the_torch_rows(max_det, with_floors):
    """An end-to-end head's outputs (YOLO26, or an export with NMS in its graph: each image's rows by descending
    score) cut by the score floor, a run's per-label floors and ``max_det`` the same way in numpy (an ONNX
    detector on the CPU) as in torch: the same rows, the same counts per image."""
    import torch

    from avala_infer.predictors.detection.yolo import end_to_end_rows

    generator = np.random.default_rng(3)
    batch, rows, classes = 4, 300, 80
    raw = np.zeros((batch, rows, 6 + 32), np.float32)
    raw[..., :4] = generator.random((batch, rows, 4), np.float32) * 640
    raw[..., 4] = -np.sort(-generator.random((batch, rows), np.float32), axis=1)  # by descending score
    raw[..., 5] = generator.integers(0, classes, (batch, rows)).astype(np.float32)
    raw[..., 6:] = generator.standard_normal((batch, rows, 32), np.float32)
    raw[2, :, 4] = 0.1  # an image with nothing above the floor
    floors = None
    if with_floors:
        floors = np.full(classes, np.inf, np.float32)
        floors[[0, 3, 7, 41]] = 0.5
    found, counts = end_to_end_rows(raw, 0.25, max_det, floors)
    expected, expected_counts = end_to_end_rows(torch.from_numpy(raw), 0.25, max_det, floors)
    assert isinstance(found, np.ndarray) and counts == expected_counts
    np.testing.assert_array_equal(found, expected.numpy())
    assert counts[2] == 0 and sum(counts) > 0
    if max_det is not None:
        assert max(counts) <= max_det
