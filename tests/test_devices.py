"""Issue 13, item 8: several devices in one engine (``--device cuda:0,1`` or ``all``).

One predictor per device, each with its own stage threads, fed from the one loader pool and batcher; each batch
goes to the device with the fewest batches in flight; predictions come out in input order. This host has no GPU,
so the engine here gets a second CPU "device" through ``Engine._add_device`` (``resolve_devices`` refuses ``cpu``
twice: for a user two CPU predictors would only split the same cores): two predictors, each with its own
collate / forward / postprocess threads as on a GPU, which is the code a GPU host runs but for the CUDA streams.
The device-setting checks run everywhere; the ones that need GPUs skip without them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avala_infer import Engine
from avala_infer.engine.devices import resolve_devices
from avala_infer.errors import AvalaInferError, BackendUnavailableError, ConfigError
from tests.conftest import ASSETS, need
from tests.out_of_memory import out_of_memory_above

ENGINE_THREADS = ("avala-stage", "avala-batch", "avala-load", "avala-forward")
CUDA_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0


def new_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t not in before and t.name.startswith(ENGINE_THREADS))


def two_cpus(model, **settings) -> Engine:
    """An engine on two CPU "devices", each running its batches on collate / forward / postprocess threads of its
    own, as each GPU of a several-GPU engine does."""
    engine = Engine(model, device="cpu", streams=1, trust_weights=True, **settings)
    engine.stage_threads = True
    engine._add_device("cpu")
    return engine


def one_cpu(model, **settings) -> Engine:
    engine = Engine(model, device="cpu", streams=1, trust_weights=True, **settings)
    engine.stage_threads = True
    return engine


class Recorder:
    """Wraps one predictor's method on the instance: records each call's batch size and whether it raised
    ``error(args)`` (when that returns an exception)."""

    def __init__(self, method, error=lambda args: None):
        self.method = method
        self.error = error
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, *args, **kwargs):
        exc = self.error(args)
        batch = args[0]
        self.calls.append((batch.rows if hasattr(batch, "rows") else len(batch), exc is not None))  # text: windows
        if exc is not None:
            raise exc
        return self.method(*args, **kwargs)


def record(engine: Engine, method: str, error=lambda args: None) -> list[Recorder]:
    recorders = []
    for lane in engine._lanes:
        recorder = Recorder(getattr(lane.predictor, method), error)
        setattr(lane.predictor, method, recorder)
        recorders.append(recorder)
    return recorders


def result_arrays(prediction) -> list[np.ndarray]:
    result = prediction.result
    names = ("xyxy", "confidence", "class_id", "mask") if hasattr(result, "xyxy") else ("class_id", "confidence")
    return [getattr(result, name) for name in names if getattr(result, name, None) is not None]


def assert_same(left: list, right: list) -> None:
    assert [p.source for p in left] == [p.source for p in right]
    for a, b in zip(left, right):
        assert a.error == b.error, a.source
        if a.ok:
            for x, y in zip(result_arrays(a), result_arrays(b), strict=True):
                assert np.array_equal(x, y), a.source


# ------------------------------------------------------------------------------------------ the device setting


@pytest.mark.parametrize(
    ("setting", "devices"),
    [("cpu", ("cpu",)), (" CPU ", ("cpu",)), (["cpu"], ("cpu",)), ("", None), (None, None), ("auto", None)],
)
def test_one_device_settings_resolve_as_before(setting, devices):
    expected = devices or (("cuda:0",) if CUDA_COUNT else ("cpu",))
    assert resolve_devices(setting) == expected


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("cpu,cpu", "several CUDA GPUs"),
        ("auto,cuda:1", "several CUDA GPUs"),
        (["cuda:0", "cpu"], "several CUDA GPUs"),
        ("cuda:0,,1", "empty entry"),
        ("all,cuda:0", "stands alone"),
        ("gpu", "unknown device"),
    ],
)
def test_device_lists_that_make_no_sense_are_refused(setting, says):
    with pytest.raises(ConfigError, match=says):
        resolve_devices(setting)


@pytest.mark.skipif(CUDA_COUNT > 0, reason="this host has a GPU")
@pytest.mark.parametrize("setting", ["all", "cuda:0,1", ["cuda:0", "cuda:1"], "0,1"])
def test_gpus_asked_for_where_there_are_none_are_an_error_before_the_model_loads(setting):
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU|sees none"):
        resolve_devices(setting)
    with pytest.raises(BackendUnavailableError):
        Engine(need(ASSETS / "models" / "yolo11n.onnx"), device=setting)


@pytest.mark.skipif(CUDA_COUNT < 1, reason="needs a CUDA GPU")
def test_all_is_every_gpu_and_a_gpu_named_twice_is_refused():
    assert resolve_devices("all") == tuple(f"cuda:{i}" for i in range(CUDA_COUNT))
    with pytest.raises(ConfigError, match="twice"):
        resolve_devices("cuda:0,0")
    if CUDA_COUNT >= 2:
        assert resolve_devices("cuda:0,1") == resolve_devices(["cuda", "1"]) == ("cuda:0", "cuda:1")


# ------------------------------------------------------------------------------------------ two devices, one engine


@pytest.fixture(scope="module")
def sources(val_images, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    images = sorted(val_images.glob("*.jpg"))[:24]
    return [*images[:9], "/no/such.jpg", *images[9:17], folder / "broken.jpg", *images[17:]]


@pytest.mark.parametrize("weights_name", ["yolo11n.pt", "yolo11n.onnx"])
def test_two_devices_give_the_predictions_of_one_bit_for_bit_in_input_order(weights_name, sources):
    weights = need(ASSETS / "models" / weights_name)
    before = set(threading.enumerate())
    with one_cpu(weights, batch_size=4) as one:
        expected = list(one.predict(sources))
    with two_cpus(weights, batch_size=4) as two:
        assert two.devices == ("cpu", "cpu") and two.device == "cpu,cpu"
        forwards = record(two, "forward")
        got = list(two.predict(sources))
        names = new_threads(before)
    assert_same(got, expected)
    assert [p.index for p in got] == list(range(len(sources)))
    assert [p.ok for p in got].count(False) == 2 and "no such file" in got[9].error and "decode" in got[18].error
    assert all(recorder.calls for recorder in forwards)  # both devices ran batches
    assert sum(size for recorder in forwards for size, _ in recorder.calls) == len(sources) - 2
    # each device has its own collate, forward and postprocess threads
    assert sorted(name for name in names if name.startswith("avala-stage")) == [
        f"avala-stage@cpu.{lane}-{stage}" for lane in (0, 1) for stage in range(3)
    ]
    assert new_threads(before) == []  # close() stopped both devices' threads


def test_two_devices_run_a_text_model_as_one_does():
    model = need(ASSETS / "models" / "sentiment-minilm-sst2")
    texts = [f"review {i}: " + ("a wonderful, moving film" if i % 3 else "dull and far too long") for i in range(24)]
    texts[7] = " "  # blank: fails when read
    with one_cpu(model.name, batch_size=8) as one:
        expected = list(one.predict_texts(texts, top_k=None, confidence_threshold=0.0))
    with two_cpus(model.name, batch_size=8) as two:
        forwards = record(two, "forward")
        got = list(two.predict_texts(texts, top_k=None, confidence_threshold=0.0))
    assert [p.index for p in got] == list(range(len(texts)))
    assert not got[7].ok and all(p.ok for i, p in enumerate(got) if i != 7)
    assert [p.text for p in got] == [p.text for p in expected]
    assert_same(got, expected)
    assert all(recorder.calls for recorder in forwards)


@pytest.fixture(scope="module")
def small(weights_onnx, val_images):
    """Two devices, ONNX at 256 px, square (full batches of 8), 32 images and their predictions on one device."""
    images = sorted(val_images.glob("*.jpg"))[:32]
    with one_cpu(weights_onnx, batch_size=8, letterbox="square", input_size=256) as one:
        normal = list(one.predict(images))
    with two_cpus(weights_onnx, batch_size=8, letterbox="square", input_size=256) as two:
        assert len(list(two.predict(images[:16]))) == 16  # both devices' threads are up from here on
        yield two, images, normal


def test_out_of_memory_on_one_device_halves_its_batches_only(small):
    engine, images, normal = small

    too_big = out_of_memory_above(2)

    def out_of_memory(args):
        return too_big(args[0])  # the forward's batch

    lanes = engine._lanes
    fine, short = Recorder(lanes[0].predictor.forward), Recorder(lanes[1].predictor.forward, out_of_memory)
    lanes[0].predictor.forward, lanes[1].predictor.forward = fine, short
    try:
        got = list(engine.predict(images))
    finally:
        del lanes[0].predictor.forward, lanes[1].predictor.forward
    assert_same(got, normal)
    assert all(p.ok for p in got)
    assert fine.calls and all(call == (8, False) for call in fine.calls)  # the other device kept its batch of 8
    assert short.calls[:2] == [(8, True), (4, True)]
    assert all(size <= 2 and not failed for size, failed in short.calls[2:])
    assert sum(size for size, failed in fine.calls + short.calls if not failed) == len(images)  # each item once


def test_an_item_that_fails_in_the_model_fails_alone_on_whichever_device_runs_it(small):
    engine, images, normal = small
    shapes = [cv2.imread(str(path)).shape[:2] for path in images]
    poisoned = next(i for i, shape in enumerate(shapes) if shapes.count(shape) == 1 and i > 8)

    def poison(args):
        prepared = args[1]
        if any(p.orig_shape == shapes[poisoned] for p in prepared):
            return RuntimeError("this item breaks the postprocess")
        return None

    recorders = record(engine, "postprocess", poison)
    try:
        got = list(engine.predict(images))
    finally:
        for lane in engine._lanes:
            del lane.predictor.postprocess
    assert [p.index for p in got] == list(range(len(images)))
    assert "model failed on this item: RuntimeError: this item breaks the postprocess" in got[poisoned].error
    assert_same([p for i, p in enumerate(got) if i != poisoned], [p for i, p in enumerate(normal) if i != poisoned])
    assert all(recorder.calls for recorder in recorders)


def test_a_generator_closed_early_leaves_both_devices_ready(small):
    engine, images, normal = small
    before = set(threading.enumerate())
    stream = engine.predict(images * 3)
    assert next(stream).source == normal[0].source
    stream.close()
    assert new_threads(before) == []
    assert_same(list(engine.predict(images)), normal)


def test_close_mid_stream_stops_every_device(weights_onnx, val_images):
    before = set(threading.enumerate())
    engine = two_cpus(weights_onnx, batch_size=4, input_size=256)
    stream = engine.predict(sorted(val_images.glob("*.jpg"))[:64])
    assert next(stream).ok
    assert len([name for name in new_threads(before) if name.startswith("avala-stage")]) == 6
    engine.close()
    with pytest.raises(AvalaInferError, match="closed"):
        list(stream)
    assert new_threads(before) == []
    assert all(lane._predictor is None for lane in engine._lanes)  # both predictors released


def test_a_device_list_reaches_the_job_runner_engine(tmp_path: Path):
    """Jobs take the device string as the CLI does: the runner hands it to its engines as it is."""
    from avala_infer.jobs.runner import JobRunner
    from avala_infer.store import Store

    with Store(tmp_path / "home") as store, JobRunner(store, "w-devices", device="cpu,cpu") as runner:
        with pytest.raises(ConfigError, match="several CUDA GPUs"):
            runner.engine(str(need(ASSETS / "models" / "yolo11n.onnx")))
