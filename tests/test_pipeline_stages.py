"""Issue 13, item 4: the thread that iterates the engine only batches and dispatches.

With one stream (a GPU's default) collate, forward and postprocess + filter run on threads of their own, one
batch in each at once (``Engine.stage_threads``; a CPU engine runs each batch whole on one runner thread instead,
because there the stages would take cores from the forward pass). These tests turn the staged path on for a CPU
engine, which runs the very code a GPU runs except the CUDA streams, and check every guarantee of the engine:
the same predictions bit for bit, input order, a failed batch retried, the adaptive batch size, ``close()``
mid-stream, an exception in a stage raised in the consumer, an early close of the generator, and no thread left
behind. Also the loaders' ``prepare_many`` hook (a tokenizer encoding many texts in one call), with a tiny real
text predictor defined here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from avala_infer import Engine
from avala_infer.annotations import Classifications
from avala_infer.engine.batching import StageChain
from avala_infer.errors import AvalaInferError
from avala_infer.predictors.base import Predictor
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need

ENGINE_THREADS = ("avala-stage", "avala-batch", "avala-load", "avala-forward")


def engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(ENGINE_THREADS)]


def staged(weights: Path, **settings) -> Engine:
    """A CPU engine of one stream whose stages run on threads of their own, as on a GPU."""
    engine = Engine(weights, device="cpu", streams=1, trust_weights=True, **settings)
    engine.stage_threads = True
    return engine


def arrays(prediction) -> dict[str, np.ndarray]:
    d = prediction.detections
    out = {"xyxy": d.xyxy, "confidence": d.confidence, "class_id": d.class_id}
    if d.mask is not None:
        out["mask"] = d.mask
    return out


def assert_same(left: list, right: list) -> None:
    assert [p.source for p in left] == [p.source for p in right]
    for a, b in zip(left, right):
        assert a.error == b.error, a.source
        if a.ok:
            for name, value in arrays(a).items():
                assert np.array_equal(value, arrays(b)[name]), (a.source, name)


# ------------------------------------------------------------------------------------------ the stage chain


def test_stage_chain_overlaps_its_stages_and_keeps_the_order():
    """Stage 0 of batch 1 runs while stage 1 still holds batch 0 (stage 1 waits for it: without the overlap it
    would wait in vain); each stage has its own thread, never the caller's; at most ``capacity`` batches are in
    flight."""
    second_collated = threading.Event()
    threads: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    inflight, peak, lock = [0], [0], threading.Lock()

    def first(value: int) -> int:
        threads[0].add(threading.current_thread().name)
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        if value == 1:
            second_collated.set()
        return value

    def second(value: int) -> tuple[int, bool]:
        threads[1].add(threading.current_thread().name)
        overlapped = second_collated.wait(timeout=10) if value == 0 else True
        return value, overlapped

    def third(pair: tuple[int, bool]) -> tuple[int, bool]:
        threads[2].add(threading.current_thread().name)
        with lock:
            inflight[0] -= 1
        return pair

    chain = StageChain([first, second, third], capacity=3, name="avala-stage-test")
    results = []
    try:
        for value in range(12):
            results += chain.submit(value)
            assert chain.inflight <= 3
        results += chain.drain()
    finally:
        chain.close()
    assert [value for value, _ in results] == list(range(12))
    assert all(overlapped for _, overlapped in results)
    assert all(len(names) == 1 for names in threads.values()), threads
    assert len(set().union(*threads.values()) | {threading.current_thread().name}) == 4
    assert peak[0] <= 3
    assert not [name for name in engine_threads() if name.startswith("avala-stage-test")]


class StageFault(BaseException):
    """Not an ``Exception``: nothing in the engine may take it for an item's fault."""


def test_stage_chain_raises_a_stage_error_in_the_caller_and_stops_every_thread():
    ran_after = []

    def first(value: int) -> int:
        return value

    def second(value: int) -> int:
        if value == 2:
            raise StageFault("stage 1 failed on batch 2")
        if value > 2:
            ran_after.append(value)
        return value

    chain = StageChain([first, second, lambda v: v], capacity=2, name="avala-stage-test")
    with pytest.raises(StageFault, match="batch 2"):
        try:
            for value in range(20):
                chain.submit(value)
            chain.drain()
        finally:
            chain.close()
    assert not [name for name in engine_threads() if name.startswith("avala-stage-test")]
    assert not ran_after  # the batches behind the failed one were dropped


