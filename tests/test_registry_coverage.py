"""Every registered (model type, backend) pair runs through the engine; a new pair without coverage fails here."""

from __future__ import annotations

import pytest

from avala_infer.registry import registered
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need

# (model type, backend) -> real weights in the shared assets that exercise it
COVERAGE = {
    (ModelType.OBJECT_DETECTION, "ultralytics"): "yolo11n.pt",
    (ModelType.OBJECT_DETECTION, "onnxruntime"): "yolo11n.onnx",
    (ModelType.INSTANCE_SEGMENTATION, "ultralytics"): "yolo11n-seg.pt",
    (ModelType.INSTANCE_SEGMENTATION, "onnxruntime"): "yolo11n-seg.onnx",
}


def test_every_registered_pair_is_covered():
    missing = sorted(f"{t.value}/{b}" for t, b in set(registered()) - set(COVERAGE))
    assert not missing, f"registered without a test model: {missing}; add them to COVERAGE"


@pytest.mark.parametrize("pair", sorted(COVERAGE, key=lambda k: (k[0].value, k[1])), ids=lambda k: f"{k[0]}-{k[1]}")
def test_pair_runs_through_the_engine(pair, sample_images):
    from avala_infer import Engine

    model_type, backend = pair
    weights = need(ASSETS / "models" / COVERAGE[pair])
    spec = ModelSpec(name=f"test-{weights.name}", model_type=model_type, backend=backend, weights=str(weights))
    engine = Engine(spec, device="cpu", batch_size=2)
    assert type(engine.predictor).backend == backend and engine.model_type is model_type
    predictions = list(engine.predict(sample_images, labels=["person", "bus"]))
    assert [p.ok for p in predictions] == [True] * len(sample_images)
    for p in predictions:
        d = p.detections
        assert len(d) > 0 and set(d.class_name) <= {"person", "bus"}
        if model_type is ModelType.INSTANCE_SEGMENTATION:
            assert d.mask is not None and d.mask.shape == (len(d), p.height, p.width) and d.mask.any((1, 2)).all()
        else:
            assert d.mask is None
