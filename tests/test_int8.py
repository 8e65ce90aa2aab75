"""--int8: onnxruntime's quantization after the low-rank pass, measured against int8 alone.

Numbers are checked by running the models in onnxruntime; timings are only checked for being
there (their values depend on the machine), except where a stubbed profile decides a choice."""

import json

import numpy as np
import onnx
import pytest

from tests.helpers import rel_diff
from wnc_onnx import compress
from wnc_onnx.bench.result import LayerComparison, LayerTime
from wnc_onnx.cli import main
from wnc_onnx.rewrite.int8_quantize import count_quantized, quantize, quantized_nodes
from wnc_onnx.zoo import demo_cnn


@pytest.fixture
def quick_layers(monkeypatch, tmp_path):
    """The layers' forms timed by a stub (every factored form half the original; no channel
    block): these tests check the int8 choices, which read the stubbed profiles and timings."""
    from wnc_onnx.check.latency import oracle
    from wnc_onnx.check.latency.block import ChannelBlock

    monkeypatch.setenv("WNC_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        oracle.Oracle,
        "_time",
        lambda self, cases: [
            oracle.Measured(1e-3 if m.graph.name == "isolated_original" else 0.5e-3, 0.01) for m, _ in cases
        ],
    )
    monkeypatch.setattr("wnc_onnx.rewrite.passes.lowrank_latency.measure_block", lambda o: ChannelBlock(1, 1.0))
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.slower_in_context", lambda *a, **k: [])
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", lambda *a, **k: None)


@pytest.fixture(scope="module")
def data():
    return {"image": np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)}


def test_int8_with_calibration_is_static_qdq_and_close_to_the_float_model(data):
    model = demo_cnn()
    out, report = compress(model, threads=1, int8=True, calibration=data)
    info = report.extras["int8"]
    assert info["mode"] == "static" and info["format"] == "QDQ" and info["samples"] == 64
    assert info["int8_layers"] == count_quantized(out) > 0
    assert "DequantizeLinear" in quantized_nodes(out) and "QuantizeLinear" in quantized_nodes(out)
    assert not quantized_nodes(model)  # the input is left alone
    m = info["measured"]
    assert set(m) >= {"original", "lowrank", "int8_alone", "lowrank_int8", "lowrank_int8_over_int8_alone"}
    assert m["original"]["speedup"] == 1.0 and all(m[k]["ms"] > 0 for k in ("lowrank", "int8_alone", "lowrank_int8"))
    float_out, _ = compress(model, threads=1, calibration=data)
    # int8 adds rounding on top of the low-rank error, no more than a few percent here
    assert rel_diff(model, out) < rel_diff(model, float_out) + 0.05
    assert report.extras["calibration"]["output_error"] == pytest.approx(rel_diff_on(model, out, data), rel=0.05)


def rel_diff_on(a, b, data):
    import onnxruntime as ort

    feeds = {"image": data["image"][:64]}
    x = ort.InferenceSession(a.SerializeToString()).run(None, feeds)[0]
    y = ort.InferenceSession(b.SerializeToString()).run(None, feeds)[0]
    return float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))


def test_int8_without_data_quantizes_matmul_and_gemm_dynamically_and_says_conv_stays_float():
    out, report = compress(demo_cnn(), threads=1, int8=True)
    info = report.extras["int8"]
    assert info["mode"] == "dynamic" and info["op_types"] == ["Gemm", "MatMul"]
    assert "DynamicQuantizeLinear" in quantized_nodes(out)
    assert all(n.op_type != "QuantizeLinear" for n in out.graph.node)
    assert any("Conv layers stay float" in w and "--calibration" in w for w in report.warnings)
    assert rel_diff(demo_cnn(), out) < 0.5