# ------------------------------------------------------------------------------------------ the engine, staged


@pytest.fixture(scope="module")
def images(val_images) -> list:
    return [*sorted(val_images.glob("*.jpg"))[:15], "/no/such.jpg"]


@pytest.mark.parametrize("weights_name", ["yolo11n.pt", "yolo11n.onnx", "yolo11n-seg.pt"])
def test_staged_predictions_equal_whole_batch_ones_bit_for_bit(weights_name, images):
    weights = need(ASSETS / "models" / weights_name)
    count = 6 if "seg" in weights_name else len(images)  # masks: fewer, to keep the test quick
    sources = [*images[: count - 1], images[-1]]
    whole = Engine(weights, device="cpu", streams=1, batch_size=4, trust_weights=True)
    assert not whole.stage_threads  # a CPU's default
    expected = list(whole.predict(sources))
    got = list(staged(weights, batch_size=4).predict(sources))
    assert_same(got, expected)
    assert [p.index for p in got] == list(range(len(sources)))
    assert not got[-1].ok and "no such file" in got[-1].error
    assert {"read", "decode", "preprocess", "collate", "forward", "postprocess", "filter"} <= set(got[0].timings)
    assert not engine_threads()


class Recorder:
    """Wraps a predictor method on the instance: records each batch's size, raises ``error(args)`` when it
    returns an exception."""

    def __init__(self, method, error):
        self.method = method
        self.error = error
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, *args, **kwargs):
        exc = self.error(args)
        self.calls.append((len(args[0]), exc is not None))
        if exc is not None:
            raise exc
        return self.method(*args, **kwargs)


@pytest.fixture(scope="module")
def small(weights_onnx, val_images):
    """A staged ONNX engine at 256 px, square (full batches of 8), 24 images and their predictions."""
    engine = staged(weights_onnx, batch_size=8, letterbox="square", input_size=256)
    sources = sorted(val_images.glob("*.jpg"))[:24]
    return engine, sources, list(engine.predict(sources))


def test_staged_out_of_memory_halves_the_batch_and_keeps_the_smaller_size(small):
    engine, sources, normal = small

    def error(args):
        if len(args[0]) > 3:
            return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {len(args[0])}")
        return None

    engine.predictor.forward = recorder = Recorder(engine.predictor.forward, error)
    try:
        adapted = list(engine.predict(sources))
    finally:
        del engine.predictor.forward
    assert_same(adapted, normal)
    assert all(p.ok for p in adapted)
    # batches collated at 8 before the limit fell run in pieces of 2: none is tried again at a size that failed.
    # How the later items are batched depends on when the consuming thread sees the lowered limit (batches left
    # whole at 8, or made at 2 and a last one of 1), so only that is held: after the two failures, pieces of at
    # most 2 that all run, every item exactly once
    assert recorder.calls[:2] == [(8, True), (4, True)]
    later = recorder.calls[2:]
    assert all(size <= 2 and not failed for size, failed in later), later
    assert sum(size for size, _ in later) == len(sources)


def test_staged_postprocess_failure_retries_the_batch_item_by_item(small):
    engine, sources, normal = small
    failed = []

    def error(args):
        if not failed:
            failed.append(len(args[1]))
            return RuntimeError("a postprocess fault that is not about memory")
        return None

    engine.predictor.postprocess = recorder = Recorder(engine.predictor.postprocess, error)
    try:
        retried = list(engine.predict(sources))
    finally:
        del engine.predictor.postprocess
    assert_same(retried, normal)
    assert recorder.calls[0] == (8, True) and recorder.calls[1:9] == [(1, False)] * 8
    assert sorted(recorder.calls[9:]) == [(8, False)] * 2


def test_staged_forward_error_that_is_not_an_item_fault_stops_the_stream(small):
    engine, sources, _ = small

    def error(args):
        return StageFault("the forward thread died") if len(args[0]) else None

    engine.predictor.forward = Recorder(engine.predictor.forward, error)
    try:
        with pytest.raises(StageFault, match="forward thread died"):
            list(engine.predict(sources))
    finally:
        del engine.predictor.forward
    assert not engine_threads()


def test_closing_the_generator_early_stops_every_stage(small):
    engine, sources, normal = small
    stream = engine.predict(sources * 3)
    first = next(stream)
    assert first.source == normal[0].source
    stream.close()
    assert not engine_threads()
    assert_same(list(engine.predict(sources)), normal)  # the engine is still whole


