"""--simplify: onnx-simplifier before the passes (the [simplify] extra, installed with [dev])."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import rel_diff
from wnc_onnx.cli import main
from wnc_onnx.rewrite.passes import simplify


def shape_made_weight(n: int = 64, rank: int = 8) -> onnx.ModelProto:
    """x (1, n) @ W, where W = Reshape(W_flat, [dim 1 of Shape(x), n]): a weight whose shape comes
    from the input's shape. wnc-onnx's own folding reads only constants; onnxsim knows x's size."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n))).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["sx"], name="shape"),
        helper.make_node("Gather", ["sx", "one"], ["rows"], name="rows", axis=0),
        helper.make_node("Concat", ["rows", "cols"], ["wshape"], name="wshape", axis=0),
        helper.make_node("Reshape", ["w_flat", "wshape"], ["w"], name="reshape_w"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(w.reshape(-1), "w_flat"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([n], dtype=np.int64), "cols"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_simplify_lets_a_shape_made_weight_compress():
    model = shape_made_weight()
    plain = wnc_onnx.inspect(model)
    assert plain.layer("fc").status == "skipped" and "constant" in plain.layer("fc").reason
    assert not any(p["name"] == "simplify" for p in plain.passes)  # off by default
    out, report = wnc_onnx.compress(model, simplify=True)
    entry = next(p for p in report.passes if p["name"] == "simplify")
    assert entry["modified"] and entry["tool"].startswith("onnxsim") and entry["nodes_after"] < entry["nodes_before"]
    assert report.layer("fc").status == "decomposed" and report.layer("fc").ranks == {"R": 8}
    assert rel_diff(model, out) < 1e-4  # the planted rank 8: exact
    assert [vi.name for vi in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["y"]
    assert out.ir_version == model.ir_version


def test_onnxsim_failing_is_a_note_and_the_run_goes_on(monkeypatch):
    import onnxsim

    monkeypatch.setattr(onnxsim, "simplify", lambda m: (_ for _ in ()).throw(RuntimeError("boom")))
    from wnc_onnx.zoo import demo_cnn

    _, report = wnc_onnx.compress(demo_cnn(), simplify=True)
    assert any(w == "--simplify: onnxsim failed (boom); the model was not simplified" for w in report.warnings)
    assert report.totals.decomposed > 0


def test_without_onnxsim_simplify_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    real = simplify.importlib.import_module

    def missing(name, *a):
        if name == "onnxsim":
            raise ImportError("No module named 'onnxsim'")
        return real(name, *a)

    monkeypatch.setattr(simplify.importlib, "import_module", missing)
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(shape_made_weight(), src)
    assert main([str(src), str(out), "--simplify", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--simplify needs onnx-simplifier" in err[0] and "wnc-onnx[simplify]" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--simplify"])
def test_cli_simplify_reaches_the_pass(tmp_path, flag, capsys):
    src, out, rep = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(shape_made_weight(), src)
    assert main([str(src), str(out), flag, "--report", str(rep), "-q"]) == 0
    import json

    d = json.loads(rep.read_text())
    assert d["config"]["simplify"] is True and d["passes"][0]["name"] == "simplify"
    assert d["totals"]["decomposed"] == 1
