"""Semantic segmentation on torchvision, transformers and onnxruntime: parity with each library's own reference on
the same weights and inputs (tiny seeded random models), the shared PP-OCRv4 text detector's figures, and the
engine's per-pixel filtering."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avala_infer.annotations import SemanticMask
from avala_infer.errors import ConfigError, ModelLoadError, ModelSpecError
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.coverage_semantic import TINY_LABELS, ppocr_spec, tiny_segformer_folder, tiny_torchvision_model

SKIMAGE = ASSETS / "images" / "skimage"
INPUT_SIZE = 160  # chelsea (300x451) and coffee (400x600) both resize to 160x240: one batch of two sizes
# the README: class maps equal the references "on >= 99.999% of pixels" (measured: every pixel, 0 differ)
CLASS_MAP_AGREEMENT = 0.99999
SCORE_TOLERANCE = 1e-4  # measured: within 5.3e-6 (torchvision), 3e-8 (transformers)


def _rgb(path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


def _torchvision_spec(weights, architecture: str, **changes) -> ModelSpec:
    fields = {
        "name": f"tiny-{architecture}",
        "model_type": ModelType.SEMANTIC_SEGMENTATION,
        "backend": "torchvision",
        "weights": str(weights),
        "labels": TINY_LABELS,
        "input_size": INPUT_SIZE,
        "params": {"architecture": architecture},
    }
    return ModelSpec(**{**fields, **changes})


def _agreement(mask: SemanticMask, class_id: np.ndarray, score: np.ndarray, what: str) -> tuple[float, float]:
    """The share of pixels whose class equals the reference's, and the largest score difference (printed)."""
    assert mask.class_map.shape == class_id.shape
    differ = int((mask.class_map != class_id).sum())
    same = 1 - differ / class_id.size
    worst = float(np.abs(mask.score_map - score).max())
    print(
        f"{what}: class maps equal on {same:.7%} of pixels ({differ} of {class_id.size} differ), "
        f"score maps within {worst:.2e}"
    )
    return same, worst


def _photos() -> list:
    return [need(SKIMAGE / "chelsea.png"), need(SKIMAGE / "coffee.png")]


@pytest.fixture(scope="module")
def lraspp(tmp_path_factory):
    model, weights = tiny_torchvision_model(tmp_path_factory.mktemp("lraspp"))
    return model, weights


@pytest.fixture(scope="module")
def ppocr_engine():
    from avala_infer import Engine

    return Engine(ppocr_spec(), device="cpu")


@pytest.mark.parametrize(
    "architecture, aux", [("lraspp_mobilenet_v3_large", False), ("deeplabv3_mobilenet_v3_large", True)]
)
def test_torchvision_matches_its_preset_and_model(architecture, aux, tmp_path):
    """Our class and score maps equal torchvision's: the weights' own transforms on the uint8 image, the model's
    "out", bilinear to the original size, softmax; two photos of different sizes share one batch."""
    import torch
    import torch.nn.functional as F
    import torchvision

    from avala_infer import Engine

    model, weights = tiny_torchvision_model(tmp_path, architecture, len(TINY_LABELS), aux=aux)
    engine = Engine(_torchvision_spec(weights, architecture), device="cpu", batch_size=2, streams=1, trust_weights=True)
    assert engine.labels == TINY_LABELS
    photos = _photos()
    keys = {engine.predictor.batch_key(engine.predictor.prepare(cv2.imread(str(p)))) for p in photos}
    assert keys == {(INPUT_SIZE, 240)}
    preset = torchvision.models.get_model_weights(architecture).DEFAULT.transforms(resize_size=INPUT_SIZE)
    classes_seen = set()
    for prediction, path in zip(engine.predict(photos, confidence_threshold=0.0), photos):
        assert prediction.ok, prediction.error
        image = _rgb(path)
        with torch.inference_mode():
            x = preset(torch.from_numpy(image).permute(2, 0, 1))
            logits = F.interpolate(model(x[None])["out"], size=image.shape[:2], mode="bilinear", align_corners=False)
            score, class_id = logits.softmax(1)[0].max(0)
        mask = prediction.result
        assert mask.shape == image.shape[:2]
        same, worst = _agreement(mask, class_id.numpy(), score.numpy(), f"{architecture} {path.name}")
        assert same >= CLASS_MAP_AGREEMENT and worst <= SCORE_TOLERANCE
        classes_seen |= set(np.unique(class_id.numpy()).tolist())
    assert len(classes_seen) >= 2  # the random model is not trivially one class


def test_torchvision_voc_label_set(tmp_path):
    import torchvision

    from avala_infer import Engine

    _, weights = tiny_torchvision_model(tmp_path, num_classes=21)
    spec = _torchvision_spec(
        weights,
        "lraspp_mobilenet_v3_large",
        labels="from_weights",
        params={"architecture": "lraspp_mobilenet_v3_large", "label_set": "voc"},
    )
    engine = Engine(spec, device="cpu", trust_weights=True)  # a .pth the test built
    voc = torchvision.models.segmentation.LRASPP_MobileNet_V3_Large_Weights.DEFAULT.meta["categories"]
    assert engine.labels == tuple(voc) and len(voc) == 21