def test_close_mid_stream_stops_the_stream_with_the_closed_error(weights_onnx, val_images):
    engine = staged(weights_onnx, batch_size=4, input_size=256)
    stream = engine.predict(sorted(val_images.glob("*.jpg"))[:64])
    assert next(stream).ok
    engine.close()
    with pytest.raises(AvalaInferError, match="closed"):
        list(stream)
    assert not engine_threads()


# ------------------------------------------------------------------------------------------ prepare_many


class TinyTextClassifier(Predictor):
    """A real (tiny) text model: its weights, a JSON file, name two labels and a length; a text longer than that
    is the second label. ``prepare_many`` prepares many texts in one call, as a batch tokenizer does, and fails
    the whole call on a text with "poison" in it (``prepare`` fails that text alone)."""

    model_type = ModelType.TEXT_CLASSIFICATION
    backend = "tiny-test"

    def __init__(self, spec, weights, device, threads=None) -> None:
        super().__init__(spec, weights, device, threads)
        model = json.loads(Path(weights).read_text(encoding="utf-8"))
        self.labels = tuple(model["labels"])
        self.longer_than = int(model["longer_than"])
        self.chunks: list[list[str]] = []
        self.alone: list[str] = []

    def prepare_many(self, texts: list[str]) -> list[np.ndarray]:
        self.chunks.append(list(texts))
        if any("poison" in text for text in texts):
            raise ValueError("one text in the chunk is poisoned")
        return [np.array([len(text)], np.float32) for text in texts]

    def prepare(self, text: str) -> np.ndarray:
        self.alone.append(text)
        if "poison" in text:
            raise ValueError("this text is poisoned")
        return np.array([len(text)], np.float32)

    def collate(self, prepared):
        return np.stack(prepared)

    def forward(self, batch):
        longer = (batch[:, 0] > self.longer_than).astype(np.float32)
        return np.stack([1 - longer, longer], axis=1)

    def postprocess(self, raw, prepared, **_):
        names = np.asarray(self.labels, dtype=object)
        results = []
        for row in raw:
            order = np.argsort(-row, kind="stable")
            results.append(Classifications(order, row[order], names[order]))
        return results


@pytest.fixture
def tiny_engine(tmp_path, monkeypatch):
    from avala_infer import registry
    from avala_infer.specs import ModelSpec

    monkeypatch.setitem(
        registry._REGISTRY,
        (ModelType.TEXT_CLASSIFICATION, "tiny-test"),
        "tests.test_pipeline_stages:TinyTextClassifier",
    )
    weights = tmp_path / "tiny.json"
    weights.write_text(json.dumps({"labels": ["short", "long"], "longer_than": 12}), encoding="utf-8")
    spec = ModelSpec("tiny", ModelType.TEXT_CLASSIFICATION, "tiny-test", str(weights), batch_size=8)
    return Engine(spec, device="cpu", streams=1, workers=2)


def test_prepare_many_prepares_runs_of_items_and_a_failed_run_item_by_item(tiny_engine):
    from avala_infer.engine.pipeline import PREPARE_CHUNK

    texts = [f"text number {i}" + "!" * (i % 7) for i in range(2 * PREPARE_CHUNK + 5)]
    texts[40] = "a poison pill"
    texts[3] = "   "  # blank: fails when read, never reaches the predictor
    predictions = list(tiny_engine.predict_texts(texts, confidence_threshold=0.0, top_k=1))
    predictor = tiny_engine.predictor

    assert [p.index for p in predictions] == list(range(len(texts)))
    assert [p.text for p in predictions] == [None if i == 3 else t for i, t in enumerate(texts)]
    assert "empty" in predictions[3].error
    assert "ValueError: this text is poisoned" in predictions[40].error
    for i, prediction in enumerate(predictions):
        if i not in (3, 40):
            expected = "long" if len(texts[i]) > 12 else "short"
            assert prediction.ok and list(prediction.result.class_name) == [expected], (i, prediction)
            assert "preprocess" in prediction.timings
    # chunks of consecutive items without the blank one; only the poisoned chunk was prepared item by item
    readable = [t for i, t in enumerate(texts) if i != 3]
    assert [t for chunk in predictor.chunks for t in chunk] == readable
    assert [len(chunk) for chunk in predictor.chunks] == [PREPARE_CHUNK - 1, PREPARE_CHUNK, 5]
    assert predictor.alone == texts[PREPARE_CHUNK : 2 * PREPARE_CHUNK]
    assert not engine_threads()
