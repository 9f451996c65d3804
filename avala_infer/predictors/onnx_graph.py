"""Rewrites of an ONNX graph for onnxruntime's CPU kernels: faster runs, every output the same bit for bit.

One rewrite today, :func:`move_softmax_before_transpose`. onnxruntime's CPU ``Softmax`` (opset 13+) on an axis that
is not the last one swaps that axis with the last, runs, and swaps back: two full copies of the tensor, and when
the axis is not next to last neither swap is the single-axis move its transpose has a fast path for. The DFL head of
every ultralytics YOLO export (detect, segment, pose, obb) is such a case: ``Reshape (b, 4, 16, a)`` ->
``Transpose (0, 2, 1, 3)`` -> ``Softmax(axis=1)`` on ``(b, 16, 4, a)``, which costs ~7 ms of yolo11n's ~80 ms per
640-px image on one core. Softmax on the Transpose's input (axis 2, next to last) and the Transpose after it
computes the same values in the same order (the same kernel over the same 16 numbers) and takes ~1 ms.

The graph is read and written with the ``protobuf`` package onnxruntime itself depends on, through a schema of the
few ONNX fields these rewrites touch (:func:`message_classes`): every other field (weights, shapes, metadata) passes
through as it came, bytes unread. Not with the ``onnx`` package: it is not a dependency, and importing it costs
~1.5 s of CPU (its ``ml_dtypes``) at every start. A model whose weights lie in external data files goes unchanged
(onnxruntime could not find them from a graph handed over as bytes), and so does a file that does not parse
(onnxruntime's own error says more). On CUDA and TensorRT the file goes unchanged too: their kernels differ, and
this rewrite is measured on a CPU only.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")
EXTERNAL_DATA = 1  # TensorProto.DataLocation.EXTERNAL
ATTRIBUTE_INT, ATTRIBUTE_INTS = 2, 7  # AttributeProto.AttributeType
SOFTMAX_AXIS_OPSET = 13  # before opset 13 Softmax flattens the input to 2-D at its axis: moving it changes the math


def cpu_graph(weights: Path) -> bytes | None:
    """The serialised model at ``weights`` with the CPU rewrites applied, or ``None`` when the file should be
    loaded as it is (nothing to rewrite, external data, or a file that does not parse)."""
    from google.protobuf.message import DecodeError

    model = message_classes()["Model"]()
    try:
        model.ParseFromString(weights.read_bytes())
    except (OSError, DecodeError):
        return None
    if any(t.data_location == EXTERNAL_DATA for t in model.graph.initializer):
        return None
    moved = move_softmax_before_transpose(model)
    if not moved:
        return None
    log.debug("%s: %d Softmax node(s) moved before their Transpose for the CPU kernels", weights.name, moved)
    return model.SerializeToString()


def move_softmax_before_transpose(model: Any) -> int:
    """``Transpose(perm) -> Softmax(axis=k)`` becomes ``Softmax(axis=perm[k]) -> Transpose(perm)`` in ``model``'s
    main graph (a :func:`message_classes` ``Model``), in place, where the Transpose feeds nothing else and the move
    brings the softmax axis to the last or the next-to-last place from further in front (see the module's note);
    returns how many were moved."""
    if opset(model) < SOFTMAX_AXIS_OPSET:
        return 0
    node_class = message_classes()["Node"]
    graph = model.graph
    nodes = [node_class.FromString(node.SerializeToString()) for node in graph.node]  # free-standing copies
    producers = {output: i for i, node in enumerate(nodes) for output in node.output}
    readers = input_counts(graph)
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1
    names = {name for node in nodes for name in (*node.input, *node.output)}
    moved = 0
    for i, softmax in enumerate(nodes):
        if softmax.op_type != "Softmax" or softmax.domain not in DEFAULT_DOMAINS:
            continue
        t = producers.get(softmax.input[0])
        transpose = nodes[t] if t is not None else None
        if transpose is None or transpose.op_type != "Transpose" or transpose.domain not in DEFAULT_DOMAINS:
            continue
        perm = [int(d) for d in getattr(attribute(transpose, "perm"), "ints", ())]
        if not perm or readers.get(transpose.output[0], 0) != 1:
            continue
        rank = len(perm)
        axis = getattr(attribute(softmax, "axis"), "i", -1) % rank
        if axis >= rank - 2 or perm[axis] < rank - 2:  # already fast, or the move would not make it fast
            continue
        before = unique_name(f"{softmax.output[0]}/before_transpose", names)
        names.add(before)
        # the pair takes the two nodes' places: the Transpose's input is ready where the Transpose was, and the
        # Softmax's readers come after the Softmax's place, so the order stays topological
        new_softmax = node_class(op_type="Softmax", name=softmax.name, input=[transpose.input[0]], output=[before])
        new_softmax.attribute.add(name="axis", type=ATTRIBUTE_INT, i=perm[axis])
        new_transpose = node_class(op_type="Transpose", name=transpose.name, input=[before], output=softmax.output)
        new_transpose.attribute.add(name="perm", type=ATTRIBUTE_INTS, ints=perm)
        gone = transpose.output[0]
        nodes[t], nodes[i] = new_softmax, new_transpose
        kept = [info for info in graph.value_info if info.name != gone]  # the shape of a tensor no longer made
        if len(kept) < len(graph.value_info):
            kept = [type(info).FromString(info.SerializeToString()) for info in kept]
            del graph.value_info[:]
            graph.value_info.extend(kept)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def opset(model: Any) -> int:
    """The model's version of the default (``ai.onnx``) operator set."""
    return next((entry.version for entry in model.opset_import if entry.domain in DEFAULT_DOMAINS), 0)


def attribute(node: Any, name: str) -> Any:
    """``node``'s attribute called ``name``, or ``None``."""
    return next((a for a in node.attribute if a.name == name), None)


def input_counts(graph: Any) -> dict[str, int]:
    """How many node inputs read each tensor name, in ``graph`` and the subgraphs of its nodes (If, Loop and Scan
    bodies read tensors of the graph around them by name)."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
        for attr in node.attribute:
            for subgraph in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                for name, count in input_counts(subgraph).items():
                    counts[name] = counts.get(name, 0) + count
    return counts


def unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


@functools.cache
def message_classes() -> dict[str, type]:
    """Protobuf message classes for ONNX's ``ModelProto`` (``Model``) and the messages in it that the rewrites read
    or write, each knowing only those fields (numbers and types as in onnx.proto); protobuf keeps every other field
    as unknown bytes and writes them back unchanged."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    text, integer, small, message = field.TYPE_STRING, field.TYPE_INT64, field.TYPE_INT32, field.TYPE_MESSAGE
    messages = {  # message -> (field name, number, label, type, message type)
        "OperatorSetId": [("domain", 1, one, text, ""), ("version", 2, one, integer, "")],
        "ValueInfo": [("name", 1, one, text, "")],
        "Tensor": [("data_location", 14, one, small, "")],
        "Attribute": [
            ("name", 1, one, text, ""),
            ("i", 3, one, integer, ""),
            ("g", 6, one, message, "Graph"),
            ("ints", 8, many, integer, ""),
            ("graphs", 11, many, message, "Graph"),
            ("type", 20, one, small, ""),
        ],
        "Node": [
            ("input", 1, many, text, ""),
            ("output", 2, many, text, ""),
            ("name", 3, one, text, ""),
            ("op_type", 4, one, text, ""),
            ("attribute", 5, many, message, "Attribute"),
            ("domain", 7, one, text, ""),
        ],
        "Graph": [
            ("node", 1, many, message, "Node"),
            ("initializer", 5, many, message, "Tensor"),
            ("output", 12, many, message, "ValueInfo"),
            ("value_info", 13, many, message, "ValueInfo"),
        ],
        "Model": [("graph", 7, one, message, "Graph"), ("opset_import", 8, many, message, "OperatorSetId")],
    }
    package = "avala_infer_onnx_subset"
    schema = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
    for name, fields in messages.items():
        described = schema.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            added = described.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                added.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages}
