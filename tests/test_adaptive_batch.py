"""Issue 13, item 3: the adaptive batch size. A batch that runs out of device memory is halved and retried (down
to one item), no item is lost, and the stream keeps the smaller size; any other failure of a whole batch is
still retried item by item, and leaves the batch size alone.

Running out of GPU memory cannot happen on this CPU: these tests simulate it. The engine is real (yolo11n's
ONNX export on real coco128 images); only its predictor's ``forward`` is wrapped, on the instance, to raise
``torch.cuda.OutOfMemoryError`` (what torch raises on a GPU) for batches larger than it can "hold", and to record
the size of every batch it is given. The ONNX export is used because onnxruntime's result for an image is bit for
bit the same whatever its batch (tests/test_batch_independence.py), so the adapted run must equal a normal one
exactly. Images go in at 256 px (any size does for this logic) to keep the tests quick.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import need
from tests.out_of_memory import cuda_out_of_memory, out_of_memory_above

pytestmark = [pytest.mark.assets]


class RecordingForward:
    """Wraps a predictor's ``forward``: records ``(batch size, whether it raised)`` for every call, and raises
    ``error(size)`` when that returns an exception instead of ``None``."""

    def __init__(self, predictor, error):
        self.forward = predictor.forward
        self.error = error
        self.calls: list[tuple[int, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, batch):
        exc = self.error(batch)
        with self.lock:
            self.calls.append((len(batch), exc is not None))
        if exc is not None:
            raise exc
        return self.forward(batch)


SIZE = 256


@pytest.fixture(scope="module")
def engine(weights_onnx):
    from avala_infer import Engine

    # square: every image has one shape, so batches leave full and the batch sizes below are exact
    return Engine(weights_onnx, device="cpu", batch_size=8, letterbox="square", input_size=SIZE, streams=1)


@pytest.fixture(scope="module")
def images(val_images):
    return sorted(need(val_images).glob("*.jpg"))[:24]


@pytest.fixture(scope="module")
def normal(engine, images):
    """The stream without any failure."""
    return _run(engine, images)


def _run(engine, sources, wrapper=None):
    if wrapper is not None:
        engine.predictor.forward = wrapper
    try:
        return list(engine.predict(sources))
    finally:
        engine.predictor.__dict__.pop("forward", None)


def _assert_same(adapted, normal):
    assert [p.source for p in adapted] == [p.source for p in normal]
    for a, n in zip(adapted, normal):
        assert a.error is None, (a.source, a.error)
        assert np.array_equal(a.detections.xyxy, n.detections.xyxy), a.source
        assert np.array_equal(a.detections.confidence, n.detections.confidence), a.source
        assert np.array_equal(a.detections.class_id, n.detections.class_id), a.source


def test_out_of_memory_halves_the_batch_and_keeps_the_smaller_size(engine, images, normal, caplog):
    wrapper = RecordingForward(engine.predictor, out_of_memory_above(3))
    with caplog.at_level("WARNING", logger="avala_infer.engine.pipeline"):
        adapted = _run(engine, images, wrapper)
    _assert_same(adapted, normal)
    # the first batch of 8 fails, its half of 4 fails, then 2s fit; the rest of the stream runs pieces of at most
    # 2: no further batch is tried at a size that failed. How the later items group depends on when the consuming
    # thread sees the lowered limit (a bucket resized from 4 to 2 while holding 3 leaves a 1 behind: CI saw two
    # 1s once), so the invariant is asserted, not one timing's batching
    assert wrapper.calls[:2] == [(8, True), (4, True)]
    later = wrapper.calls[2:]
    assert all(size <= 2 and not failed for size, failed in later), later
    assert sum(size for size, _ in later) == len(images)  # every item ran once after the failures
    lowered = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(lowered) == 2 and "at most 4" in lowered[0] and "at most 2" in lowered[1], lowered
    # the next stream starts at the configured size again
    assert _run(engine, images[:8], RecordingForward(engine.predictor, lambda batch: None)) and engine.batch_size == 8


def test_out_of_memory_with_batches_running_side_by_side(weights_onnx, val_images):
    from avala_infer import Engine

    engine = Engine(weights_onnx, device="cpu", batch_size=8, letterbox="square", input_size=SIZE, streams=2)
    images = sorted(need(val_images).glob("*.jpg"))[:64]
    normal = _run(engine, images)
    wrapper = RecordingForward(engine.predictor, out_of_memory_above(3))
    adapted = _run(engine, images, wrapper)
    _assert_same(adapted, normal)
    failed = [size for size, raised in wrapper.calls if raised]
    # only the batches already formed or running when the limit fell can fail (at most 2 * streams of them in
    # flight, two failures each: 8 and 4); without the kept limit all 8 batches would fail twice
    assert 2 <= len(failed) <= 2 * 2 * engine.streams, wrapper.calls
    assert all(size <= 2 for size, _ in wrapper.calls[-8:]), wrapper.calls


def test_other_errors_retry_item_by_item_and_keep_the_batch_size(engine, images, normal):
    first = []

    def fails_once(batch):
        if not first:
            first.append(len(batch))
            return RuntimeError("a kernel fault that is not about memory")
        return None

    wrapper = RecordingForward(engine.predictor, fails_once)
    _assert_same(_run(engine, images, wrapper), normal)
    assert wrapper.calls == [(8, True)] + [(1, False)] * 8 + [(8, False)] * 2


def test_out_of_memory_on_one_item_fails_that_item_only(engine, images, normal):
    # an all-black square picture: its letterboxed input is all zeros, which the wrapper "cannot hold"
    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    sources = [*images[:3], black, *images[3:8]]

    def error(batch):
        if (batch.reshape(len(batch), -1).max(axis=1) == 0).any():
            return cuda_out_of_memory("2.00 GiB")
        return None

    wrapper = RecordingForward(engine.predictor, error)
    predictions = _run(engine, sources, wrapper)
    assert len(predictions) == len(sources)
    assert "OutOfMemoryError" in predictions[3].error
    _assert_same(predictions[:3] + predictions[4:], normal[:8])
    assert (1, True) in wrapper.calls  # halved down to the one item before giving it up
