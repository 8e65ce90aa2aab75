"""fp16 / bf16 weights are factored in float32 and stored back in their dtype; opsets 7..newest."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import conv_model, rel_diff, run

FULL = {"require_savings": False, "min_rank": 0}


def as_float32(model):
    """Same graph with every float16 tensor (weights, I/O, value_info) turned into float32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return m


def test_fp16_conv_is_stored_in_fp16_and_matches():
    model = conv_model(8, 12, (3, 3), (7, 7), pads=[1, 1, 1, 1])
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    out, report = wnc_onnx.compress(model, ranks={"conv": (8, 12)}, **FULL)
    assert report.layer("conv").status == "decomposed"
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    onnx.checker.check_model(out, full_check=True)
    # ORT's CPU provider has no fp16 Conv: compare the same graphs in float32
    assert rel_diff(as_float32(model), as_float32(out)) < 2e-3  # fp16 rounding of the factors


def test_fp16_matmul_runs_in_ort():
    w = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 12])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, _ = wnc_onnx.compress(model, ranks={"mm": 8}, **FULL)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float16)}
    a, b = run(model, feeds)[0].astype(np.float32), run(out, feeds)[0].astype(np.float32)
    assert b.dtype == np.float32 and np.linalg.norm(a - b) / np.linalg.norm(a) < 5e-3


def test_bf16_matmul_weights_round_trip():
    w = np.random.default_rng(2).standard_normal((8, 12)).astype(np.float32)
    wt = helper.make_tensor("W", TensorProto.BFLOAT16, w.shape, w.flatten().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 12])],
        [wt],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = wnc_onnx.compress(model, ranks={"mm": 8}, **FULL)
    onnx.checker.check_model(out, full_check=True)
    inits = {t.name: t for t in out.graph.initializer}
    assert {t.data_type for t in inits.values()} == {TensorProto.BFLOAT16}
    a, b = (numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in out.graph.node)
    w_bf16 = numpy_helper.to_array(wt).astype(np.float32)
    assert np.linalg.norm(a @ b - w_bf16) / np.linalg.norm(w_bf16) < 2e-2  # bf16 has 8 mantissa bits


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, onnx.defs.onnx_opset_version()])
def test_opsets(opset):
    model = conv_model(8, 12, (3, 3), (7, 7), opset=opset, pads=[1, 1, 1, 1])
    model.ir_version = min(model.ir_version, 10) if opset < 21 else model.ir_version
    out, report = wnc_onnx.compress(model, ranks={"conv": (8, 12)}, **FULL)
    assert out.opset_import[0].version == opset
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 1e-4


def test_dynamic_dims_are_kept():
    model = conv_model(8, 12, (3, 3), (7, 7), pads=[1, 1, 1, 1])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    out_dims[0].dim_param, out_dims[2].dim_param, out_dims[3].dim_param = "N", "H", "W"
    out, report = wnc_onnx.compress(model, ranks={"conv": (8, 12)}, **FULL)
    out_dims = [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim]
    assert out_dims == ["N", 8, "H", "W"]
    assert report.layer("conv").macs_before is None  # dynamic spatial size: MACs unknown, not guessed