def test_latency_aware_int8_keeps_float_where_int8_is_slower_inside_the_model(data, monkeypatch, quick_layers):
    """A stubbed profile says conv3 runs slower in int8: it stays float, the others are int8."""
    calls = []

    def profiled(a, b, report, cfg, threads):
        calls.append(quantized_nodes(a))
        names = [r.name for r in report.layers]
        if quantized_nodes(a):  # int8 alone against low rank + int8: nothing slower
            return LayerComparison("a", "b", 1, 20, [LayerTime(n, "Conv", 1.0, 0.5, [], None, None) for n in names])
        slow = [LayerTime(n, "Conv", 1.0, 2.0 if n == "conv3" else 0.5, [], None, None) for n in names]
        return LayerComparison("a", "b", 1, 20, slow)

    monkeypatch.setattr("wnc_onnx.rewrite.int8_flow.profile_pair", profiled)
    monkeypatch.setattr("wnc_onnx.rewrite.int8_flow.measure_models", _timed_as((1.0, 1.3, 2.0, 3.0)))
    out, report = compress(demo_cnn(), threads=1, int8=True, calibration=data, latency_aware=True)
    info = report.extras["int8"]
    assert (
        len(calls) == 2
        and "conv3" in info["float_layers"]
        and "slower inside the model" in info["float_layers"]["conv3"]
    )
    deq = {o for n in out.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv3 = [n for n in out.graph.node if n.name.startswith("conv3") and n.op_type == "Conv"]
    conv2 = [n for n in out.graph.node if n.name.startswith("conv2") and n.op_type == "Conv"]
    assert conv3 and all(n.input[1] not in deq for n in conv3)  # float weights
    assert conv2 and all(n.input[1] in deq for n in conv2)


def test_a_factored_layer_slower_in_int8_than_the_original_in_int8_is_kept_whole(data, monkeypatch, quick_layers):

    def profiled(a, b, report, cfg, threads):
        names = [r.name for r in report.layers]
        slow = quantized_nodes(a) and "conv2" in {r.name for r in report.decomposed}
        times = [LayerTime(n, "Conv", 1.0, 2.0 if slow and n == "conv2" else 0.5, [], None, None) for n in names]
        return LayerComparison("a", "b", 1, 20, times)

    monkeypatch.setattr("wnc_onnx.rewrite.int8_flow.profile_pair", profiled)
    monkeypatch.setattr("wnc_onnx.rewrite.int8_flow.measure_models", _timed_as((1.0, 1.3, 2.0, 3.0)))
    out, report = compress(demo_cnn(), threads=1, int8=True, calibration=data, latency_aware=True)
    rec = next(r for r in report.layers if r.name == "conv2")
    assert rec.status == "skipped" and "slower in int8" in rec.reason
    assert report.extras["int8"]["kept_whole_in_int8"] == ["conv2"]
    assert not any(n.name.startswith("conv2/wnc/") for n in out.graph.node)


def test_int8_from_the_command_line_writes_the_int8_model_and_reports_both_speeds(data, tmp_path, capsys):
    src, dst, rep, npz = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "c.npz"
    onnx.save(demo_cnn(), src)
    np.savez(npz, **data)
    rc = main([str(src), str(dst), "--int8", "--calibration", str(npz), "--threads", "1", "--report", str(rep)])
    out = capsys.readouterr().out
    assert rc == 0 and quantized_nodes(onnx.load(dst))
    assert "int8 alone" in out and "low rank + int8" in out
    d = json.loads(rep.read_text())
    assert d["extras"]["int8"]["measured"]["lowrank_int8"]["ms"] > 0
    parent = tmp_path / "o.float.onnx"  # the float parent, what fine-tuning takes
    assert d["model"]["float_parent"] == str(parent) and not quantized_nodes(onnx.load(parent))
    assert rel_diff(onnx.load(parent), onnx.load(dst)) < 0.1


@pytest.mark.parametrize(
    "case, needle",
    [
        ("quantized", "--int8: the input is already quantized (it holds DequantizeLinear"),
        ("pq", "--int8 and --pq both quantize the weights: choose one"),
        ("no_tools", "--int8 needs onnxruntime's quantization tools"),
        ("max_error", "--max-error chooses ranks for an error budget in float, which --int8 would then change"),
        ("distill", "--distill trains the float model, and --int8 would hand it a quantized one"),
        ("parent_is_input", "--int8 writes the float model to"),
    ],
)
def test_bad_int8_input_one_line_exit_2_no_output(case, needle, data, tmp_path, capsys, monkeypatch):
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    args = ["--int8"]
    if case == "quantized":
        onnx.save(quantize(demo_cnn(), [{"image": data["image"][:8]}]), src)
    else:
        onnx.save(demo_cnn(), src)
    if case == "pq":
        args.append("--pq")
    if case in ("max_error", "distill"):
        np.savez(tmp_path / "c.npz", **data)
        args += ["--calibration", str(tmp_path / "c.npz")]
        args += ["--max-error", "0.1"] if case == "max_error" else ["--distill", "1"]
    if case == "parent_is_input":  # m.onnx -> m.float.onnx would be the float parent of m.float.onnx's output
        src.rename(tmp_path / "o.float.onnx")
        src = tmp_path / "o.float.onnx"
    if case == "no_tools":
        import builtins

        real = builtins.__import__

        def no_quantization(name, *a, **k):
            if name.startswith("onnxruntime.quantization"):
                raise ImportError("No module named 'onnxruntime.quantization'")
            return real(name, *a, **k)

        monkeypatch.setattr(builtins, "__import__", no_quantization)
    before = src.read_bytes()
    rc = main([str(src), str(dst), *args, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not dst.exists() and src.read_bytes() == before


def test_int8_alone_without_the_low_rank_pass(data, tmp_path, capsys):
    """--no-lowrank --int8: quantization alone (the baseline low rank + int8 is measured against)."""
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(demo_cnn(), src)
    np.savez(tmp_path / "c.npz", **data)
    rc = main([str(src), str(dst), "--no-lowrank", "--int8", "--calibration", str(tmp_path / "c.npz"), "-q"])
    assert rc == 0
    out = onnx.load(dst)
    assert count_quantized(out) == 6 and not any("/wnc/" in n.name for n in out.graph.node)


def test_bench_int8_times_each_float_model_quantized_beside_it(tmp_path, capsys):
    src, small = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(demo_cnn(), src)
    onnx.save(compress(demo_cnn(), threads=1)[0], small)
    rep = tmp_path / "b.json"
    rc = main(["bench", str(src), str(small), "--int8", "--rounds", "2", "--warmup", "1", "--no-memory",
               "--threads", "1", "--report", str(rep), "-q"])  # fmt: skip
    assert rc == 0
    runs = {r["model"]: r for r in json.loads(rep.read_text())["runs"]}
    assert set(runs) == {"m.onnx", "s.onnx", "m.int8.onnx", "s.int8.onnx"}
    assert all(r["median_ms"] > 0 for r in runs.values())
    assert "s.int8.onnx" in capsys.readouterr().out


def test_an_opset_11_export_is_converted_for_per_channel_scales(data):
    """Per-channel DequantizeLinear needs opset 13 (its axis); the tools would write an invalid
    model for an older export (PP-OCR's classifier is opset 11), so it is converted first."""
    from wnc_onnx.rewrite.int8_quantize import opset

    model = demo_cnn()
    model.opset_import[0].version = 11
    onnx.checker.check_model(model)
    out, report = compress(model, threads=1, int8=True, calibration=data)
    assert opset(out) == 13 and report.extras["int8"]["int8_layers"] > 0
    assert rel_diff(model, out) < rel_diff(model, compress(model, threads=1, calibration=data)[0]) + 0.05


def _timed_as(speedups):
    """A stand-in for the side-by-side timing: original, low rank, int8 alone, low rank + int8."""

    def measured(target, models, shapes, rounds=7, input_values=None):
        return [{"ms": 1.0 / s, "speedup": s, "range": [s, s], "spread": 0.01} for s in speedups]

    return measured


@pytest.mark.parametrize(
    "speedups, written",
    [((1.0, 1.3, 2.0, 1.95), "int8 alone"), ((1.0, 1.3, 0.7, 1.0), "float"), ((1.0, 1.3, 2.0, 3.0), "int8")],
)
def test_latency_aware_int8_writes_what_measured_fastest(speedups, written, data, monkeypatch, quick_layers):
    """int8 alone as fast as low rank + int8: nothing factored (more accuracy, same speed); low rank
    + int8 slower than the float low-rank model: the float one; else low rank + int8."""
    monkeypatch.setattr("wnc_onnx.rewrite.int8_flow.profile_pair", lambda *a, **k: None)
    monkeypatch.setattr("wnc_onnx.rewrite.int8_flow.measure_models", _timed_as(speedups))
    out, report = compress(demo_cnn(), threads=1, int8=True, calibration=data, latency_aware=True)
    factored = any("/wnc/" in n.name for n in out.graph.node)
    if written == "int8 alone":
        assert report.extras["int8"]["measured"]["chosen"] == "int8_alone"
        assert quantized_nodes(out) and not factored and report.totals.decomposed == 0
        assert any("int8 alone ran as fast" in (r.reason or "") for r in report.layers)
        assert any("int8 alone ran as fast as low rank + int8" in w for w in report.warnings)
        assert "written: int8 alone" in report.to_table() and report.extras["int8"]["float_layers"] == {}
        assert report.extras["calibration"]["output_error"] < 0.1  # measured on what is written
    elif written == "float":
        assert not quantized_nodes(out) and factored
        assert any("low rank + int8 ran slower than the float" in w for w in report.warnings)
        assert report.extras["int8"]["int8_layers"] == 0 and "written: the float model" in report.to_table()
    else:
        assert quantized_nodes(out) and factored and report.extras["int8"]["measured"]["chosen"] == "int8"


def test_an_allocation_within_10_percent_is_kept_over_a_sparer_one_outside():
    """Within the noise of the closest, the fewest layers factored, but never one outside the band."""
    from wnc_onnx.rewrite.speed_target import pick

    def tried(g, n):
        return (None, None, {"measured_speedup": g, "decomposed": n, "spread": 0.08})

    _, _, best = pick([tried(1.42, 10), tried(1.33, 6)], 1.5)
    assert best["measured_speedup"] == 1.42
    _, _, best = pick([tried(1.48, 10), tried(1.45, 6)], 1.5)
    assert best["measured_speedup"] == 1.45  # both within 10% and the same within the noise: the sparer