def test_torchvision_spec_errors(lraspp):
    from avala_infer import Engine

    _, weights = lraspp
    with pytest.raises(ModelSpecError, match="deeplabv3_resnet50, .*lraspp_mobilenet_v3_large"):
        Engine(_torchvision_spec(weights, "x", params={}), device="cpu", trust_weights=True)
    with pytest.raises(ModelSpecError, match="unknown params"):
        spec = _torchvision_spec(weights, "x", params={"architecture": "fcn_resnet50", "arch": 1})
        Engine(spec, device="cpu", trust_weights=True)
    with pytest.raises(ConfigError, match="label_set: voc"):
        spec = _torchvision_spec(weights, "lraspp_mobilenet_v3_large", labels="from_weights")
        Engine(spec, device="cpu", trust_weights=True)
    with pytest.raises(ModelLoadError, match="3 classes"):
        spec = _torchvision_spec(weights, "lraspp_mobilenet_v3_large", labels=("a", "b", "c"))
        Engine(spec, device="cpu", trust_weights=True)
    with pytest.raises(ModelLoadError, match="does not fit deeplabv3_mobilenet_v3_large"):
        Engine(_torchvision_spec(weights, "deeplabv3_mobilenet_v3_large"), device="cpu", trust_weights=True)


def test_labels_filter_and_per_pixel_threshold(lraspp):
    from avala_infer import Engine

    _, weights = lraspp
    engine = Engine(
        _torchvision_spec(weights, "lraspp_mobilenet_v3_large"), device="cpu", batch_size=2, trust_weights=True
    )
    photos = _photos()
    everything = [p.result for p in engine.predict(photos, confidence_threshold=0.0)]
    present = np.unique(np.concatenate([m.class_map.ravel() for m in everything]))
    assert (present >= 0).all() and len(present) >= 2
    keep = TINY_LABELS[int(present[0])]
    for unfiltered, p in zip(everything, engine.predict(photos, confidence_threshold=0.0, labels=[keep])):
        mask = p.result
        assert mask.labels == (keep,)
        assert set(np.unique(mask.class_map).tolist()) <= {-1, 0}
        assert np.array_equal(mask.class_map == 0, unfiltered.class_map == present[0])
        np.testing.assert_array_equal(mask.score_map, unfiltered.score_map)
    for unfiltered, p in zip(everything, engine.predict(photos, confidence_threshold=0.5)):
        expected = np.where(unfiltered.score_map >= 0.5, unfiltered.class_map, -1)
        assert np.array_equal(p.result.class_map, expected)


