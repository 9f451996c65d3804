"""Our boxes equal ultralytics' on the same weights and images (the issue's acceptance criterion):
same class, IoU >= 0.99 and score within 1e-3 for at least 99% of the reference boxes over coco128 val2017 (its
first 64 images, tests/conftest.py's ``val_subset``: the criterion holds image by image, and all 128 through both
tools and both backends cost CI some 20 s more; AVALA_INFER_FULL_SWEEP=1 runs all 128)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import VAL_SUBSET
from tests.reference import count_matches, ultralytics_predictions

pytestmark = pytest.mark.slow


def _parity(engine, weights, source, **predict_kwargs):
    reference = ultralytics_predictions(weights, source, **predict_kwargs)
    total = matched = ours_total = 0
    seen = 0
    for pred in engine.predict(source, confidence_threshold=predict_kwargs.get("conf", 0.25)):
        assert pred.ok, pred.error
        ref_boxes, ref_scores, ref_cls, (h, w) = reference[str(Path(pred.source).resolve())]
        assert (pred.height, pred.width) == (h, w)
        d = pred.detections
        total += len(ref_boxes)
        ours_total += len(d)
        matched += count_matches(ref_boxes, ref_scores, ref_cls, d.xyxy, d.confidence, d.class_id)
        seen += 1
    assert seen == len(reference)
    return total, ours_total, matched


@pytest.mark.parametrize("engine_name", ["engine_pt", "engine_onnx"])
def test_boxes_match_ultralytics_predict_rect(request, engine_name, val_subset):
    engine = request.getfixturevalue(engine_name)
    total, ours, matched = _parity(engine, engine.predictor.weights, val_subset)
    print(f"{engine_name}: {matched}/{total} reference boxes matched, {ours} of ours")
    assert total > {64: 300, 128: 600}[VAL_SUBSET]  # at 0.25: about 700 boxes on all 128 images
    assert matched / total >= 0.99, (matched, total)
    assert abs(ours - total) <= 0.01 * total, (ours, total)


def test_square_letterbox_matches_predict_rect_false(weights_pt, val_images, tmp_path):
    from avala_infer import Engine

    subset = tmp_path / "subset"
    subset.mkdir()
    for path in sorted(val_images.glob("*.jpg"))[:24]:
        os.symlink(path, subset / path.name)
    engine = Engine(weights_pt, device="cpu", letterbox="square", batch_size=4)
    total, ours, matched = _parity(engine, weights_pt, subset, rect=False)
    assert total > 50
    assert matched / total >= 0.99, (matched, total)


@pytest.mark.parametrize("engine_name", ["engine_pt", "engine_onnx"])
def test_labels_are_kept_before_max_det_counts_as_ultralytics_classes(request, engine_name, val_images, tmp_path):
    """``labels=`` cuts the other classes before ``max_det`` counts (ultralytics' ``classes=``): an image's best 3
    boxes are its best 3 persons and cars, however many higher-scoring boxes of other classes it has."""
    engine = request.getfixturevalue(engine_name)
    subset = tmp_path / "subset"
    subset.mkdir()
    for path in sorted(val_images.glob("*.jpg"))[:16]:
        os.symlink(path, subset / path.name)
    reference = ultralytics_predictions(engine.predictor.weights, subset, conf=0.1, max_det=3, classes=[0, 2])
    total = matched = crowded_out = 0
    options = {"confidence_threshold": 0.1, "max_det": 3}
    unfiltered = {p.source: p.detections for p in engine.predict(subset, **options)}
    for pred in engine.predict(subset, labels=["person", "car"], **options):
        ref_boxes, ref_scores, ref_cls, _ = reference[str(Path(pred.source).resolve())]
        d = pred.detections
        assert len(d) == len(ref_boxes), pred.source
        total += len(ref_boxes)
        matched += count_matches(ref_boxes, ref_scores, ref_cls, d.xyxy, d.confidence, d.class_id)
        crowded_out += len(d) - int(np.isin(unfiltered[pred.source].class_name, ["person", "car"]).sum())
    assert total > 16 and matched == total, (matched, total)
    assert crowded_out > 0  # images where other classes took max_det's places: what the early cut is for
