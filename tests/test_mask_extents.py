"""Issue 13, item 1: instance masks are encoded on their extent, not the whole image.

The YOLO predictor says where each mask can be (``Detections.mask_bounds``, from its box and the upsampling);
the codecs find the mask's extent inside those bounds and trace or run-length encode that rectangle only; the
writers of one run share the results through the detections' memo. Each step is checked against the whole-image
way it replaced: bounds that hold every set pixel (synthetic heads at upscaling and downscaling sizes, real
yolo11n-seg masks), runs that pycocotools decodes to the same mask, outlines equal to ``cv2.findContours`` on the
whole image, and writers whose files do not change when they share the memo.
"""

from __future__ import annotations

import copy
import pickle

import cv2
import numpy as np
import pytest

from avala_infer import Engine
from avala_infer.annotations import Detections
from avala_infer.exporters import make_writer
from avala_infer.exporters.codecs import instance_masks, rle
from avala_infer.exporters.codecs.extent import mask_extent
from avala_infer.exporters.codecs.number_text import rounded_row_texts, rounded_texts
from avala_infer.exporters.codecs.polygons import mask_to_polygons
from avala_infer.filters import build_filter
from avala_infer.predictors.detection import yolo_seg
from avala_infer.predictors.detection.yolo import mask_bounds
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.test_mask_memory import synthetic_instances


def _outside(masks: np.ndarray, bounds: np.ndarray) -> int:
    """How many set pixels of ``masks`` lie outside their ``bounds``."""
    inside = sum(int(m[y1:y2, x1:x2].sum()) for m, (x1, y1, x2, y2) in zip(masks, bounds.tolist()))
    return int(masks.sum()) - inside


def _scanned_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (0, 0, 0, 0) if not len(rows) else (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


def _plain_counts(mask: np.ndarray) -> list[int]:
    """COCO's runs the slow, obvious way: column-major pixels, a zero run first."""
    flat = mask.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flat, [0]))))  # where the value changes, then the end
    bounds = np.concatenate(([0], edges[edges < flat.size], [flat.size]))
    return np.diff(bounds).tolist() if flat.size else []


@pytest.mark.parametrize(
    "orig_shape, in_shape",
    [
        ((999, 1333), (480, 640)),  # downscaled, letterbox padding above and below
        ((100, 37), (640, 640)),  # upscaled ~6x to 17x: one content pixel spreads over many output pixels
        ((480, 640), (480, 640)),  # the same size: no padding
        ((1333, 999), (640, 480)),  # portrait
    ],
)
def test_bounds_hold_every_set_pixel_of_synthetic_masks(orig_shape, in_shape):
    protos, coefficients, boxes = synthetic_instances(23, in_shape, orig_shape, seed=3)
    masks, _ = yolo_seg.instance_masks(protos, coefficients, boxes, in_shape, orig_shape)
    masks = masks.numpy()
    bounds = mask_bounds(boxes.numpy(), in_shape, [orig_shape], [len(boxes)])
    assert masks.any() and _outside(masks, bounds) == 0
    h, w = orig_shape
    assert (bounds[:, [0, 2]] >= 0).all() and (bounds[:, [0, 2]] <= w).all() and (bounds[:, [1, 3]] <= h).all()
    # they are bounds, not the image: a small box's bounds are a small part of it
    areas = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
    assert areas.min() < h * w / 4
    for mask, bound in zip(masks, bounds):
        assert mask_extent(mask, bound) == _scanned_extent(mask)


@pytest.fixture(scope="module")
def seg_predictions(sample_images, val_images):
    images = [*sample_images, *sorted(val_images.glob("*.jpg"))[:8]]
    with Engine(need(ASSETS / "models" / "yolo11n-seg.onnx"), device="cpu") as engine:
        predictions = [p for p in engine.predict(images) if p.ok]
    assert sum(len(p.detections) for p in predictions) >= 20
    return predictions


def test_real_masks_lie_inside_their_bounds_and_extents(seg_predictions):
    for prediction in seg_predictions:
        d = prediction.detections
        assert d.mask is not None and d.mask_bounds is not None and len(d.mask_bounds) == len(d)
        assert _outside(d.mask, d.mask_bounds) == 0
        assert instance_masks.extents(d) == [_scanned_extent(m) for m in d.mask]


