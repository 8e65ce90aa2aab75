"""Product quantization: the numeric core, the graph pass, the command line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import random_feeds, run, single_node_model
from wnc_onnx import zoo
from wnc_onnx.analyze.numeric.pq import pack4, product_quantize, scalar_quantize, stored_bytes, subvectors, unpack4
from wnc_onnx.api import compress
from wnc_onnx.cli import main
from wnc_onnx.rewrite.passes.pq import MARK, dequantize_model


def _clustered(rows: int, cols: int, d: int, distinct: int, seed: int = 0) -> np.ndarray:
    """A matrix whose d-long row pieces take only ``distinct`` values: PQ with k >= distinct is exact."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((distinct, d)).astype(np.float32)
    return atoms[rng.integers(0, distinct, (rows, cols // d))].reshape(rows, cols)


# -- numeric core ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["layer", "subspace"])
def test_exact_when_k_covers_the_distinct_subvectors(layout):
    w = _clustered(64, 32, 4, 8)
    res = product_quantize(w, 4, 8, layout)
    assert res.rel_error < 1e-6
    np.testing.assert_allclose(res.reconstruct(), w, atol=1e-6)
    assert res.codes.dtype == np.uint8 and res.codes.shape == (64, 8)
    assert res.codebooks.shape == ((1, 8, 4) if layout == "layer" else (8, 8, 4))


def test_error_falls_with_k_and_subspace_fits_closer():
    w = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)
    errs = [product_quantize(w, 4, k).rel_error for k in (4, 16, 64)]
    assert errs[0] > errs[1] > errs[2] > 0
    assert product_quantize(w, 4, 16, "subspace").rel_error < errs[1]
    # d = 1 is scalar k-means: 16 levels per weight
    assert scalar_quantize(w, 16).rel_error < errs[1]


def test_padding_when_d_does_not_divide_the_row():
    w = np.random.default_rng(2).standard_normal((40, 10)).astype(np.float32)
    sub = subvectors(w, 4)
    assert sub.shape == (40, 3, 4) and np.all(sub[:, -1, 2:] == 0)
    res = product_quantize(w, 4, 16)
    assert res.padded and res.reconstruct().shape == (40, 10)


def test_pack4_round_trip():
    codes = np.random.default_rng(3).integers(0, 16, (6, 10)).astype(np.uint8)
    packed = pack4(codes)
    assert packed.size == 30
    np.testing.assert_array_equal(unpack4(packed).reshape(6, 10), codes)
    with pytest.raises(ValueError):
        pack4(np.arange(17, dtype=np.uint8)[:16] + 1)


def test_stored_bytes_counts_the_codebook():
    # Gong et al.'s per-sub-space codebooks on fc6: codes plus m codebooks of k x d floats cap the ratio at ~8x
    fc6 = 4096 * 9216 * 4
    assert fc6 / stored_bytes(4096, 9216, 4, 256, "subspace") == pytest.approx(8, rel=0.01)
    assert fc6 / stored_bytes(4096, 9216, 4, 256, "layer") > 15.9


def test_k_larger_than_the_vectors_is_refused():
    with pytest.raises(ValueError, match="larger than the number"):
        product_quantize(np.ones((4, 8), np.float32), 4, 16)


# -- the graph pass ---------------------------------------------------------------------------


def _fc(kind: str, opset: int = 17, dtype=np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w = _clustered(96, 64, 8, 40, seed=5) + 0.01 * rng.standard_normal((96, 64)).astype(np.float32)
    if kind == "gemm_t":
        node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=1)
        inits = {"w": w, "c": np.zeros(96, np.float32)}
    elif kind == "gemm":
        node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")
        inits = {"w": w.T.copy(), "c": np.zeros(96, np.float32)}
    elif kind == "matmul":
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
        inits = {"w": w.T.copy()}
    else:  # conv: 96 output channels, 16 x 2 x 2 kernels
        node = helper.make_node("Conv", ["x4", "w"], ["y"], name="fc")
        inits = {"w": w.reshape(96, 16, 2, 2)}
        return single_node_model(node, {"x4": [2, 16, 5, 5]}, inits, opset)
    model = single_node_model(node, {"x": [3, 64]}, inits, opset)
    if dtype != np.float32:
        t = model.graph.initializer[0]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name))
        for vi in (*model.graph.input, *model.graph.output):
            vi.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return model


