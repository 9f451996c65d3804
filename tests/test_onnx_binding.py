"""IO binding (``avala_infer.predictors.onnx_binding``): the YOLO ONNX predictors' outputs equal ``session.run``'s
bit for bit, for detection and segmentation, on real coco128 batches of several rect shapes, on the run that learns
a shape's output sizes (onnxruntime allocates) and on the runs after it (our buffers). On a CPU a detector's
outputs are numpy arrays (its NMS runs in numpy, no torch), a segmenter's torch tensors (its masks are torch's)."""

from __future__ import annotations

from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import ASSETS, need
from tests.skip_guard import NO_GPU_REASON

pytestmark = pytest.mark.assets

SHAPES = 3  # rect batches of this many different shapes
BATCH = 3  # images per batch (fewer where a shape has fewer)


@pytest.fixture(scope="module")
def images(val_images):
    return [cv2.imread(str(p)) for p in sorted(val_images.glob("*.jpg"))[:48]]


def _predictor(name: str, device: str = "cpu"):
    from avala_infer.predictors.detection.onnx import OnnxYoloDetector, OnnxYoloSegmenter
    from avala_infer.specs import find_spec

    weights = need(ASSETS / "models" / name)
    spec = find_spec(weights).with_overrides(input_size=320)  # rect shapes still vary; a quarter of the work
    predictor_class = OnnxYoloSegmenter if name.endswith("-seg.onnx") else OnnxYoloDetector
    return predictor_class(spec, weights, device, threads=1 if device == "cpu" else None)


def _rect_batches(predictor, images):
    """Letterboxed images grouped by shape (rect: several shapes on coco128), the most common shapes first."""
    groups = defaultdict(list)
    for image in images:
        prepared = predictor.prepare(image)
        groups[predictor.batch_key(prepared)].append(prepared)
    ordered = sorted(groups.values(), key=len, reverse=True)[:SHAPES]
    assert len(ordered) == SHAPES, "coco128 gives several rect shapes"
    return [group[:BATCH] for group in ordered]


@pytest.mark.parametrize("name", ["yolo11n.onnx", "yolo11n-seg.onnx"])
def test_bound_outputs_equal_session_run(name, images):
    predictor = _predictor(name)
    batches = _rect_batches(predictor, images)
    assert len({b[0].image.shape for b in batches}) == SHAPES
    for prepared in batches:
        batch = predictor.collate(prepared)
        host = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else batch
        expected = predictor.session.run(None, {predictor.input_name: host})
        learned_before = predictor.bound.output_shapes(tuple(batch.shape)) is not None
        for attempt in ("learns the shapes", "into our buffers"):
            raw = predictor.forward(batch)
            got = list(raw) if isinstance(raw, tuple) else [raw]
            assert len(got) == len(expected)
            for output, reference in zip(got, expected):
                if name.endswith("-seg.onnx"):
                    assert isinstance(output, torch.Tensor) and output.device.type == "cpu"
                    assert output.dtype == torch.float32
                    output = output.numpy()
                else:
                    assert isinstance(output, np.ndarray) and output.dtype == np.float32
                assert output.shape == reference.shape
                np.testing.assert_array_equal(output, reference, err_msg=f"{name} {attempt}")
        assert not learned_before  # the first forward of each shape took the learning path
        assert predictor.bound.output_shapes(tuple(batch.shape)) == [r.shape for r in expected]


def test_outputs_are_fresh_buffers(images):
    """Two runs of one shape never share output memory: the engine may still read one batch while the next runs."""
    predictor = _predictor("yolo11n.onnx")
    prepared = _rect_batches(predictor, images)[0]
    batch = predictor.collate(prepared)
    first = predictor.forward(batch)  # learning run
    second = predictor.forward(batch)
    third = predictor.forward(batch)
    kept = second.copy()
    assert second.ctypes.data != third.ctypes.data != first.ctypes.data
    np.testing.assert_array_equal(third, kept)
    np.testing.assert_array_equal(second, kept)  # untouched by the third run


def test_torch_cpu_batch_is_bound_like_numpy(images):
    """A collate that hands a torch tensor (as on CUDA) gives the same outputs as the numpy batch."""
    predictor = _predictor("yolo11n.onnx")
    prepared = _rect_batches(predictor, images)[1]
    batch = predictor.collate(prepared)
    host = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else batch
    from_numpy = predictor.forward(np.ascontiguousarray(host))
    from_torch = predictor.forward(torch.from_numpy(np.ascontiguousarray(host)))
    np.testing.assert_array_equal(from_numpy, from_torch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU_REASON)
@pytest.mark.parametrize("name", ["yolo11n.onnx", "yolo11n-seg.onnx"])
def test_cuda_batches_stay_on_the_device(name, images):
    """On CUDA a device batch goes in by its pointer and the outputs come back as device tensors, equal to
    ``session.run``'s (the CUDA provider's kernels, run on the same input); a host batch gives the same."""
    import onnxruntime as ort

    from avala_infer.errors import BackendUnavailableError

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            _predictor(name, "cuda:0")
        return
    predictor = _predictor(name, "cuda:0")
    for prepared in _rect_batches(predictor, images):
        batch = predictor.collate(prepared)
        host = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else batch
        expected = predictor.session.run(None, {predictor.input_name: host})
        on_device = torch.from_numpy(np.ascontiguousarray(host)).to("cuda:0")
        for given in (on_device, on_device, host):  # learns the shapes, then our buffers; then a host batch
            raw = predictor.forward(given)
            got = list(raw) if isinstance(raw, tuple) else [raw]
            for tensor, reference in zip(got, expected):
                assert tensor.is_cuda
                torch.testing.assert_close(tensor.cpu(), torch.from_numpy(reference), rtol=1e-4, atol=1e-3)
