"""analyze.heads: what each graph output stands for, read from the ops that make it."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from wnc_onnx.analyze.heads import heads


def _model(nodes, outputs, opset=17, extra_inputs=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]), *extra_inputs],
        outputs,
        [
            onnx.numpy_helper.from_array(np.ones((16, 12), "float32"), "w"),
            onnx.numpy_helper.from_array(np.ones((16, 3), "float32"), "w3"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def out(name, elem=TensorProto.FLOAT, dims=("N", 12)):
    return helper.make_tensor_value_info(name, elem, list(dims))


@pytest.mark.parametrize(
    "tail, output, tensor, kind, axis",
    [
        ([], "z", "z", "classes", 1),  # a MatMul's 12 scores: raw logits
        ([helper.make_node("Softmax", ["z"], ["p"], axis=1)], "p", "z", "classes", 1),
        ([helper.make_node("LogSoftmax", ["z"], ["p"], axis=-1)], "p", "z", "classes", 1),
        (
            [helper.make_node("Softmax", ["z"], ["s"], axis=1), helper.make_node("Identity", ["s"], ["p"])],
            "p",
            "z",
            "classes",
            1,
        ),  # fmt: skip
        ([helper.make_node("ArgMax", ["z"], ["k"], axis=1, keepdims=0)], "k", "z", "classes", 1),
        (
            [helper.make_node("Softmax", ["z"], ["s"], axis=1), helper.make_node("ArgMax", ["s"], ["k"], axis=1)],
            "k",
            "z",
            "classes",
            1,
        ),  # fmt: skip
        ([helper.make_node("Cast", ["z"], ["k"], to=TensorProto.INT64)], "k", "z", "classes", 1),
        (
            [
                helper.make_node("Exp", ["z"], ["e"]),
                helper.make_node("ReduceSum", ["e"], ["t"], keepdims=1),
                helper.make_node("Div", ["e", "t"], ["p"]),
            ],
            "p",
            "z",
            "classes",
            1,
        ),  # fmt: skip
    ],
)
def test_class_scores_are_read_at_their_logits(tail, output, tensor, kind, axis):
    elem = TensorProto.INT64 if output == "k" else TensorProto.FLOAT
    dims = ("N",) if output == "k" and tail[-1].op_type == "ArgMax" and len(tail) == 1 else ("N", 12)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["z"]), *tail], [out(output, elem, dims)])
    (h,) = heads(model)
    assert (h.output, h.tensor, h.kind, h.axis) == (output, tensor, kind, axis), h


def test_few_scores_and_plain_values_are_values():
    model = _model([helper.make_node("MatMul", ["x", "w3"], ["b"]), helper.make_node("Relu", ["b"], ["r"])],
                   [out("b", dims=("N", 3)), out("r", dims=("N", 3))])  # fmt: skip
    a, b = heads(model)
    assert (a.kind, a.tensor) == ("values", "b") and (b.kind, b.tensor) == ("values", "r")


def test_sequence_scores_keep_their_softmax_axis():
    """A CTC recognizer: (N, T, C) scores with a softmax over C; also (T, N, C) transposed first."""
    nodes = [
        helper.make_node("Unsqueeze", ["x", "ax"], ["x3"]),
        helper.make_node("MatMul", ["x3", "w"], ["z"]),  # (N, 1, 12)
        helper.make_node("Softmax", ["z"], ["p"], axis=2),
        helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0, 2]),
    ]
    model = _model(nodes, [out("pt", dims=(1, "N", 12))])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1]), "ax"))
    (h,) = heads(model)
    assert (h.tensor, h.kind, h.axis, h.rank) == ("z", "classes", 2, 3)


def test_old_opset_softmax_axis_defaults_to_1():
    model = _model([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"])],
                   [out("p")], opset=11)  # fmt: skip
    assert heads(model)[0].axis == 1
