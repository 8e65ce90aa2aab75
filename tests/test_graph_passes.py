"""The graph-hygiene passes: node names, constant folding and output cleanup, with their
fallbacks when onnx-graphsurgeon fails."""

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import rel_diff, with_output_shapes
from wnc_onnx.errors import WncError
from wnc_onnx.rewrite.passes import cleanup, fold_constants, gs_tools
from wnc_onnx.zoo import planted_kernel

FULL = {"require_savings": False}


def two_convs(names=("", ""), weight_from=None, dead=False) -> onnx.ModelProto:
    """x -> Conv(W1) -> Relu -> Conv(W2) -> y with planted low-rank weights.

    ``weight_from="cast"`` feeds W2 through Cast(float16 initializer), ``"transpose"``
    through Transpose of a stored (S, T, 3, 3) tensor, ``"reshape"`` through Reshape of a
    stored (T, S*9) matrix, ``"mul"`` through Mul of a half-sized tensor by 2 (only that one
    needs constant folding); ``dead`` adds an unused branch."""
    rng = np.random.default_rng(0)
    w1 = planted_kernel(rng, 24, 16, (3, 3), 4, 4)
    w2 = planted_kernel(rng, 24, 24, (3, 3), 4, 4)
    inits = [numpy_helper.from_array(w1, "W1")]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h"], name=names[0], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
    ]
    if weight_from == "cast":
        inits.append(numpy_helper.from_array(w2.astype(np.float16), "W2_half"))
        nodes.insert(0, helper.make_node("Cast", ["W2_half"], ["W2"], name="cast_w2", to=TensorProto.FLOAT))
    elif weight_from == "transpose":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w2.transpose(1, 0, 2, 3)), "W2_t"))
        nodes.insert(0, helper.make_node("Transpose", ["W2_t"], ["W2"], name="tr_w2", perm=[1, 0, 2, 3]))
    elif weight_from == "reshape":
        inits.append(numpy_helper.from_array(w2.reshape(24, -1), "W2_flat"))
        inits.append(numpy_helper.from_array(np.array([0, 24, 3, 3], np.int64), "W2_shape"))
        nodes.insert(0, helper.make_node("Reshape", ["W2_flat", "W2_shape"], ["W2"], name="rs_w2"))
    elif weight_from == "mul":
        inits.append(numpy_helper.from_array(w2 / 2, "W2_half_value"))
        inits.append(numpy_helper.from_array(np.float32(2.0), "two"))
        nodes.insert(0, helper.make_node("Mul", ["W2_half_value", "two"], ["W2"], name="mul_w2"))
    else:
        inits.append(numpy_helper.from_array(w2, "W2"))
    nodes.append(helper.make_node("Conv", ["r", "W2"], ["y"], name=names[1], kernel_shape=[3, 3], pads=[1] * 4))
    if dead:
        inits.append(numpy_helper.from_array(np.ones((24, 1, 1), np.float32), "unused_scale"))
        nodes.append(helper.make_node("Mul", ["r", "unused_scale"], ["nobody_reads"], name="dead_mul"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def node_names(model):
    return [n.name for n in model.graph.node]


# -- names ----------------------------------------------------------------------------------


def test_unnamed_nodes_get_readable_names_used_everywhere():
    model = two_convs(names=("", ""))
    report = wnc_onnx.inspect(model)
    assert [r.name for r in report.layers] == ["Conv_0", "Conv_2"]  # <op>_<index in the graph>
    out, report = wnc_onnx.compress(model, ranks={"Conv_2": (8, 8)}, **FULL)
    names = node_names(out)
    assert len(set(names)) == len(names) and all(names)
    assert "relu" in names and any(n.startswith("Conv_2/wnc/") for n in names)
    assert report.layer("Conv_2").status == "decomposed"
    assert all(n.name for n in model.graph.node if n.op_type == "Relu")  # input untouched
    assert not any(n.name for n in model.graph.node if n.op_type == "Conv")


def test_repeated_names_are_made_unique():
    model = two_convs(names=("conv", "conv"))
    out, report = wnc_onnx.compress(model, **FULL)
    assert [r.name for r in report.layers] == ["conv", "conv_2"]
    names = node_names(out)
    assert len(set(names)) == len(names)
    assert any("repeated node name" in w for w in report.warnings)
    # onnxruntime refuses the input ("two nodes with same node name"); the output runs
    runnable = two_convs(names=("conv", "conv_b"))
    assert rel_diff(runnable, out) < 0.2


# -- constant folding -----------------------------------------------------------------------


def test_weights_computed_from_constants_are_folded_then_compressed():
    model = two_convs(names=("c1", "c2"), weight_from="mul")
    assert fold_constants.foldable_nodes(model) == ["mul_w2"]
    out, report = wnc_onnx.compress(model, ranks={"c1": (16, 24), "c2": (24, 24)}, **FULL)  # full rank
    entry = next(p for p in report.passes if p["name"] == "fold_constants")
    assert entry["status"] == "folded" and entry["tool"].startswith("onnx-graphsurgeon")
    assert report.layer("c2").status == "decomposed"
    assert "Mul" not in {n.op_type for n in out.graph.node}
    assert rel_diff(model, out) < 1e-4


@pytest.mark.parametrize("how", ["transpose", "reshape"])
def test_transposed_and_reshaped_weights_are_read_without_folding(how):
    model = two_convs(names=("c1", "c2"), weight_from=how)
    assert fold_constants.foldable_nodes(model) == []
    for skip in ((), ("fold_constants",)):
        out, report = wnc_onnx.compress(model, ranks={"c1": (16, 24), "c2": (24, 24)}, skip_passes=skip, **FULL)
        assert report.layer("c2").status == "decomposed"
        assert not {"Transpose", "Reshape"} & {n.op_type for n in out.graph.node}  # the chain is gone with W2
        assert rel_diff(model, out) < 1e-4


@pytest.mark.parametrize("skip", [(), ("fold_constants",)])
def test_fp16_weights_behind_a_cast_are_read_directly_and_stay_fp16(skip):
    """A Cast of an fp16 initializer is a constant the rules read (no folding, so
    --skip-pass fold_constants compresses it too); the factors are stored in fp16 as well."""
    model = two_convs(names=("c1", "c2"), weight_from="cast")
    assert fold_constants.foldable_nodes(model) == []
    out, report = wnc_onnx.compress(model, ranks={"c1": (16, 24), "c2": (24, 24)}, skip_passes=skip, **FULL)
    assert report.layer("c2").status == "decomposed"
    c2_weights = [t for t in out.graph.initializer if t.name.startswith("c2/wnc/")]
    assert c2_weights and all(t.data_type == TensorProto.FLOAT16 for t in c2_weights)
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert len(casts) == len(c2_weights) and all(n.name.startswith("c2/wnc/") for n in casts)
    assert rel_diff(model, out) < 1e-2


def test_folding_failure_falls_back_and_says_so(monkeypatch):
    def broken(model, work):
        raise RuntimeError("simulated graphsurgeon crash")

    monkeypatch.setattr(gs_tools, "roundtrip", broken)
    model = two_convs(names=("c1", "c2"), weight_from="mul")
    out, report = wnc_onnx.compress(model, **FULL)
    entry = next(p for p in report.passes if p["name"] == "fold_constants")
    assert entry["status"].startswith("failed: simulated graphsurgeon crash")
    assert any("fold_constants: folding 1 weight-computing node(s) failed (simulated" in w for w in report.warnings)
    assert report.layer("c2").status == "skipped" and "not a constant" in report.layer("c2").reason
    assert report.layer("c1").status == "decomposed"
    assert rel_diff(model, out) < 0.2


def test_quantization_nodes_are_never_folded():
    w = np.random.default_rng(0).integers(-100, 100, (12, 8, 3, 3)).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["Wq", "s"], ["W"], name="dq"),
            helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[3, 3]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "Wq"), numpy_helper.from_array(np.float32(0.01), "s")],
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert fold_constants.foldable_nodes(model) == []
    report = wnc_onnx.inspect(model)
    assert "DequantizeLinear" in report.layer("conv").reason