def test_transformers_matches_post_process_semantic_segmentation(tmp_path):
    """Our maps equal the image processor + model + ``post_process_semantic_segmentation`` on PIL images."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from avala_infer import Engine

    folder = tiny_segformer_folder(tmp_path)
    spec = ModelSpec(
        name="tiny-segformer", model_type=ModelType.SEMANTIC_SEGMENTATION, backend="transformers", weights=str(folder)
    )
    engine = Engine(spec, device="cpu", batch_size=2, streams=1)
    assert engine.labels == TINY_LABELS
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
    photos = _photos()
    classes_seen = set()
    for prediction, path in zip(engine.predict(photos, confidence_threshold=0.0), photos):
        assert prediction.ok, prediction.error
        image = _rgb(path)
        pil_pixels = processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
        ours = engine.predictor.prepare(cv2.imread(str(path))).pixel_values
        assert torch.equal(ours, pil_pixels[0])  # RGB arrays give the processor the PIL image's pixels
        with torch.inference_mode():
            outputs = model(pixel_values=pil_pixels)
            (reference,) = processor.post_process_semantic_segmentation(
                outputs, target_sizes=[image.shape[:2]], return_segmentation_scores=True
            )
        class_id = reference.segmentation.numpy()
        score = reference.segmentation_scores.softmax(0).max(0).values.numpy()
        mask = prediction.result
        same, worst = _agreement(mask, class_id, score, f"segformer {path.name}")
        assert same >= CLASS_MAP_AGREEMENT and worst <= SCORE_TOLERANCE
        classes_seen |= set(np.unique(class_id).tolist())
    assert len(classes_seen) >= 2


def test_ppocr_text_pixels(ppocr_engine):
    """PP-OCRv4 on the shared page: about 17.7% of pixels are text at 0.3 (assets README); none on a photo."""
    page, astronaut = need(SKIMAGE / "page.png"), need(SKIMAGE / "astronaut.png")
    share = {}
    for threshold in (0.3, 0.9):
        for p in ppocr_engine.predict([page, astronaut], confidence_threshold=threshold):
            assert p.ok and isinstance(p.result, SemanticMask) and p.result.labels == ("text",)
            assert p.result.shape == (p.height, p.width)
            share[threshold, p.key] = float((p.result.class_map == 0).mean()) * 100
    print(f"text pixels: {share}")
    assert round(share[0.3, "page.png"], 1) == 17.7  # the README's and the assets README's figure
    assert share[0.3, "astronaut.png"] < 0.1
    assert 0 < share[0.9, "page.png"] < share[0.3, "page.png"]


def test_ppocr_labels_filter_drops_the_only_class(ppocr_engine):
    page = need(SKIMAGE / "page.png")
    (p,) = ppocr_engine.predict([page], confidence_threshold=0.3, label_map={"text": None})
    assert p.result.labels == () and (p.result.class_map == -1).all()


def test_a_corrupt_image_fails_only_its_item(ppocr_engine, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    page = need(SKIMAGE / "page.png")
    predictions = list(ppocr_engine.predict([page, bad, page], confidence_threshold=0.3))
    assert [p.ok for p in predictions] == [True, False, True]
    assert "bad.png" in predictions[1].error
    assert np.array_equal(predictions[0].result.class_map, predictions[2].result.class_map)


def _conv_model(path, weights: np.ndarray, fixed: int | None = None) -> None:
    """An ONNX graph whose output is a 1x1 convolution of its input: (N, 3, H, W) -> (N, C, H, W)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = fixed or "H"
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, side, fixed or "W"])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", weights.shape[0], side, fixed or "W"])
    kernel = numpy_helper.from_array(weights.astype(np.float32)[:, :, None, None], "kernel")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "kernel"], ["scores"])], "g", [x], [y], [kernel])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_multi_class_logits_and_fixed_input(tmp_path):
    """C > 1 logits: softmax after bilinear upsampling to the original size, as computed here by hand."""
    import torch
    import torch.nn.functional as F

    from avala_infer import Engine

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3))
    _conv_model(tmp_path / "conv.onnx", kernel)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    params = {"output": "logits", "mean": mean, "std": std, "resize": "fixed"}
    spec = ModelSpec(
        name="conv",
        model_type=ModelType.SEMANTIC_SEGMENTATION,
        backend="onnxruntime",
        weights=str(tmp_path / "conv.onnx"),
        labels=("r", "g", "b"),
        input_size=96,
        params=params,
    )
    photos = _photos()
    engine = Engine(spec, device="cpu", batch_size=2)
    for p, path in zip(engine.predict(photos, confidence_threshold=0.0), photos):
        image = _rgb(path)
        x = cv2.resize(image, (96, 96), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        x = (x - np.float32(mean)) / np.float32(std)
        logits = torch.from_numpy(np.einsum("chw,kc->khw", x.transpose(2, 0, 1), kernel).astype(np.float32))
        up = F.interpolate(logits[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        score, class_id = up.softmax(0).max(0)
        same, worst = _agreement(p.result, class_id.numpy(), score.numpy(), f"conv {path.name}")
        assert same >= CLASS_MAP_AGREEMENT and worst <= SCORE_TOLERANCE
        assert len(np.unique(p.result.class_map)) == 3
    # a graph with a fixed input size is fed that size whatever the spec says
    _conv_model(tmp_path / "fixed.onnx", kernel, fixed=64)
    fixed = Engine(spec.with_overrides(weights=str(tmp_path / "fixed.onnx"), input_size=320), device="cpu")
    assert fixed.predictor.input_size_for(300, 451) == (64, 64)
    assert all(p.ok for p in fixed.predict(photos))


def test_onnx_spec_errors(tmp_path):
    from avala_infer import Engine

    _conv_model(tmp_path / "conv.onnx", np.eye(3))
    base = ModelSpec(
        name="conv",
        model_type=ModelType.SEMANTIC_SEGMENTATION,
        backend="onnxruntime",
        weights=str(tmp_path / "conv.onnx"),
        labels=("r", "g", "b"),
        params={"output": "logits"},
    )
    with pytest.raises(ModelSpecError, match="params.output"):
        Engine(base.with_overrides(params={}), device="cpu")
    with pytest.raises(ModelSpecError, match="3 class channel"):
        Engine(base.with_overrides(labels=("a", "b")), device="cpu")
    with pytest.raises(ModelSpecError, match="params.std"):
        Engine(base.with_overrides(params={"output": "logits", "std": [0, 1, 1]}), device="cpu")
    with pytest.raises(ModelSpecError, match="multiple_of, fixed"):
        Engine(base.with_overrides(params={"output": "logits", "resize": "pad"}), device="cpu")
    with pytest.raises(ConfigError, match="carries no class names"):
        Engine(base.with_overrides(labels="from_weights"), device="cpu")


def test_multiple_of_sizes():
    from avala_infer.predictors.segmentation.onnx import multiple_of_size

    assert multiple_of_size(191, 384, 448, 32, upscale=True) == (224, 448)
    assert multiple_of_size(191, 384, 960, 32, upscale=False) == (192, 384)
    assert multiple_of_size(4000, 10, 960, 32, upscale=True) == (960, 32)
