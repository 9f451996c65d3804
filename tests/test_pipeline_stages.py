"""Issue 13, item 4: the thread that iterates the engine only batches and dispatches.

With one stream (a GPU's default) collate, forward and postprocess + filter run on threads of their own, one
batch in each at once (``Engine.stage_threads``; a CPU engine runs each batch whole on one runner thread instead,
because there the stages would take cores from the forward pass). These tests turn the staged path on for a CPU
engine, which runs the very code a GPU runs except the CUDA streams, and check every guarantee of the engine:
the same predictions bit for bit, input order, a failed batch retried, the adaptive batch size, ``close()``
mid-stream, an exception in a stage raised in the consumer, an early close of the generator, and no thread left
behind. The stage threads are the engine's (issue 13, item 4): started by its first stream, the same threads for
every later one, stopped by ``close()``. Also the loaders' ``prepare_many`` hook (a tokenizer encoding many texts
in one call), with a tiny real text predictor defined here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from avala_infer import Engine
from avala_infer.annotations import Classifications
from avala_infer.engine.batching import BatchDispatch, StageChain
from avala_infer.errors import AvalaInferError
from avala_infer.predictors.base import Predictor
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.out_of_memory import out_of_memory_above

ENGINE_THREADS = ("avala-stage", "avala-batch", "avala-load", "avala-forward")


def engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(ENGINE_THREADS)]


def new_threads(before: set[threading.Thread]) -> list[str]:
    """The engine threads alive now that were not in ``before`` (other tests' engines may hold theirs)."""
    return sorted(t.name for t in threading.enumerate() if t not in before and t.name.startswith(ENGINE_THREADS))


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

    chain = StageChain(3, name="avala-stage-test")
    dispatch = BatchDispatch([(chain, [first, second, third], 3)])
    results = []
    try:
        for value in range(12):
            results += dispatch.submit(value)
            assert dispatch.inflight[0] <= 3
        results += dispatch.drain()
        dispatch.close()
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


def test_stage_chain_raises_a_stage_error_in_its_stream_only_and_stays_up_for_the_next():
    ran_after = []

    def first(value: int) -> int:
        return value

    def second(value: int) -> int:
        if value == 2:
            raise StageFault("stage 1 failed on batch 2")
        if value > 2:
            ran_after.append(value)
        return value

    chain = StageChain(3, name="avala-stage-test")
    threads = set(chain.threads)
    try:
        failing = BatchDispatch([(chain, [first, second, lambda v: v], 2)])
        with pytest.raises(StageFault, match="batch 2"):
            try:
                for value in range(20):
                    failing.submit(value)
                failing.drain()
            finally:
                failing.close()
        assert not ran_after  # the batches behind the failed one were dropped
        assert all(thread.is_alive() for thread in threads)
        # the next stream runs on the same threads, with its own stage functions
        doubling = BatchDispatch([(chain, [first, lambda v: 2 * v, lambda v: v + 1], 2)])
        results = [r for value in range(10) for r in doubling.submit(value)] + doubling.drain()
        doubling.close()
        assert results == [2 * v + 1 for v in range(10)]
        assert set(chain.threads) == threads
    finally:
        chain.close()
    assert not any(thread.is_alive() for thread in threads)
    with pytest.raises(RuntimeError, match="closed"):
        BatchDispatch([(chain, [first, first, first], 2)]).submit(1)


def test_dispatch_sends_each_batch_to_a_free_lane_so_a_slow_one_holds_nobody_up():
    """Lane 0 is stuck until every batch is submitted: it holds its capacity (2) and lane 1 runs the rest. A round
    robin would have queued every other batch behind the stuck lane."""
    release = threading.Event()
    ran: dict[int, list[int]] = {0: [], 1: []}

    def stuck(value: int) -> tuple[int, int]:
        release.wait(timeout=30)
        ran[0].append(value)
        return 0, value

    def quick(value: int) -> tuple[int, int]:
        ran[1].append(value)
        return 1, value

    slow, fast = StageChain(1, name="avala-stage-test-slow"), StageChain(1, name="avala-stage-test-fast")
    try:
        dispatch = BatchDispatch([(slow, [stuck], 2), (fast, [quick], 2)])
        results = [r for value in range(20) for r in dispatch.submit(value)]
        done_before_release = len(results)
        release.set()
        results += dispatch.drain()
        dispatch.close()
    finally:
        release.set()
        slow.close()
        fast.close()
    assert sorted(value for _, value in results) == list(range(20))  # every batch once
    assert 1 <= len(ran[0]) <= 2 and len(ran[1]) >= 18, ran
    assert done_before_release >= 16  # lane 1's results came back while lane 0 was stuck
    assert all(lane == (0 if value in ran[0] else 1) for lane, value in results)
    assert not [name for name in engine_threads() if name.startswith("avala-stage-test")]


# ------------------------------------------------------------------------------------------ the engine, staged


@pytest.fixture(scope="module")
def images(val_images) -> list:
    return [*sorted(val_images.glob("*.jpg"))[:15], "/no/such.jpg"]


@pytest.mark.parametrize("weights_name", ["yolo11n.pt", "yolo11n.onnx", "yolo11n-seg.pt"])
def test_staged_predictions_equal_whole_batch_ones_bit_for_bit(weights_name, images):
    weights = need(ASSETS / "models" / weights_name)
    count = 6 if "seg" in weights_name else len(images)  # masks: fewer, to keep the test quick
    sources = [*images[: count - 1], images[-1]]
    before = set(threading.enumerate())
    with Engine(weights, device="cpu", streams=1, batch_size=4, trust_weights=True) as whole:
        assert not whole.stage_threads  # a CPU's default
        expected = list(whole.predict(sources))
    with staged(weights, batch_size=4) as engine:
        got = list(engine.predict(sources))
    assert_same(got, expected)
    assert [p.index for p in got] == list(range(len(sources)))
    assert not got[-1].ok and "no such file" in got[-1].error
    assert {"read", "decode", "preprocess", "collate", "forward", "postprocess", "filter"} <= set(got[0].timings)
    assert new_threads(before) == []


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
    with engine:
        yield engine, sources, list(engine.predict(sources))


def stage_threads_of(engine: Engine) -> set[threading.Thread]:
    """The engine's stage threads (one chain per device), all alive."""
    threads = {thread for lane in engine._lanes if lane._chain is not None for thread in lane._chain.threads}
    assert threads and all(thread.is_alive() for thread in threads)
    return threads


def test_staged_out_of_memory_halves_the_batch_and_keeps_the_smaller_size(small):
    engine, sources, normal = small

    too_big = out_of_memory_above(3)

    def error(args):
        return too_big(args[0])  # the forward's batch

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

    threads = stage_threads_of(engine)
    engine.predictor.forward = Recorder(engine.predictor.forward, error)
    try:
        with pytest.raises(StageFault, match="forward thread died"):
            list(engine.predict(sources))
    finally:
        del engine.predictor.forward
    assert stage_threads_of(engine) == threads  # the stream failed, the engine's threads did not
    assert_same(list(engine.predict(sources)), small[2])


def test_closing_the_generator_early_stops_its_batches_and_keeps_the_threads(small):
    engine, sources, normal = small
    threads = stage_threads_of(engine)
    before = set(threading.enumerate())
    stream = engine.predict(sources * 3)
    first = next(stream)
    assert first.source == normal[0].source
    stream.close()
    assert new_threads(before) == []  # its loader threads are gone
    assert stage_threads_of(engine) == threads
    assert_same(list(engine.predict(sources)), normal)  # the engine is still whole


def test_stage_threads_start_once_and_serve_every_later_stream(weights_onnx, val_images):
    """Item 4: a job predicts chunk by chunk; the threads that run its batches start with the first chunk and
    are the same for every later one, whole, closed early or interleaved with another stream; close() ends
    them all."""
    sources = sorted(val_images.glob("*.jpg"))[:12]
    before = set(threading.enumerate())
    engine = staged(weights_onnx, batch_size=4, input_size=256)
    assert new_threads(before) == []  # nothing starts before the first stream
    expected = list(engine.predict(sources))
    threads = stage_threads_of(engine)
    assert sorted(t.name for t in threads) == new_threads(before)
    assert len(threads) == 3  # collate, forward, postprocess
    for chunk in range(6):
        got = list(engine.predict(sources[chunk * 2 : chunk * 2 + 2]))
        assert_same(got, expected[chunk * 2 : chunk * 2 + 2])
        early = engine.predict(sources)
        next(early)
        early.close()
        assert stage_threads_of(engine) == threads and new_threads(before) == sorted(t.name for t in threads)
    # two streams of one engine at once, on its one set of threads: each gets its own predictions, in order
    first, second = engine.predict(sources), engine.predict(sources[::-1])
    pairs = list(zip(first, second))
    assert_same([a for a, _ in pairs], expected)
    assert_same([b for _, b in pairs], expected[::-1])
    assert stage_threads_of(engine) == threads
    engine.close()
    assert not any(thread.is_alive() for thread in threads)
    assert new_threads(before) == []
    with pytest.raises(AvalaInferError, match="closed"):
        engine.predict(sources)


def test_an_engine_dropped_without_close_is_collected_and_its_threads_end(weights_onnx, val_images):
    """Its threads hold nothing that leads back to the engine: dropped (as many scripts and tests do), the engine
    and its model go as before, and a finalizer stops the threads."""
    import gc
    import weakref

    engine = staged(weights_onnx, batch_size=4, input_size=256)
    assert len(list(engine.predict(sorted(val_images.glob("*.jpg"))[:6]))) == 6
    threads = stage_threads_of(engine)
    predictor = weakref.ref(engine.predictor)
    gone = weakref.ref(engine)
    del engine
    gc.collect()
    assert gone() is None and predictor() is None
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)


