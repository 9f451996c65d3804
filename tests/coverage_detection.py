"""Registry coverage: object detection and instance segmentation, on the shared YOLO11n weights."""

from __future__ import annotations

from pathlib import Path

from avala_infer.annotations import Detections
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.coverage_base import Case, Coverage


def _yolo_case(model_type: ModelType, backend: str, weights_name: str):
    def make(tmp_dir: Path) -> Case:
        weights = need(ASSETS / "models" / weights_name)
        images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))
        spec = ModelSpec(name=f"test-{weights.name}", model_type=model_type, backend=backend, weights=str(weights))

        def check(p):
            d = p.result
            assert isinstance(d, Detections)
            assert len(d) > 0 and set(d.class_name) <= {"person", "bus"}
            if model_type is ModelType.INSTANCE_SEGMENTATION:
                assert d.mask is not None and d.mask.shape == (len(d), p.height, p.width)
                assert d.mask.any((1, 2)).all()
            else:
                assert d.mask is None

        return Case(spec, images, check, {"labels": ["person", "bus"]})

    return make


COVERAGE: Coverage = {
    (ModelType.OBJECT_DETECTION, "ultralytics"): _yolo_case(ModelType.OBJECT_DETECTION, "ultralytics", "yolo11n.pt"),
    (ModelType.OBJECT_DETECTION, "onnxruntime"): _yolo_case(ModelType.OBJECT_DETECTION, "onnxruntime", "yolo11n.onnx"),
    (ModelType.INSTANCE_SEGMENTATION, "ultralytics"): _yolo_case(
        ModelType.INSTANCE_SEGMENTATION, "ultralytics", "yolo11n-seg.pt"
    ),
    (ModelType.INSTANCE_SEGMENTATION, "onnxruntime"): _yolo_case(
        ModelType.INSTANCE_SEGMENTATION, "onnxruntime", "yolo11n-seg.onnx"
    ),
}
