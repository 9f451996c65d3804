"""The writers run on their own thread (labeling._WriterThread): items are written in input order, progress
counts written items, an error in a writer stops the run with that error and no later item is written, and no
thread outlives label(), whether it returns or raises."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

from avala_infer import label
from avala_infer.annotations import Detections, Prediction
from avala_infer.exporters.base import FailureLog
from avala_infer.exporters.jsonl import JsonlWriter
from avala_infer.labeling import WRITER_QUEUE_ITEMS, _drive

# an Engine's own stage threads live until it closes (engine/batching.py StageChain): not the writer's leftovers
ENGINE_THREAD_PREFIXES = ("avala-forward@", "avala-batch@", "avala-stage@")


def _new_threads(before: set[threading.Thread]) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(ENGINE_THREAD_PREFIXES)
    ]


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for pattern in ("*.part", "*.tmp") for p in out.rglob(pattern))


def _predictions(n: int):
    """``n`` predictions, one box each whose score encodes the position; every 7th one failed."""
    for i in range(n):
        if i % 7 == 3:
            yield Prediction(i, f"/data/{i}.jpg", f"{i}.jpg", error="cannot decode")
            continue
        boxes = Detections([[i % 640, 1, i % 640 + 10, 20]], [((i % 1000) + 1) / 1001], [i % 80], [f"c{i % 80}"])
        yield Prediction(i, f"/data/{i}.jpg", f"{i}.jpg", width=640, height=480, result=boxes)


def test_many_items_are_written_in_input_order_and_all_counted(tmp_path):
    n = WRITER_QUEUE_ITEMS * 40  # the queue fills and drains many times over
    writer, failures = JsonlWriter(tmp_path, ()), FailureLog(tmp_path)
    calls = []
    done = _drive(_predictions(n), [writer, failures], lambda *a: calls.append(a), n, failures)
    writer.close()
    failures.close()
    keys = [json.loads(line)["key"] for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    failed = [json.loads(line)["key"] for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert done == n
    assert keys == [f"{i}.jpg" for i in range(n) if i % 7 != 3]
    assert failed == [f"{i}.jpg" for i in range(n) if i % 7 == 3]
    assert calls[-1] == (n, n, len(failed))  # the last report: every item written, every failure counted
    assert [c[0] for c in calls] == sorted({c[0] for c in calls})  # never backwards, never twice


def test_progress_counts_items_already_written(engine_onnx, val_images, tmp_path):
    images = sorted(val_images.glob("*.jpg"))[:24]
    out = tmp_path / "out"
    seen = []

    def progress(done, total, failed):  # every item reported is on disk already
        seen.append((done, len(list((out / "yolo" / "labels").glob("*.txt")))))

    report = label(images, engine_onnx, out=out, formats=["yolo"], progress=progress)
    assert report.total == 24 and seen[-1] == (24, 24)
    assert all(written == done for done, written in seen)


def test_a_writer_error_on_item_k_stops_the_run_with_that_error(engine_onnx, val_images, tmp_path):
    images = sorted(val_images.glob("*.jpg"))[:20]
    k = 7
    out = tmp_path / "out"
    blocked = out / "yolo" / "labels" / (images[k].stem + ".txt")
    blocked.mkdir(parents=True)  # the k-th label file cannot replace a folder: the YOLO writer fails on item k
    before = set(threading.enumerate())
    with pytest.raises(IsADirectoryError) as caught:
        label(images, engine_onnx, out=out, formats=["jsonl", "coco", "yolo"], exist_ok=True)
    assert str(blocked) in str(caught.value)
    assert _new_threads(before) == []
    assert _leftovers(out) == []
    # items before k were written (in order, label files stay: abort() allows them); none after k was
    written = sorted(p.stem for p in (out / "yolo" / "labels").glob("*.txt") if p.is_file())
    assert written == sorted(p.stem for p in images[:k])
    assert sorted(p.name for p in out.iterdir()) == ["yolo"]  # no JSONL, COCO or summary file


def test_an_error_in_progress_stops_the_run_with_that_error(engine_onnx, val_images, tmp_path):
    out = tmp_path / "out"
    before = set(threading.enumerate())

    def progress(done, total, failed):
        raise ValueError(f"the display broke at {done}")

    with pytest.raises(ValueError, match="the display broke at 1$"):
        label(sorted(val_images.glob("*.jpg"))[:10], engine_onnx, out=out, formats=["jsonl"], progress=progress)
    assert _new_threads(before) == []
    assert _leftovers(out) == [] and not (out / "annotations.jsonl").exists()


@pytest.mark.parametrize("error", [RuntimeError("the image store went away"), KeyboardInterrupt()])
def test_an_error_in_the_inputs_stops_the_writer_thread(engine_onnx, val_images, tmp_path, error):
    images = sorted(val_images.glob("*.jpg"))
    out = tmp_path / "out"
    before = set(threading.enumerate())

    def sources():
        for i, image in enumerate(images):
            if i == 90:
                raise error
            yield image

    with pytest.raises(type(error)):
        label(sources(), engine_onnx, out=out, formats=["jsonl", "yolo"])
    assert _new_threads(before) == []
    assert _leftovers(out) == [] and not (out / "annotations.jsonl").exists()
    written = sorted(p.stem for p in (out / "yolo" / "labels").glob("*.txt"))
    assert written == sorted(p.stem for p in images[: len(written)])  # a prefix of the inputs, nothing skipped


def test_the_writer_thread_ends_when_label_returns(engine_onnx, val_images, tmp_path):
    before = set(threading.enumerate())
    report = label(sorted(val_images.glob("*.jpg"))[:5], engine_onnx, out=tmp_path / "out", formats=["jsonl"])
    assert report.total == 5 and _new_threads(before) == []


def test_a_failing_sink_with_a_full_queue_drops_the_rest_without_blocking(tmp_path):
    """The writer fails while the feeder waits on a full queue: the thread keeps taking items, so the feeder
    returns and gets the error; nothing after the failing item reaches any sink."""
    k = WRITER_QUEUE_ITEMS // 2

    class FailsAt:
        def __init__(self):
            self.seen = []

        def write(self, prediction):
            if prediction.index == k:
                time.sleep(0.5)  # the feeder fills the queue meanwhile and waits on it
                raise OSError(28, "No space left on device")
            self.seen.append(prediction.index)

    failing, writer, failures = FailsAt(), JsonlWriter(tmp_path, ()), FailureLog(tmp_path)
    items = (dataclasses.replace(p, error=None) for p in _predictions(WRITER_QUEUE_ITEMS * 10))
    raised = []

    def feed():
        try:
            _drive(items, [writer, failing, failures], None, None, failures)
        except OSError as exc:
            raised.append(exc)

    before = set(threading.enumerate())
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    feeder.join(timeout=30)
    assert not feeder.is_alive(), "the feeder is stuck on a full queue"
    writer.abort()
    assert [str(e) for e in raised] == ["[Errno 28] No space left on device"]
    assert failing.seen == list(range(k))
    assert _new_threads(before) == [] and not list(tmp_path.iterdir())
