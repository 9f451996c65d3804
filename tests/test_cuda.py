"""CUDA checks: run where torch sees a GPU (skipped elsewhere; CI has none). Prepared to run on a lent GPU host
with ``python -m pytest tests/test_cuda.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reference import count_matches
from tests.skip_guard import NO_GPU_REASON

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU_REASON)


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


def _coverage():
    from tests.test_registry_coverage import COVERAGE

    return COVERAGE


@pytest.mark.parametrize("pair", sorted(_coverage(), key=lambda k: (k[0].value, k[1])), ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_pair_runs_on_cuda_as_on_cpu(pair, tmp_path):
    """Each registered pair on the GPU (fp16 where the backend uses it): the same checks as on the CPU, and the
    same top class / label set as the CPU run (onnxruntime pairs need onnxruntime-gpu, else they say so)."""
    import onnxruntime as ort

    from avala_infer import Engine
    from avala_infer.errors import BackendUnavailableError

    model_type, backend = pair
    case = _coverage()[pair](tmp_path)
    if backend == "onnxruntime" and "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError):
            Engine(case.spec, device="cuda")
        return
    cpu = list(Engine(case.spec, device="cpu", batch_size=2).predict(case.sources, **case.predict_kwargs))
    gpu = list(Engine(case.spec, device="cuda", batch_size=2).predict(case.sources, **case.predict_kwargs))
    assert [p.error for p in gpu] == [None] * len(case.sources)
    for on_cpu, on_gpu in zip(cpu, gpu):
        case.check(on_gpu)
        assert set(on_gpu.result.class_name) == set(on_cpu.result.class_name) or len(on_cpu.result) > 3