def _edge_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    masks = [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((40, 30)) > 0.5, rng.random((1, 9)) > 0.5]
    for y, x in ((0, 0), (6, 4), (0, 4), (6, 0), (3, 2)):  # a single pixel in each corner and the middle
        one = np.zeros((7, 5), bool)
        one[y, x] = True
        masks.append(one)
    band = np.zeros((7, 5), bool)
    band[:, 1:3] = True  # whole columns: each column's end meets the next one's start
    blob = np.zeros((60, 80), bool)
    blob[10:50, 20:70] = True
    blob[20:30, 30:40] = False  # a hole
    blob[23:27, 33:37] = True  # an island inside it
    return [*masks, band, blob, np.asfortranarray(blob), blob[::-1, ::2]]


@pytest.mark.parametrize("index", range(13))
def test_runs_and_outlines_on_the_extent_equal_the_whole_image(index):
    from pycocotools import mask as mask_utils

    mask = _edge_masks()[index]
    extent = _scanned_extent(mask)
    runs = rle.counts(mask, extent)
    assert runs.tolist() == rle.counts(mask).tolist() == _plain_counts(mask)
    assert (rle.decode({"size": list(mask.shape), "counts": runs.tolist()}) == mask).all()
    compressed = rle.compress({"size": list(mask.shape), "counts": runs})
    expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert compressed["counts"] == expected["counts"].decode("ascii")
    assert (mask_utils.decode({**compressed, "counts": compressed["counts"].encode()}) == mask).all()
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parents = hierarchy[0][:, 3] if hierarchy is not None else np.zeros(0, int)
    whole = [c.reshape(-1, 2) for c, p in zip(contours, parents) if p < 0 and len(c) >= 3]
    for polygons, holes in (mask_to_polygons(mask, extent), mask_to_polygons(mask)):
        assert [p.tolist() for p in polygons] == [p.tolist() for p in whole]
        assert holes == bool((parents >= 0).any())
    before = mask.copy()
    mask_to_polygons(mask, extent)
    assert (mask == before).all()  # traced on a view of the mask: it must be left as it was


def _write(fmt: str, predictions, folder, labels) -> dict[str, bytes]:
    options = {"mask_format": "polygon"} if fmt == "coco-polygon" else {}
    writer = make_writer(fmt.split("-")[0], folder, labels, model_type=ModelType.INSTANCE_SEGMENTATION, **options)
    for prediction in predictions:
        writer.write(prediction)
    writer.close()
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writers_sharing_the_memo_write_what_each_writes_alone(seg_predictions, tmp_path):
    """One run's writers share each item's runs and outlines: what each writes must not depend on which writer
    filled the memo, so each format is written alone on fresh copies, then all in turn on one set of objects."""
    labels = tuple(sorted({str(n) for p in seg_predictions for n in p.detections.class_name}))
    formats = ("labelstudio", "coco", "coco-polygon", "jsonl", "yolo")

    alone = {}
    for fmt in formats:
        copies = [pickle.loads(pickle.dumps(p)) for p in seg_predictions]  # each with an empty memo
        assert all(not c.detections._memo for c in copies)
        alone[fmt] = _write(fmt, copies, tmp_path / f"alone-{fmt}", labels)
    shared = [pickle.loads(pickle.dumps(p)) for p in seg_predictions]
    for fmt in formats:
        files = _write(fmt, shared, tmp_path / f"shared-{fmt}", labels)
        files.pop("yolo/data.yaml", None), alone[fmt].pop("yolo/data.yaml", None)  # names its own folder
        assert files == alone[fmt], fmt
    d = next(p.detections for p in shared if len(p.detections))
    assert set(d._memo) >= {"extents", "coco_runs", "outlines"}


@pytest.mark.parametrize("threads", [2, 3])
def test_masks_shared_over_threads_write_what_one_thread_writes(seg_predictions, tmp_path, monkeypatch, threads):
    """``AVALA_INFER_MASK_THREADS`` (off by default) shares an item's masks over a pool: the files are the same,
    masks in their order."""
    from avala_infer.exporters.codecs import mask_pool

    labels = tuple(sorted({str(n) for p in seg_predictions for n in p.detections.class_name}))
    assert max(len(p.detections) for p in seg_predictions) > threads  # items with more masks than threads
    for fmt in ("coco", "yolo", "labelstudio"):
        monkeypatch.setattr(mask_pool, "THREADS", 1)
        inline = _write(fmt, [pickle.loads(pickle.dumps(p)) for p in seg_predictions], tmp_path / f"1-{fmt}", labels)
        monkeypatch.setattr(mask_pool, "THREADS", threads)
        pooled = _write(fmt, [pickle.loads(pickle.dumps(p)) for p in seg_predictions], tmp_path / f"n-{fmt}", labels)
        inline.pop("yolo/data.yaml", None), pooled.pop("yolo/data.yaml", None)  # names its own folder
        assert pooled == inline, fmt


