"""Registry coverage: semantic segmentation on torchvision and transformers (tiny random models built here) and
onnxruntime (the shared PP-OCRv4 text detector). The tiny-model builders serve tests/test_semantic_segmentation.py
too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avala_infer.annotations import SemanticMask
from avala_infer.specs import ModelSpec, load_spec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, REPO, need
from tests.coverage_base import Case, Coverage

SKIMAGE = ASSETS / "images" / "skimage"
TINY_LABELS = ("sky", "road", "car", "tree")


def _calibrate_batch_norms(model, images: list[Path], size: tuple[int, int]) -> None:
    """Running statistics measured on real images, so that a randomly initialised network's features (and its
    class map) vary over the image instead of one class winning everywhere."""
    import cv2
    import torch

    pixels = np.stack([cv2.resize(cv2.imread(str(p)), size[::-1])[..., ::-1] for p in images])
    batch = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).float() / 255
    batch = (batch - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over what it sees
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


def tiny_torchvision_model(
    tmp_dir: Path, architecture: str = "lraspp_mobilenet_v3_large", num_classes: int = 4, aux: bool = False
):
    """(model, state dict path): a seeded random torchvision segmenter, saved as a state dict."""
    import torch
    import torchvision.models.segmentation as segmentation

    torch.manual_seed(0)
    kwargs = {"aux_loss": True} if aux else {}
    model = getattr(segmentation, architecture)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    _calibrate_batch_norms(model, [need(SKIMAGE / "rocket.jpg"), need(SKIMAGE / "motorcycle_left.png")], (160, 240))
    path = tmp_dir / f"{architecture}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def tiny_segformer_folder(tmp_dir: Path, labels: tuple[str, ...] = TINY_LABELS, size: int = 64) -> Path:
    """A seeded random two-stage SegFormer and its image processor, saved with ``save_pretrained``."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    folder = tmp_dir / "tiny-segformer"
    SegformerForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def _check_mask(labels: tuple[str, ...]):
    def check(p) -> None:
        mask = p.result
        assert isinstance(mask, SemanticMask)
        assert mask.shape == (p.height, p.width) and mask.labels == labels
        assert mask.class_map.min() >= -1 and mask.class_map.max() < len(labels)
        assert (mask.class_map >= 0).any()
        assert ((mask.score_map >= 0) & (mask.score_map <= 1)).all()

    return check


def _torchvision_case(tmp_dir: Path) -> Case:
    _, weights = tiny_torchvision_model(tmp_dir)
    spec = ModelSpec(
        name="tiny-lraspp",
        model_type=ModelType.SEMANTIC_SEGMENTATION,
        backend="torchvision",
        weights=str(weights),
        labels=TINY_LABELS,
        input_size=128,
        params={"architecture": "lraspp_mobilenet_v3_large"},
    )
    return Case(spec, [need(SKIMAGE / "chelsea.png"), need(SKIMAGE / "coffee.png")], _check_mask(TINY_LABELS))


def _transformers_case(tmp_dir: Path) -> Case:
    folder = tiny_segformer_folder(tmp_dir)
    spec = ModelSpec(
        name="tiny-segformer",
        model_type=ModelType.SEMANTIC_SEGMENTATION,
        backend="transformers",
        weights=str(folder),
    )
    return Case(spec, [need(SKIMAGE / "chelsea.png"), need(SKIMAGE / "coffee.png")], _check_mask(TINY_LABELS))


def ppocr_spec() -> ModelSpec:
    """The repository's ``ppocrv4-det`` spec, on the shared weights."""
    weights = need(ASSETS / "models" / "ppocrv4_det.onnx")
    return load_spec(REPO / "models" / "ppocrv4-det.yaml").with_overrides(weights=str(weights))


def _onnx_case(tmp_dir: Path) -> Case:
    check_mask = _check_mask(("text",))

    def check(p) -> None:
        text_share = float((p.result.class_map == 0).mean())
        if Path(p.source).name == "page.png":
            check_mask(p)
            assert 0.15 < text_share < 0.20, text_share
        else:
            assert text_share < 0.001, text_share

    sources = [need(SKIMAGE / "page.png"), need(SKIMAGE / "astronaut.png")]
    return Case(ppocr_spec(), sources, check, {"confidence_threshold": 0.3})


COVERAGE: Coverage = {
    (ModelType.SEMANTIC_SEGMENTATION, "torchvision"): _torchvision_case,
    (ModelType.SEMANTIC_SEGMENTATION, "transformers"): _transformers_case,
    (ModelType.SEMANTIC_SEGMENTATION, "onnxruntime"): _onnx_case,
}
