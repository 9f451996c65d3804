"""The detectors' NMS is torchvision's kernel, loaded without importing the torchvision package (whose import pulls in
torch._dynamo: a second or more of every run's start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from avala_infer.predictors import nms_kernel
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