def _optimized_ops(model: onnx.ModelProto, path) -> set[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("kind", ["gemm_t", "gemm", "matmul", "conv"])
@pytest.mark.parametrize("opset,k,d", [(17, 64, 8), (13, 16, 6), (9, 16, 8), (7, 32, 5)])
def test_pass_equals_the_dequantized_model(kind, opset, k, d, tmp_path):
    model = _fc(kind, opset)
    before = model.SerializeToString()
    out, rep = compress(model, pq=True, lowrank=False, pq_op_types=("Gemm", "MatMul", "Conv"), pq_k=k, pq_dim=d)
    assert model.SerializeToString() == before  # the input is left alone
    entry = rep.extras["pq"]["weights"][0]
    assert entry["status"] == "quantized", entry["reason"]
    assert entry["padded"] == (64 % d != 0)
    assert entry["packed4"] == (k <= 16 and opset >= 10)
    onnx.checker.check_model(out, full_check=True)
    assert not any(t.name == "w" for t in out.graph.initializer)
    assert all(MARK in t.name for t in out.graph.initializer if t.name != "c")
    deq = dequantize_model(out)
    assert {t.name for t in deq.graph.initializer} - {"c"} == {"w"}
    feeds = random_feeds(model)
    (a,), (b,) = run(out, feeds), run(deq, feeds)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # the dequantized weight is the PQ reconstruction, and the report's error is its error
    w0 = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w")
    w1 = next(numpy_helper.to_array(t) for t in deq.graph.initializer if t.name == "w")
    assert w1.shape == w0.shape
    assert np.linalg.norm(w1 - w0) / np.linalg.norm(w0) == pytest.approx(entry["rel_error"], rel=1e-4)
    # onnxruntime folds the whole chain at load: the layer runs on a plain weight
    ops = _optimized_ops(out, tmp_path / "opt.onnx")
    assert not ops & {"Gather", "Cast", "Div", "Mod", "Concat", "Slice"}, ops


def test_fp16_weight_keeps_its_dtype():
    model = _fc("matmul", dtype=np.float16)
    out, rep = compress(model, pq=True, lowrank=False, pq_k=32)
    book = next(t for t in out.graph.initializer if t.name.endswith("codebook"))
    assert book.data_type == TensorProto.FLOAT16
    e = rep.extras["pq"]["weights"][0]
    assert e["bytes_before"] == 96 * 64 * 2
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(out, feeds)[0], run(dequantize_model(out), feeds)[0], atol=1e-3)


def test_shared_weight_is_quantized_once_and_read_by_both():
    w = np.random.default_rng(6).standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="a"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="b"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out, rep = compress(model, pq=True, lowrank=False, pq_k=16, pq_dim=4)
    assert [e["weight"] for e in rep.extras["pq"]["weights"]] == ["w"]
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(out, feeds)[0], run(dequantize_model(out), feeds)[0], atol=1e-4)


def test_after_the_lowrank_pass_the_factors_are_quantized():
    out, rep = compress(zoo.demo_cnn(), pq=True, pq_op_types=("Gemm", "MatMul", "Conv"), pq_k=16, pq_dim=4)
    pq = rep.extras["pq"]
    done = [e for e in pq["weights"] if e["status"] == "quantized"]
    assert rep.totals.decomposed == 6 and len(done) >= 10
    assert all("/wnc/" in e["weight"] for e in pq["weights"])  # the factors the low-rank pass wrote
    assert pq["totals"]["ratio"] > 10
    # the weights count stays the logical one (codes are bytes, not weights)
    from wnc_onnx.rewrite.pipeline import count_params

    assert rep.totals.params_after == count_params(dequantize_model(out))
    meta = json.loads(next(p.value for p in out.metadata_props if p.key == "wnc_onnx"))
    assert meta["pq"]["k"] == 16 and len(meta["pq"]["weights"]) == len(done)


