"""Layers inside If / Loop bodies are compressed; outer-scope names keep working."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import run

FULL = {"require_savings": False, "min_rank": 0}


def branch(name, w, out):
    const = helper.make_node("Constant", [], [f"{name}_W"], value=numpy_helper.from_array(w, f"{name}_w"))
    conv = helper.make_node(
        "Conv", ["x", f"{name}_W"], [out], name=f"{name}_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    )
    return helper.make_graph(
        [const, conv], name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * 4)]
    )


def if_model():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    # a top-level weight used only implicitly inside the else branch (must survive)
    shared = numpy_helper.from_array(rng.standard_normal((1, 12, 1, 1)).astype(np.float32), "scale")
    else_g = branch("else", w2, "e_conv")
    else_g.node.append(helper.make_node("Mul", ["e_conv", "scale"], ["e_out"], name="else_mul"))
    del else_g.output[:]
    else_g.output.append(helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [None] * 4))
    node = helper.make_node(
        "If", ["cond"], ["y"], name="gate", then_branch=branch("then", w1, "t_out"), else_branch=else_g
    )
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [shared],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_if_branches_are_compressed_and_exact_at_full_rank():
    model = if_model()
    ranks = {"gate/then_branch/then_conv": (8, 12), "gate/else_branch/else_conv": (8, 12)}
    out, report = wnc_onnx.compress(model, ranks=ranks, **FULL)
    onnx.checker.check_model(out, full_check=True)
    assert {r.name for r in report.decomposed} == set(ranks)
    then_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert then_ops.count("Conv") == 3 and "Constant" not in then_ops
    assert "scale" in {t.name for t in out.graph.initializer}
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        a, b = run(model, feeds)[0], run(out, feeds)[0]
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-4


def test_unknown_subgraph_layer_name_is_reported():
    try:
        wnc_onnx.compress(if_model(), ranks={"then_conv": 4}, **FULL)
    except wnc_onnx.WncError as exc:
        assert "gate/then_branch/then_conv" in str(exc)  # the valid, qualified names are listed
    else:
        raise AssertionError("an unqualified subgraph layer name must be rejected")


def test_loop_body_matmul_reads_outer_scope():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((10, 10)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["Wb"], value=numpy_helper.from_array(w, "wb")),
            helper.make_node("MatMul", ["h_in", "Wb"], ["h_mm"], name="step"),
            helper.make_node("Add", ["h_mm", "bias_outer"], ["h_out"], name="add"),
            helper.make_node("Identity", ["c_in"], ["c_out"], name="keep"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [2, 10]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [2, 10]),
        ],
    )
    loop = helper.make_node("Loop", ["trip", "", "h0"], ["h"], name="loop", body=body)
    graph = helper.make_graph(
        [loop],
        "g",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2, 10])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 10])],
        [
            numpy_helper.from_array(np.array(3, np.int64), "trip"),
            numpy_helper.from_array((0.1 * rng.standard_normal(10)).astype(np.float32), "bias_outer"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = wnc_onnx.compress(model, ranks={"loop/body/step": 10}, **FULL)
    assert report.layer("loop/body/step").status == "decomposed"
    onnx.checker.check_model(out, full_check=True)
    feeds = {"h0": rng.standard_normal((2, 10)).astype(np.float32)}
    a, b = run(model, feeds)[0], run(out, feeds)[0]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-4