def test_mask_threads_come_from_the_environment():
    from avala_infer.errors import ConfigError
    from avala_infer.exporters.codecs.mask_pool import THREADS_ENV, threads_from_env

    assert threads_from_env({}) == 1 and threads_from_env({THREADS_ENV: " "}) == 1  # the default: no pool
    assert threads_from_env({THREADS_ENV: "4"}) == 4
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ConfigError, match=f"{THREADS_ENV} must be a whole number.*got '{bad}'"):
            threads_from_env({THREADS_ENV: bad})


def test_memo_is_read_only_and_never_travels(seg_predictions):
    d = next(p.detections for p in seg_predictions if len(p.detections) >= 2)
    d = pickle.loads(pickle.dumps(d))
    runs, outlines = instance_masks.runs(d), instance_masks.outlines(d)
    assert instance_masks.runs(d) is runs  # worked out once
    with pytest.raises(ValueError):
        runs[0][0] = 1
    with pytest.raises(ValueError):
        outlines[0][0][0][0, 0] = 1
    for other in (copy.copy(d), pickle.loads(pickle.dumps(d)), d[[1, 0]], d[np.ones(len(d), bool)]):
        assert other._memo == {}
    assert d == copy.copy(d)  # the memo is not compared
    swapped = d[[1, 0]]
    assert (swapped.mask_bounds == d.mask_bounds[[1, 0]]).all()
    assert [r.tolist() for r in instance_masks.runs(swapped)] == [runs[1].tolist(), runs[0].tolist()]


def test_the_filter_keeps_masks_uncopied_when_it_drops_nothing(seg_predictions):
    d = next(p.detections for p in seg_predictions if len(p.detections) >= 2)
    labels = [str(n) for n in sorted(set(d.class_name))]
    everything = build_filter(labels, confidence_threshold=0.0)
    kept = everything.apply(Detections(d.xyxy, d.confidence, [labels.index(n) for n in d.class_name],
                                       d.class_name, d.mask, d.mask_bounds))  # fmt: skip
    assert kept.mask is d.mask and (kept.mask_bounds == d.mask_bounds).all()
    assert kept.class_name.tolist() == d.class_name.tolist()
    best = build_filter(labels, confidence_threshold=float(d.confidence.max()))
    some = best.apply(Detections(d.xyxy, d.confidence, [labels.index(n) for n in d.class_name],
                                 d.class_name, d.mask, d.mask_bounds))  # fmt: skip
    top = int(d.confidence.argmax())
    assert len(some) < len(d) and (some.mask[0] == d.mask[top]).all()
    assert (some.mask_bounds[0] == d.mask_bounds[top]).all()


def test_row_texts_print_as_the_groups_do():
    rng = np.random.default_rng(2)
    groups = [rng.random((n, 2)) * 100 for n in (3, 0, 1, 7)]
    rows = np.concatenate(groups)
    sizes = [len(g) for g in groups]
    assert rounded_row_texts(rows, sizes, 4, (", ", "], [")) == rounded_texts(groups, 4, (", ", "], ["))
    huge = rows.copy()
    huge[0, 0] = 1e20  # beyond numpy's reach: printed by Python, group by group
    pairs = (", ", "], [")
    assert rounded_row_texts(huge, sizes, 4, pairs) == rounded_texts(np.split(huge, np.cumsum(sizes)[:-1]), 4, pairs)
    with pytest.raises(ValueError):
        rounded_row_texts(rows, [1, 2], 4)


def test_each_image_owns_its_masks(seg_predictions):
    """The batch's masks come to the host in one copy, but no image's arrays are views of it: the thread that drops
    a batch's last prediction would free the whole batch's masks at once (the engine's consuming thread)."""
    masks = [p.detections.mask for p in seg_predictions if len(p.detections)]
    assert len(masks) >= 4
    for i, a in enumerate(masks):
        assert a.base is None or a.base.size == a.size  # its own buffer, not a slice of a bigger one
        assert not any(np.shares_memory(a, b) for b in masks[i + 1 :])
