"""Every rewrite checked in ORT: exact at full rank, error that follows the kernel error below it."""

import numpy as np
import onnx
import pytest
from onnx import helper

import wnc_onnx
from tests.helpers import conv_model, rel_diff, single_node_model

FULL = {"require_savings": False, "min_rank": 0}


def full_ranks(model, name, r3, r4):
    return wnc_onnx.compress(model, ranks={name: (r3, r4) if r3 else r4}, **FULL)


CONV_CASES = [
    # (cin, cout, kernel, spatial, groups, bias, attrs)
    (8, 12, (3, 3), (9, 9), 1, True, {}),
    (8, 12, (3, 3), (9, 9), 1, False, {}),
    (8, 12, (3, 3), (10, 11), 1, True, {"strides": [2, 3]}),
    (8, 12, (3, 3), (9, 9), 1, True, {"pads": [0, 1, 2, 1]}),
    (8, 12, (3, 3), (12, 12), 1, True, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    (8, 12, (3, 3), (9, 9), 1, True, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    (8, 12, (3, 3), (9, 9), 1, True, {"auto_pad": "SAME_LOWER"}),
    (8, 12, (3, 3), (9, 9), 1, True, {"auto_pad": "VALID"}),
    (8, 12, (2, 4), (9, 9), 2, True, {}),
    (12, 16, (3, 3), (7, 7), 4, True, {"pads": [1, 1, 1, 1]}),
    (6, 10, (5,), (20,), 1, True, {"pads": [2, 1], "strides": [2]}),
    (6, 10, (3, 3, 3), (6, 7, 5), 1, True, {"pads": [1, 0, 1, 1, 1, 0]}),
    (6, 10, (3, 3, 3), (6, 6, 6), 2, False, {"strides": [1, 2, 1]}),
]


@pytest.mark.parametrize("cin,cout,kernel,spatial,groups,bias,attrs", CONV_CASES)
def test_conv_full_rank_tucker2_and_tucker1_are_exact(cin, cout, kernel, spatial, groups, bias, attrs):
    model = conv_model(cin, cout, kernel, spatial, groups=groups, bias=bias, **attrs)
    s, t = cin // groups, cout // groups
    for r3 in (s, None):
        out, report = full_ranks(model, "conv", r3, t)
        onnx.checker.check_model(out, full_check=True)
        layer = report.layer("conv")
        assert layer.status == "decomposed"
        assert layer.method == ("tucker2" if r3 else "tucker1")
        assert len(out.graph.node) == (3 if r3 else 2)
        assert all(n.op_type == "Conv" and n.name.startswith("conv/wnc/") for n in out.graph.node)
        assert rel_diff(model, out) < 1e-4


def test_pointwise_conv_and_depthwise_skip():
    model = conv_model(16, 24, (1, 1), (5, 5), strides=[2, 2], pads=[1, 0, 0, 1])
    out, report = full_ranks(model, "conv", None, 16)
    assert report.layer("conv").method == "svd"
    assert rel_diff(model, out) < 1e-4
    dw = conv_model(8, 8, (3, 3), (6, 6), groups=8)
    dw_out, rep = wnc_onnx.compress(dw, **FULL)
    assert rep.layer("conv").status == "skipped" and "depthwise" in rep.layer("conv").reason
    assert rep.totals.decomposed == 0 and [n.op_type for n in dw_out.graph.node] == ["Conv"]


@pytest.mark.parametrize("r", [2, 4, 6])
def test_reduced_rank_output_error_follows_kernel_error(r):
    rng = np.random.default_rng(r)
    model = conv_model(16, 24, (3, 3), (12, 12), seed=r, pads=[1, 1, 1, 1])
    out, report = full_ranks(model, "conv", r + 2, r + 4)
    kernel_err = report.layer("conv").rel_error
    out_err = rel_diff(model, out, seed=int(rng.integers(100)))
    assert 0.05 < kernel_err < 1.0
    # random inputs: the output error is of the order of the kernel error
    assert 0.3 * kernel_err < out_err < 2.0 * kernel_err


def gemm(trans_a=0, trans_b=0, alpha=1.0, beta=1.0, bias="vector", opset=17, m=3, k=20, n=14):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    inits = {"B": b}
    inputs = ["A", "B"]
    if bias == "vector":
        inits["C"] = rng.standard_normal(n)
        inputs.append("C")
    elif bias == "matrix":
        inits["C"] = rng.standard_normal((m, n))
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["Y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return single_node_model(node, {"A": (k, m) if trans_a else (m, k)}, inits, opset=opset)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", ["vector", "matrix", None])
def test_gemm_svd_full_rank(trans_a, trans_b, bias):
    model = gemm(trans_a, trans_b, alpha=0.7, beta=1.3, bias=bias)
    out, report = full_ranks(model, "fc", None, 14)
    assert [n.op_type for n in out.graph.node] == ["Gemm", "Gemm"]
    assert report.layer("fc").method == "svd"
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 1e-4


def test_gemm_old_opset_without_bias():
    model = gemm(bias=None, opset=9)
    # opset 9 requires C: the source model gets a zero C
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.float32), "Z"))
    model.graph.node[0].input.append("Z")
    out, _ = full_ranks(model, "fc", None, 14)
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_matmul_either_side(side, batch):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 18))
    if side == "right":
        node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")
        x_shape = (*batch, 5, 10)
    else:
        node = helper.make_node("MatMul", ["W", "X"], ["Y"], name="mm")
        x_shape = (*batch, 18, 4)
    model = single_node_model(node, {"X": x_shape}, {"W": w})
    out, report = full_ranks(model, "mm", None, 10)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul"]
    assert rel_diff(model, out) < 1e-4
    _, low = full_ranks(model, "mm", None, 3)
    assert low.layer("mm").params_after == 3 * (10 + 18)


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_flatten_gemm_becomes_tucker2_conv(flatten, trans_b):
    rng = np.random.default_rng(2)
    c, h, w, n = 6, 3, 4, 9
    wt = rng.standard_normal((n, c * h * w))
    inits = {"B": wt if trans_b else wt.T, "bias": rng.standard_normal(n)}
    nodes = []
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1))
    else:
        inits["shape"] = np.array([0, -1])
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["f", "B", "bias"], ["y"], name="fc6", transB=trans_b, alpha=0.5))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", n])],
        [onnx.numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = full_ranks(model, "fc6", c, n)
    layer = report.layer("fc6")
    assert layer.method == "tucker2" and layer.kernel == [h, w]
    ops = [nd.op_type for nd in out.graph.node]
    assert ops == ["Conv", "Conv", "Flatten", "Gemm"]  # the old Flatten/Reshape is gone
    assert "shape" not in {t.name for t in out.graph.initializer}
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 1e-4
    svd_out, svd_rep = wnc_onnx.compress(model, ranks={"fc6": n}, fc_tucker=False, **FULL)
    assert svd_rep.layer("fc6").method == "svd"
    assert rel_diff(model, svd_out) < 1e-4


def test_input_model_is_not_modified_and_metadata_kept():
    model = conv_model(8, 12, (3, 3), (9, 9))
    model.doc_string = "mine"
    onnx.helper.set_model_props(model, {"author": "me"})
    before = model.SerializeToString()
    out, _ = full_ranks(model, "conv", 4, 4)
    assert model.SerializeToString() == before
    assert out.ir_version == model.ir_version and out.opset_import == model.opset_import
    props = {p.key: p.value for p in out.metadata_props}
    assert props["author"] == "me" and "wnc_onnx" in props
    assert out.doc_string == "mine"
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["y"]
    node = out.graph.node[1]
    meta = {p.key: p.value for p in node.metadata_props}
    assert meta["wnc.source"] == "conv" and meta["wnc.method"] == "tucker2" and "R3=4" in meta["wnc.ranks"]
    assert "conv" in node.doc_string
    assert {t.name for t in out.graph.initializer} >= {"B"} and "W" not in {t.name for t in out.graph.initializer}


def test_weight_in_constant_node_and_unnamed_node():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=onnx.numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 12, 6, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = wnc_onnx.compress(model, ranks={"Conv_1": (8, 12)}, **FULL)
    assert report.layer("Conv_1").status == "decomposed"
    assert [n.op_type for n in out.graph.node] == ["Conv", "Conv", "Conv"]  # the Constant is gone
    assert out.graph.node[0].name == "Conv_1/wnc/in_1x1"
    assert rel_diff(model, out) < 1e-4


def test_shared_weight_and_graph_input_weight_are_skipped():
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((6, 2)) @ rng.standard_normal((2, 6))).astype(np.float32)  # EVBMF rank 2
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="a"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="b"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6])],
        [onnx.numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, report = wnc_onnx.compress(model, **FULL)
    assert all("shared by 2 nodes" in r.reason for r in report.layers)
    model.graph.input.append(helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [6, 6]))
    del model.graph.node[1]
    model.graph.output[0].name = "h"
    # kept as an input (--keep-initializer-inputs): it may be overridden at run time, so it is skipped
    _, report = wnc_onnx.compress(model, skip_passes=("initializer_inputs",), **FULL)
    assert "graph input" in report.layer("a").reason
    # by default the input goes (old export style) and the weight is compressed as a constant
    out, report = wnc_onnx.compress(model, **FULL)
    assert report.layer("a").status == "decomposed" and [i.name for i in out.graph.input] == ["x"]
    assert any("also listed as graph inputs" in w for w in report.warnings)


