"""(model type, backend) -> predictor class, imported only when asked for.

Entries are ``"module:Class"`` strings so that listing what is registered imports no backend.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from avala_infer.errors import BackendUnavailableError, ConfigError
from avala_infer.types import ModelType

if TYPE_CHECKING:
    from avala_infer.predictors.base import Predictor

# What each backend needs installed, for the error a missing one raises.
BACKEND_PACKAGES = {
    "ultralytics": ("ultralytics", "pip install 'avala-infer[ultralytics]'"),
    "onnxruntime": ("onnxruntime", "pip install 'avala-infer[onnx]' (or onnxruntime-gpu for CUDA)"),
    "torchvision": ("torchvision", "pip install torchvision"),
    "transformers": ("transformers", "pip install 'avala-infer[transformers]'"),
}

_REGISTRY: dict[tuple[ModelType, str], str] = {}


def register(model_type: ModelType | str, backend: str, target: str) -> None:
    """Register ``target`` (``"package.module:ClassName"``) for a pair; a pair registers once."""
    key = (ModelType.parse(model_type), backend)
    if key in _REGISTRY:
        raise ConfigError(f"{key[0].value}/{backend} is already registered to {_REGISTRY[key]}")
    if ":" not in target:
        raise ConfigError(f"registry target {target!r} must look like 'package.module:ClassName'")
    _REGISTRY[key] = target


def registered() -> list[tuple[ModelType, str]]:
    """Every registered (model type, backend) pair, sorted."""
    return sorted(_REGISTRY, key=lambda k: (k[0].value, k[1]))


def get_predictor_class(model_type: ModelType | str, backend: str) -> type[Predictor]:
    """Import and return the predictor class; unknown pairs list the valid ones."""
    key = (ModelType.parse(model_type), backend)
    target = _REGISTRY.get(key)
    if target is None:
        valid = ", ".join(f"{t.value}/{b}" for t, b in registered())
        raise ConfigError(f"no predictor for {key[0].value} with backend {backend!r}; registered pairs: {valid}")
    package, install = BACKEND_PACKAGES.get(backend, (None, None))
    if package is not None and importlib.util.find_spec(package) is None:
        raise BackendUnavailableError(f"backend {backend!r} needs the {package!r} package: {install}")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


register(ModelType.OBJECT_DETECTION, "ultralytics", "avala_infer.predictors.detection.ultralytics:UltralyticsDetector")
register(ModelType.OBJECT_DETECTION, "onnxruntime", "avala_infer.predictors.detection.onnx:OnnxYoloDetector")
register(
    ModelType.INSTANCE_SEGMENTATION, "ultralytics", "avala_infer.predictors.detection.ultralytics:UltralyticsSegmenter"
)
register(ModelType.INSTANCE_SEGMENTATION, "onnxruntime", "avala_infer.predictors.detection.onnx:OnnxYoloSegmenter")
register(
    ModelType.SEMANTIC_SEGMENTATION,
    "torchvision",
    "avala_infer.predictors.segmentation.torchvision:TorchvisionSemanticSegmenter",
)
register(
    ModelType.SEMANTIC_SEGMENTATION,
    "transformers",
    "avala_infer.predictors.segmentation.transformers:TransformersSemanticSegmenter",
)
register(
    ModelType.SEMANTIC_SEGMENTATION, "onnxruntime", "avala_infer.predictors.segmentation.onnx:OnnxSemanticSegmenter"
)
register(
    ModelType.IMAGE_CLASSIFICATION,
    "ultralytics",
    "avala_infer.predictors.classification.ultralytics:UltralyticsClassifier",
)
register(
    ModelType.IMAGE_CLASSIFICATION,
    "torchvision",
    "avala_infer.predictors.classification.torchvision:TorchvisionClassifier",
)
register(
    ModelType.IMAGE_CLASSIFICATION,
    "transformers",
    "avala_infer.predictors.classification.transformers:TransformersImageClassifier",
)
register(
    ModelType.IMAGE_CLASSIFICATION, "onnxruntime", "avala_infer.predictors.classification.onnx:OnnxImageClassifier"
)
register(
    ModelType.TEXT_CLASSIFICATION, "transformers", "avala_infer.predictors.text.transformers:TransformersTextClassifier"
)
register(ModelType.TEXT_CLASSIFICATION, "onnxruntime", "avala_infer.predictors.text.onnx:OnnxTextClassifier")
register(
    ModelType.NAMED_ENTITY_RECOGNITION,
    "transformers",
    "avala_infer.predictors.text.transformers:TransformersTokenClassifier",
)
register(ModelType.NAMED_ENTITY_RECOGNITION, "onnxruntime", "avala_infer.predictors.text.onnx:OnnxTokenClassifier")
register(ModelType.INSTANCE_SEGMENTATION, "transformers", "avala_infer.engine.chains:DetectorSamChain")
register(ModelType.OBJECT_DETECTION, "transformers", "avala_infer.predictors.detection.open_vocab:OpenVocabDetector")
