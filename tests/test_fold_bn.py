"""BatchNormalization and per-channel Mul/Add fold exactly into the Conv/Gemm before them."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import rel_diff
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes import FoldBatchNormPass


def bn_params(rng, c, prefix):
    return [
        numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_g"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_b"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_m"),
        numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_v"),
    ]


def conv_bn_model(bias=True, extra=(), second_use=False):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((12, 8, 3, 3)).astype(np.float32), "W")]
    conv_in = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "B"))
        conv_in.append("B")
    inits += bn_params(rng, 12, "bn")
    nodes = [
        helper.make_node("Conv", conv_in, ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_g", "bn_b", "bn_m", "bn_v"], ["h0"], name="bn", epsilon=1e-3),
    ]
    last = "h0"
    for i, (op, shape) in enumerate(extra):
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(np.float32), f"k{i}"))
        nodes.append(helper.make_node(op, [last, f"k{i}"], [f"h{i + 1}"], name=f"{op.lower()}{i}"))
        last = f"h{i + 1}"
    outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, 12, 6, 6])]
    if second_use:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 12, 6, 6]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def fold(model):
    report = Report()
    return FoldBatchNormPass()(model, report).model, report.passes[0]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("extra", [(), (("Mul", (12, 1, 1)), ("Add", (1, 12, 1, 1))), (("Mul", ()),)])
def test_conv_bn_mul_add_fold_exactly(bias, extra):
    model = conv_bn_model(bias, extra)
    out, info = fold(model)
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    assert len(info["folded"]) == 1 + len(extra)
    assert {t.name for t in out.graph.initializer}.isdisjoint({"W", "bn_g", "bn_v", "k0"})
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 1e-5


def test_not_folded_when_conv_output_is_used_elsewhere():
    model = conv_bn_model(second_use=True)
    out, info = fold(model)
    assert [n.op_type for n in out.graph.node] == ["Conv", "BatchNormalization"]
    assert "other uses" in info["not_folded"][0]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_fold(trans_b):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((7, 5) if trans_b else (5, 7)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(rng.standard_normal(7).astype(np.float32), "C")]
    inits += bn_params(rng, 7, "bn")
    nodes = [
        helper.make_node("Gemm", ["x", "W", "C"], ["g"], name="fc", transB=trans_b, alpha=0.5, beta=2.0),
        helper.make_node("BatchNormalization", ["g", "bn_g", "bn_b", "bn_m", "bn_v"], ["y"], name="bn"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 7])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, info = fold(model)
    assert [n.op_type for n in out.graph.node] == ["Gemm"] and info["folded"] == ["bn"]
    assert rel_diff(model, out) < 1e-5


def test_compress_folds_first_and_can_skip_it():
    model = conv_bn_model()
    out, report = wnc_onnx.compress(model, ranks={"conv": (8, 12)}, require_savings=False)
    names = [p["name"] for p in report.passes]
    assert names.index("fold_batchnorm") < names.index("lowrank")
    assert report.passes[names.index("fold_batchnorm")]["folded"] == ["bn"]
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]
    assert rel_diff(model, out) < 1e-4
    _, kept = wnc_onnx.compress(model, ranks={"conv": (8, 12)}, require_savings=False, skip_passes=("fold_batchnorm",))
    assert "fold_batchnorm" not in [p["name"] for p in kept.passes]
    assert "BatchNormalization" in [n.op_type for n in _.graph.node]