def test_report_totals_add_up():
    model = conv_model(16, 24, (3, 3), (10, 10), pads=[1, 1, 1, 1])
    _, report = wnc_onnx.compress(model, ranks={"conv": (6, 8)})
    layer, totals = report.layer("conv"), report.totals
    assert layer.macs_before == 16 * 24 * 9 * 100
    assert layer.macs_split == [16 * 6 * 100, 9 * 6 * 8 * 100, 8 * 24 * 100]
    assert layer.params_split == [16 * 6, 9 * 6 * 8, 8 * 24]
    assert totals.macs_before == layer.macs_before and totals.macs_after == sum(layer.macs_split)
    # model weights include the bias, carried over unchanged
    assert totals.params_before - totals.params_after == layer.params_before - layer.params_after


def test_ir3_model_with_initializers_listed_as_inputs():
    model = conv_model(8, 12, (3, 3), (9, 9), opset=8)
    model.ir_version = 3
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    out, report = full_ranks(model, "conv", 8, 12)
    assert report.layer("conv").status == "decomposed"
    inputs = {i.name for i in out.graph.input}
    assert {t.name for t in out.graph.initializer} <= inputs and "W" not in inputs
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 1e-4


def test_stale_value_info_is_dropped():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 4 * 3 * 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
            helper.make_node("Gemm", ["f", "W"], ["y"], name="fc", transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])],
        [onnx.numpy_helper.from_array(w, "W")],
        value_info=[helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, [2, 36])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, _ = wnc_onnx.compress(model, ranks={"fc": (4, 5)}, **FULL)
    assert "f" not in {vi.name for vi in out.graph.value_info}
    assert "Flatten" in [n.op_type for n in out.graph.node]  # the emitted one
    assert rel_diff(model, out) < 1e-4


def test_identity_wrapped_weight_is_used_and_removed():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["W0"], ["W1"], name="id1"),
        helper.make_node("Identity", ["W1"], ["W"], name="id2"),
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 10])],
        [onnx.numpy_helper.from_array(w, "W0")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = wnc_onnx.compress(model, ranks={"mm": 6}, **FULL)
    assert report.layer("mm").status == "decomposed"
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul"]
    assert "W0" not in {t.name for t in out.graph.initializer}
    assert rel_diff(model, out) < 1e-4


def test_quantized_layers_are_listed_with_a_reason():
    rng = np.random.default_rng(10)
    w = rng.integers(-8, 8, (4, 4)).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "s"], ["W"], name="dq"),
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("MatMulInteger", ["xq", "Wq"], ["y"], name="mmi"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("xq", onnx.TensorProto.INT8, [2, 4]),
        ],
        [
            helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [2, 4]),
        ],
        [onnx.numpy_helper.from_array(w, "Wq"), onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, report = wnc_onnx.compress(model, **FULL)
    assert "DequantizeLinear" in report.layer("mm").reason
    assert report.layer("mmi").status == "skipped" and "quantized layer (MatMulInteger)" in report.layer("mmi").reason
