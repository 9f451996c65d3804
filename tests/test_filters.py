"""The filter step: thresholds, label lists, label mapping."""

from __future__ import annotations

import numpy as np
import pytest

from avala_infer.annotations import Detections
from avala_infer.errors import ConfigError, UnknownLabelError
from avala_infer.filters import build_filter

MODEL_LABELS = ("person", "car", "truck", "bus")


def _dets(class_ids, scores):
    n = len(class_ids)
    boxes = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    names = np.asarray(MODEL_LABELS, dtype=object)[np.asarray(class_ids, dtype=int)] if n else []
    return Detections(boxes, scores, class_ids, names)


def test_confidence_threshold_is_inclusive_and_keeps_arrays_parallel():
    f = build_filter(MODEL_LABELS, confidence_threshold=0.5)
    out = f.apply(_dets([0, 1, 2, 3], [0.49, 0.5, 0.9, 0.1]))
    assert list(out.class_name) == ["car", "truck"]
    assert out.confidence.tolist() == pytest.approx([0.5, 0.9])
    assert out.xyxy.tolist() == [[4, 5, 6, 7], [8, 9, 10, 11]]


def test_labels_keep_only_those_and_unknown_names_list_the_models_labels():
    f = build_filter(MODEL_LABELS, confidence_threshold=0.1, labels=["car", "bus"])
    out = f.apply(_dets([0, 1, 2, 3], [0.9] * 4))
    assert list(out.class_name) == ["car", "bus"] and out.class_id.tolist() == [0, 1]
    assert f.output_labels == ("car", "bus")
    with pytest.raises(UnknownLabelError, match="'pedestrian'.*person, car, truck, bus"):
        build_filter(MODEL_LABELS, labels=["car", "pedestrian"])


def test_per_label_thresholds_and_score_floor():
    f = build_filter(MODEL_LABELS, confidence_threshold=0.6, label_thresholds={"person": 0.2, "bus": 0.95})
    assert f.score_floor == pytest.approx(0.2)
    out = f.apply(_dets([0, 0, 1, 3, 3], [0.3, 0.1, 0.5, 0.9, 0.97]))
    assert list(zip(out.class_name, out.confidence.round(2))) == [("person", 0.3), ("bus", 0.97)]
    with pytest.raises(UnknownLabelError, match="label_thresholds names unknown label 'van'"):
        build_filter(MODEL_LABELS, label_thresholds={"van": 0.5})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        build_filter(MODEL_LABELS, label_thresholds={"car": 1.5})
    with pytest.raises(ConfigError, match="confidence_threshold must be between 0 and 1"):
        build_filter(MODEL_LABELS, confidence_threshold=-0.1)


def test_label_map_renames_merges_and_drops():
    f = build_filter(
        MODEL_LABELS,
        confidence_threshold=0.0,
        label_map={"car": "vehicle", "truck": "vehicle", "bus": None, "person": "pedestrian"},
    )
    assert f.output_labels == ("pedestrian", "vehicle")
    out = f.apply(_dets([0, 1, 2, 3], [0.9] * 4))
    assert list(out.class_name) == ["pedestrian", "vehicle", "vehicle"]
    assert out.class_id.tolist() == [0, 1, 1]
    # labels speak the mapped names
    only = build_filter(MODEL_LABELS, labels=["vehicle"], label_map={"car": "vehicle", "truck": "vehicle"})
    assert list(only.apply(_dets([0, 1, 2, 3], [0.9] * 4)).class_name) == ["vehicle", "vehicle"]
    with pytest.raises(UnknownLabelError, match="after mapping"):
        build_filter(MODEL_LABELS, labels=["car"], label_map={"car": "vehicle"})
    with pytest.raises(UnknownLabelError, match=r"label_map names \['van'\]"):
        build_filter(MODEL_LABELS, label_map={"van": "vehicle"})


def test_empty_in_empty_out():
    f = build_filter(MODEL_LABELS)
    assert len(f.apply(Detections.empty())) == 0
    assert len(f.apply(_dets([], []))) == 0
