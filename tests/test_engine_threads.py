"""Two engines predicting at once in one process (a client's job worker beside a user's ``predict``) get the
same results as one after the other, and torch's thread count stays put while they run.

torch (OpenMP) keeps a thread count per thread, taken from the process-wide setting when a thread first runs
torch code; the engine's forward threads are new threads, so the count a new thread starts with is the one
that matters: the sampler reads it from a fresh thread each time. Engines used to set it around every stream
and restore it after, so two streams at once restored each other's values in the wrong order; now the first
CPU stream of the process sets it, once (``engine.pipeline.configure_torch_threads``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from avala_infer import Engine
from tests.conftest import ASSETS, need


def _threads_a_new_thread_gets() -> int:
    import torch

    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    return seen[0]


def _boxes(engine: Engine, images) -> list[tuple]:
    return [
        (p.key, p.detections.xyxy.copy(), p.detections.confidence.copy(), p.detections.class_id.copy())
        for p in engine.predict(images)
    ]


def _same(left: list[tuple], right: list[tuple]) -> bool:
    return len(left) == len(right) and all(
        a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:])) for a, b in zip(left, right)
    )


@pytest.fixture(scope="module")
def engines():
    need(ASSETS / "models" / "yolo11n.pt")
    need(ASSETS / "models" / "yolo11n.onnx")
    with Engine("yolo11n", device="cpu") as pt, Engine("yolo11n-onnx", device="cpu") as onnx:
        yield {"pt": pt, "onnx": onnx}


def test_two_engines_at_once_equal_sequential_runs_and_threads_stay_put(engines, val_images):
    images = sorted(val_images.glob("*.jpg"))[:24]
    expected = {name: _boxes(engine, images) for name, engine in engines.items()}  # one after the other
    before = _threads_a_new_thread_gets()

    samples: list[int] = []
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            samples.append(_threads_a_new_thread_gets())
            time.sleep(0.002)

    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def predict(name: str) -> None:
        try:
            results[name] = [_boxes(engines[name], images) for _ in range(2)]
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    sampler = threading.Thread(target=sample)
    workers = [threading.Thread(target=predict, args=(name,)) for name in engines]
    sampler.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    running.clear()
    sampler.join()
    after = _threads_a_new_thread_gets()

    assert not errors, errors
    for name in engines:
        assert all(_same(run, expected[name]) for run in results[name]), name
    assert len(samples) > 20  # sampled all along the runs
    assert sorted(set(samples)) == [before] and after == before
