"""The Python API: order, streaming, arrays, filters through the real model, flat memory, close()."""

from __future__ import annotations

import gc
import weakref

import cv2
import numpy as np
import psutil
import pytest

from avala_infer import Engine
from avala_infer.errors import AvalaInferError


def test_predict_yields_in_input_order_across_mixed_shapes(engine_onnx, val_images):
    paths = sorted(val_images.glob("*.jpg"))[:40]
    predictions = list(engine_onnx.predict(paths + ["/no/such.jpg"]))
    assert [p.index for p in predictions] == list(range(41))
    assert [p.source for p in predictions[:40]] == [str(p) for p in paths]
    assert not predictions[-1].ok and "no such file" in predictions[-1].error
    assert {"read", "decode", "preprocess", "forward", "postprocess", "filter"} <= set(predictions[0].timings)


def test_predict_streams_from_a_generator_without_reading_ahead_unboundedly(weights_onnx, val_images):
    engine = Engine(weights_onnx, device="cpu", batch_size=2)
    paths = sorted(val_images.glob("*.jpg"))
    pulled = []

    def source():
        for path in paths:
            pulled.append(path)
            yield path

    stream = engine.predict(source())
    first = next(stream)
    assert first.ok
    # bounded read-ahead: the loader queue, the batch window and the batches in flight; far from all 128
    bs, streams = engine.batch_size, engine.streams
    bound = max(2 * bs * streams, 2 * engine.workers) + 4 * bs + 2 * streams * bs + 1
    assert len(pulled) <= bound < len(paths) / 2
    stream.close()


def test_threshold_and_labels_through_the_model(engine_pt, sample_images):
    everything = {p.key: p.detections for p in engine_pt.predict(sample_images, confidence_threshold=0.25)}
    strict = {
        p.key: p.detections for p in engine_pt.predict(sample_images, confidence_threshold=0.85, labels=["person"])
    }
    for key, d in strict.items():
        assert set(d.class_name) <= {"person"} and (d.confidence >= 0.85).all()
        expected = everything[key][(everything[key].class_name == "person") & (everything[key].confidence >= 0.85)]
        assert np.allclose(d.xyxy, expected.xyxy)
    assert sum(len(d) for d in strict.values()) > 0
    mapped = next(iter(engine_pt.predict(sample_images[0], label_map={"bus": "vehicle", "person": None})))
    assert set(mapped.detections.class_name) == {"vehicle"}


def test_arrays_and_paths_give_the_same_boxes(engine_pt, sample_images):
    image = cv2.imread(str(sample_images[0]))
    from_array, from_path = list(engine_pt.predict([image, sample_images[0]]))
    assert from_array.source == "<array 0>" and from_array.key == "array_000000.png"
    assert np.allclose(from_array.detections.xyxy, from_path.detections.xyxy)


@pytest.mark.slow
def test_memory_stays_flat_over_thousands_of_images(weights_onnx, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):  # 64 distinct small images, linked 3,000 times
        cv2.imwrite(str(folder / f"base_{i}.png"), rng.integers(0, 255, (48 + i % 5 * 8, 64, 3), dtype=np.uint8))
    bases = sorted(folder.glob("base_*.png"))
    for i in range(3000 - len(bases)):
        (folder / f"img_{i:05d}.png").symlink_to(bases[i % len(bases)])
    engine = Engine(weights_onnx, device="cpu", input_size=64, batch_size=16)
    process = psutil.Process()
    count, rss_at_500 = 0, 0
    for prediction in engine.predict(folder, confidence_threshold=0.001):
        assert prediction.ok
        count += 1
        if count == 500:
            rss_at_500 = process.memory_info().rss
    growth_mb = (process.memory_info().rss - rss_at_500) / 2**20
    assert count == 3000
    assert growth_mb < 40, f"RSS grew {growth_mb:.1f} MB over 2,500 more images"


def test_stream_keeps_arrival_order_whatever_the_item_indices(engine_onnx, val_images):
    from avala_infer.engine.sources import Item

    paths = sorted(val_images.glob("*.jpg"))[:12]
    indices = [100, 5, 42, 7, 1000, 3, 9, 11, 8, 2, 77, 6]
    items = [Item(i, str(p), p.name) for i, p in zip(indices, paths)]
    options = engine_onnx.predict_options()
    out = list(engine_onnx.stream(items, options))
    assert [p.index for p in out] == indices


