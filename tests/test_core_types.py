"""Detections validation and the batching / ordering helpers."""

from __future__ import annotations

import numpy as np
import pytest

from avala_infer.annotations import Detections
from avala_infer.engine.batching import ReorderBuffer, ShapeBatcher


def test_detections_validate_shapes_and_index():
    with pytest.raises(ValueError, match=r"xyxy must have shape \(n, 4\)"):
        Detections(np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.array(["a", "b"], object))
    with pytest.raises(ValueError, match=r"confidence must have shape \(2,\)"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2), np.array(["a", "b"], object))
    d = Detections(np.arange(8).reshape(2, 4), [0.1, 0.9], [3, 4], np.array(["a", "b"], object))
    assert d.xyxy.dtype == np.float32 and d.class_id.dtype == np.int64
    kept = d[d.confidence > 0.5]
    assert len(kept) == 1 and kept.class_name.tolist() == ["b"] and kept.xyxy.tolist() == [[4, 5, 6, 7]]
    assert len(d[1]) == 1
    assert d.area.tolist() == [4.0, 4.0]
    assert len(Detections.empty()) == 0 and Detections.empty().xyxy.shape == (0, 4)


def test_shape_batcher_groups_by_key_and_flushes_oldest_when_window_is_full():
    batcher = ShapeBatcher(key=lambda x: x[0], batch_size=2, window=3)
    assert batcher.add(("a", 0)) == []
    assert batcher.add(("b", 1)) == []
    assert batcher.add(("a", 2)) == [[("a", 0), ("a", 2)]]
    assert batcher.add(("c", 3)) == []
    # four items have arrived since "b" came (window 3): its bucket leaves early
    assert batcher.add(("d", 4)) == [[("b", 1)]]
    assert batcher.add(("e", 5)) == []
    # four waiting now > window 3: the bucket with the oldest item ("c") leaves early
    assert batcher.add(("f", 6)) == [[("c", 3)]]
    assert batcher.flush() == [[("d", 4)], [("e", 5)], [("f", 6)]]
    assert batcher.waiting == 0


def test_shape_batcher_never_holds_a_rare_shape_behind_a_common_one():
    """A lone odd-shaped item leaves within ``window`` arrivals even while full batches of the common shape keep
    leaving (without the age rule it waited for the final flush, holding every later result in the reorder
    buffer: a job then committed nothing until its end)."""
    batcher = ShapeBatcher(key=lambda x: x[0], batch_size=2, window=4)
    released_at = None
    assert batcher.add(("odd", 0)) == []
    for i in range(1, 40):
        for batch in batcher.add(("common", i)):
            if batch == [("odd", 0)]:
                released_at = i
    assert released_at == 4 and batcher.waiting <= 2  # the 4th arrival after it lets it go


def test_reorder_buffer_releases_in_index_order():
    buffer = ReorderBuffer(index=lambda x: x)
    buffer.put(2)
    buffer.put(1)
    assert list(buffer.ready()) == []
    buffer.put(0)
    assert list(buffer.ready()) == [0, 1, 2]
    assert len(buffer) == 0


def test_image_size_from_headers(sample_images, tmp_path):
    import cv2

    from avala_infer.engine.image_header import image_size

    assert image_size(sample_images[0].read_bytes()) == (810, 1080)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((7, 5, 3), np.uint8))
    assert image_size((tmp_path / "a.png").read_bytes()) == (5, 7)
    assert image_size(b"GIF89a....") is None and image_size(b"\xff\xd8\xff") is None


def test_concurrent_runner_runs_batches_side_by_side_and_returns_every_result():
    import threading
    import time

    from avala_infer.engine.batching import ConcurrentRunner

    running, peak, lock = [0], [0], threading.Lock()

    def work(batch):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return [x * 10 for x in batch]

    runner = ConcurrentRunner(work, streams=2)
    results = []
    for i in range(8):
        results += runner.submit([i, i])
        assert len(runner.inflight) <= 4
    results += runner.drain()
    runner.close()
    assert sorted(r[0] for r in results) == [i * 10 for i in range(8)]
    assert peak[0] == 2
    inline = ConcurrentRunner(work, streams=1)
    assert inline.submit([1]) == [[10]] and inline.pool is None
