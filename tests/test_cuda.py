"""CUDA checks: run where torch sees a GPU (skipped elsewhere; CI has none). Prepared to run on a lent GPU host
with ``python -m pytest tests/test_cuda.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reference import count_matches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference_cuda(weights: Path, source: Path) -> dict:
    from ultralytics import YOLO

    out = {}
    for r in YOLO(str(weights)).predict(str(source), stream=True, verbose=False, batch=1, device=0):
        b = r.boxes.cpu()
        out[str(Path(r.path).resolve())] = (b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int))
    return out


@pytest.mark.parametrize(
    "precision, min_iou, score_tol, share", [("fp32", 0.99, 1e-3, 0.99), ("fp16", 0.95, 1e-2, 0.97)]
)
def test_cuda_boxes_match_reference(weights_pt, val_images, precision, min_iou, score_tol, share):
    from avala_infer import Engine

    engine = Engine(weights_pt, device="cuda", precision=precision, batch_size=32)
    assert engine.predictor.fp16 is (precision == "fp16")
    reference = _reference_cuda(weights_pt, val_images)
    total = matched = 0
    for pred in engine.predict(val_images):
        ref = reference[str(Path(pred.source).resolve())]
        d = pred.detections
        total += len(ref[0])
        matched += count_matches(*ref, d.xyxy, d.confidence, d.class_id, min_iou=min_iou, score_tol=score_tol)
    assert matched / total >= share, (matched, total)


def test_onnxruntime_runs_on_the_cuda_provider_or_says_why(weights_onnx, sample_images):
    import onnxruntime as ort

    from avala_infer import Engine
    from avala_infer.errors import BackendUnavailableError

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            Engine(weights_onnx, device="cuda")
        return
    engine = Engine(weights_onnx, device="cuda")
    assert engine.predictor.provider == "CUDAExecutionProvider"
    assert sum(len(p.detections) for p in engine.predict(sample_images)) > 0