def test_stream_hands_each_decoded_image_to_on_image_by_position(engine_onnx, val_images):
    """``on_image`` gets every image the loaders decoded (not the ones that failed), by position in the stream,
    whatever the item indices; an error in it stops the stream instead of failing items."""
    from avala_infer.engine.sources import Item

    paths = sorted(val_images.glob("*.jpg"))[:6]
    items = [Item(10 - i, str(p), p.name) for i, p in enumerate(paths)]
    items.insert(3, Item(99, "/no/such.jpg", "gone.jpg"))
    seen: dict[int, tuple[int, int]] = {}
    out = list(
        engine_onnx.stream(items, engine_onnx.predict_options(), on_image=lambda i, a: seen.update({i: a.shape[:2]}))
    )
    assert sorted(seen) == [0, 1, 2, 4, 5, 6] and not out[3].ok
    assert all(seen[i] == (p.height, p.width) for i, p in enumerate(out) if p.ok)
    assert seen[0] == cv2.imread(str(paths[0])).shape[:2]

    def broken(position, image):
        raise ValueError("a sink failed")

    with pytest.raises(ValueError, match="a sink failed"):
        list(engine_onnx.stream(items, engine_onnx.predict_options(), on_image=broken))


def test_one_stream_and_several_give_the_same_predictions(weights_onnx, val_images):
    import torch

    paths = sorted(val_images.glob("*.jpg"))[:24]
    threads_before = torch.get_num_threads()
    single = list(Engine(weights_onnx, device="cpu", streams=1, batch_size=2).predict(paths))
    several = Engine(weights_onnx, device="cpu", streams=3, batch_size=2)
    assert several.cpu_threads >= 1
    multi = list(several.predict(paths))
    assert torch.get_num_threads() == threads_before  # restored after the stream
    assert [p.source for p in multi] == [p.source for p in single] == [str(p) for p in paths]
    for a, b in zip(single, multi):
        assert a.detections.class_id.tolist() == b.detections.class_id.tolist()
        assert np.allclose(a.detections.xyxy, b.detections.xyxy, atol=0.05)


def test_concurrent_streams_do_not_share_per_shape_model_state(weights_pt, val_images):
    """ultralytics' Detect head caches anchors for the last input shape; 448x640 and 640x448 inputs have the
    same anchor count, so sharing one module between streams would give wrong boxes silently."""
    from avala_infer.engine.loaders import read_image
    from avala_infer.engine.sources import Item

    engine = Engine(weights_pt, device="cpu", streams=2, batch_size=1)
    shapes = {}
    for path in sorted(val_images.glob("*.jpg")):
        shape = engine.predictor.prepare(read_image(Item(0, str(path), path.name), {})).image.shape[:2]
        shapes.setdefault(shape, []).append(path)
    wide, tall = shapes[(448, 640)][:6], shapes[(640, 448)][:6]
    paths = [p for pair in zip(wide, tall) for p in pair]  # alternate the two shapes
    alone = list(Engine(weights_pt, device="cpu", streams=1, batch_size=1).predict(paths))
    side_by_side = list(engine.predict(paths))
    for a, b in zip(alone, side_by_side):
        assert b.ok, b.error
        assert a.detections.class_id.tolist() == b.detections.class_id.tolist()
        assert np.allclose(a.detections.xyxy, b.detections.xyxy, atol=0.05)
    assert engine.predictor.replicas.size == 2


@pytest.mark.parametrize("weights, held", [("weights_onnx", "session"), ("weights_pt", "replicas")])
def test_close_releases_the_model_and_refuses_to_predict(weights, held, request, sample_images):
    with Engine(request.getfixturevalue(weights), device="cpu") as engine:
        assert [p.ok for p in engine.predict(sample_images)] == [True, True]
        predictor = weakref.ref(engine.predictor)
        resource = weakref.ref(getattr(engine.predictor, held))
        options = engine.predict_options()
    assert engine.closed
    gc.collect()
    assert predictor() is None and resource() is None  # nothing keeps the model alive
    with pytest.raises(AvalaInferError, match="closed and its model released; create a new Engine"):
        engine.predict(sample_images)
    with pytest.raises(AvalaInferError, match="closed"):
        engine.stream([], options)  # the job runners' entry
    engine.close()  # again: nothing happens
    assert engine.closed