def test_skips_say_why():
    w8 = numpy_helper.from_array(np.ones((64, 64), np.int8), "w8")
    nodes = [
        helper.make_node("Cast", ["w8"], ["wf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "wf"], ["h"], name="int_layer"),
        helper.make_node("Gemm", ["h", "small"], ["y"], name="tiny", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [w8, numpy_helper.from_array(np.ones((4, 64), np.float32), "small")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    _, rep = compress(model, pq=True, lowrank=False)
    reasons = {e["weight"]: e["reason"] for e in rep.extras["pq"]["weights"]}
    assert "Cast" in reasons["wf"]
    assert "larger than its 32 sub-vectors" in reasons["small"]


# -- command line -----------------------------------------------------------------------------


def _cli(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture()
def demo(tmp_path):
    path = tmp_path / "demo.onnx"
    onnx.save(zoo.demo_cnn(), path)
    return path


def test_cli_pq_alone_report_and_verify(demo, tmp_path, capsys):
    out, rep = tmp_path / "pq.onnx", tmp_path / "r.json"
    digest = hashlib.sha256(demo.read_bytes()).hexdigest()
    rc, stdout, err = _cli(capsys, demo, out, "--pq", "--no-lowrank", "--report", rep, "--verify", "-q")
    assert rc == 0, err
    assert hashlib.sha256(demo.read_bytes()).hexdigest() == digest
    assert "product quantization: d=8, k=256" in stdout and "bits/w" in stdout
    data = json.loads(rep.read_text())
    fc1 = next(e for e in data["extras"]["pq"]["weights"] if e["weight"] == "fc1.weight")
    assert fc1["status"] == "quantized" and 1.0 < fc1["bits_per_weight"] < 1.1
    assert data["totals"]["file_bytes_after"] < data["totals"]["file_bytes_before"] / 5
    assert out.stat().st_size == data["totals"]["file_bytes_after"]
    assert data["layers"] == [] and "verify" in data["extras"]
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    docs = {n.output[0]: n.doc_string for n in written.graph.node if MARK in n.name}
    assert "product quantization of 'fc1.weight'" in docs["fc1.weight"] and "d=8, k=256" in docs["fc1.weight"]
    assert sum(bool(d) for d in docs.values()) == data["extras"]["pq"]["totals"]["quantized"]  # one per chain


def test_cli_after_lowrank_quantizes_the_factors_and_summarizes_the_unselected(demo, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    rc, stdout, err = _cli(capsys, demo, out, "--pq", "-q")
    assert rc == 0, err
    rows = [ln for ln in stdout.splitlines() if ln.startswith("fc1/wnc/out_fc.weight")]
    assert len(rows) == 1 and "quantized" in rows[0]
    assert "(13 more weight(s) skipped: op type Conv not selected (--pq-op-types))" in stdout
    assert not any(ln.startswith("conv2/wnc/") for ln in stdout.splitlines())


def test_cli_error_advice_names_the_pq_knobs(demo, tmp_path, capsys):
    out = tmp_path / "pq.onnx"
    rc, _, err = _cli(capsys, demo, out, "--pq", "--no-lowrank", "--verify", "--tolerance", "1e-9", "-q")
    assert rc == 1 and not out.exists()
    last = err.strip().splitlines()[-1]
    assert "lower --pq-dim (e.g. 4)" in last and "--pq-lambda" in last and "--rank-boost" not in last


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--pq-k", "300"], "--pq-k"),
        (["--pq-dim", "0"], "--pq-dim"),
        (["--pq-k", "256", "--pq-dim", "4096", "--pq-op-types", "Gemm"], "nothing to quantize"),
        (["--pq-op-types", "Conv", "--pq-exclude", "conv"], "nothing to quantize"),
        (["--pq-op-types", "Pool"], "--pq-op-types"),
    ],
)
def test_cli_bad_pq_input_one_line_exit_2_nothing_written(demo, tmp_path, capsys, args, needle):
    out = tmp_path / "o.onnx"
    rc, _, err = _cli(capsys, demo, out, "--pq", "--no-lowrank", "-q", *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "fix:" in lines[0], err
    assert not out.exists()


def test_cli_already_quantized_and_no_lowrank_without_pq(demo, tmp_path, capsys):
    first = tmp_path / "pq.onnx"
    assert _cli(capsys, demo, first, "--pq", "--no-lowrank", "--pq-op-types", "Gemm", "-q")[0] == 0
    rc, _, err = _cli(capsys, first, tmp_path / "again.onnx", "--pq", "--no-lowrank", "--pq-op-types", "Gemm", "-q")
    assert rc == 2 and "nothing to quantize" in err and "already product-quantized" in err
    rc, _, err = _cli(capsys, demo, tmp_path / "x.onnx", "--no-lowrank")
    assert rc == 2 and "add --pq" in err
    assert not (tmp_path / "again.onnx").exists() and not (tmp_path / "x.onnx").exists()


def test_cli_quantized_int8_model_is_refused(tmp_path, capsys):
    w8 = numpy_helper.from_array(np.ones((64, 64), np.int8), "w8")
    nodes = [
        helper.make_node("DequantizeLinear", ["w8", "s"], ["wf"], name="dq"),
        helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [w8, numpy_helper.from_array(np.array(0.1, np.float32), "s")],
    )
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    rc, _, err = _cli(capsys, path, tmp_path / "o.onnx", "--pq", "--no-lowrank", "-q")
    assert rc == 2 and "DequantizeLinear" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