# -- cleanup --------------------------------------------------------------------------------


def test_cleanup_removes_dead_code_and_adds_shapes():
    model = two_convs(names=("c1", "c2"), dead=True)
    out, report = wnc_onnx.compress(model, ranks={"c2": (8, 8)}, **FULL)
    entry = next(p for p in report.passes if p["name"] == "cleanup")
    assert entry["tool"].startswith("onnx-graphsurgeon")
    assert "dead_mul" not in node_names(out)
    assert "unused_scale" not in {t.name for t in out.graph.initializer}
    assert entry["removed_nodes"] >= 1 and entry["removed_initializers"] >= 1
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in out.graph.value_info}
    assert shapes["r"] == [1, 24, 10, 10]
    assert any(name.startswith("c2/wnc/") for name in shapes)  # the new tensors have shapes too
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 0.2
    # node provenance survives the graphsurgeon-decided order
    core = next(n for n in out.graph.node if n.name.startswith("c2/wnc/core"))
    assert "tucker2" in core.doc_string


def test_cleanup_failure_leaves_the_graph_valid_with_a_note(monkeypatch):
    """No second pruner: when graphsurgeon fails the input's own dead code stays, with a note,
    and what the rewrite replaced is gone anyway (the low-rank pass removes it itself)."""

    def broken(model):
        raise ValueError("simulated graphsurgeon failure")

    monkeypatch.setattr(cleanup, "_apply_gs_decision", broken)
    model = two_convs(names=("c1", "c2"), dead=True)
    out, report = wnc_onnx.compress(model, ranks={"c2": (8, 8)}, **FULL)
    entry = next(p for p in report.passes if p["name"] == "cleanup")
    assert entry["tool"] == "none" and entry["removed_nodes"] == 0
    assert any("onnx-graphsurgeon failed (simulated" in w and "not removed" in w for w in report.warnings)
    assert "dead_mul" in node_names(out)  # the input's dead code, left as it was
    assert not any(t.name == "W2" for t in out.graph.initializer)  # the replaced weight went with its layer
    onnx.checker.check_model(out, full_check=True)
    assert rel_diff(model, out) < 0.2


def test_warnings_are_printed_under_the_table(monkeypatch):
    monkeypatch.setattr(cleanup, "_apply_gs_decision", lambda m: (_ for _ in ()).throw(ValueError("boom")))
    _, report = wnc_onnx.compress(two_convs(names=("c1", "c2")), **FULL)
    assert "note: cleanup: onnx-graphsurgeon failed (boom)" in report.to_table()


def test_without_onnxruntime_folding_is_skipped_and_verify_names_the_extra(monkeypatch):
    import importlib.util

    from wnc_onnx.check.verify import verify

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    model = two_convs(names=("c1", "c2"), weight_from="mul")
    out, report = wnc_onnx.compress(model, **FULL)
    entry = next(p for p in report.passes if p["name"] == "fold_constants")
    assert entry["status"] == "skipped: onnxruntime is not installed"
    assert any("pip install 'wnc-onnx[runtime]'" in w for w in report.warnings)
    assert report.layer("c1").status == "decomposed"
    with pytest.raises(WncError, match=r"checking outputs needs onnxruntime.*wnc-onnx\[runtime\]"):
        verify(model, out)