def test_close_mid_stream_stops_the_stream_with_the_closed_error(weights_onnx, val_images):
    before = set(threading.enumerate())
    engine = staged(weights_onnx, batch_size=4, input_size=256)
    stream = engine.predict(sorted(val_images.glob("*.jpg"))[:64])
    assert next(stream).ok
    engine.close()
    with pytest.raises(AvalaInferError, match="closed"):
        list(stream)
    assert new_threads(before) == []


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
    with Engine(spec, device="cpu", streams=1, workers=2) as engine:
        yield engine


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
    assert [t.name for t in stage_threads_of(tiny_engine)] == ["avala-batch@cpu-0"]  # one stream on a CPU


def test_loader_threads_default_to_the_cores_a_gpu_run_leaves_free_and_stay_few_on_a_cpu():
    from avala_infer.engine.pipeline import MAX_GPU_WORKERS, default_workers

    # a CPU: the forward pass wants the cores, so at most 8 loaders
    assert [default_workers(c, on_cpu=True) for c in (1, 2, 8, 16, 64)] == [1, 2, 8, 8, 8]
    # a GPU: every core but the engine's own two, the decode being the ceiling (16 cores: 14, not 8), bounded
    assert [default_workers(c, on_cpu=False) for c in (1, 2, 4, 16, 64)] == [2, 2, 2, 14, MAX_GPU_WORKERS]
