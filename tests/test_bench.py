"""`wnc-onnx bench`: interleaved timing, the profile-to-layer mapping, energy counters, bad input.

Timings are never asserted here (they live in benchmarks/); these tests check structure:
the rotation and sizing of rounds against a stub clock, that every profiled kernel lands
on the right layer, the JSON schema, and one-line failures."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import conv_model
from wnc_onnx import compress
from wnc_onnx.bench import BenchConfig, measure
from wnc_onnx.bench.energy import EnergyMeter
from wnc_onnx.bench.profile import NodeMap, attribute
from wnc_onnx.bench.timing import Timing, ratio_range, time_interleaved
from wnc_onnx.cli import main
from wnc_onnx.zoo import demo_cnn, vgg16


class StubClock:
    """Each runner advances time by its own cost; the clock reads it."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now

    def runner(self, name, cost):
        def run():
            self.calls.append(name)
            self.now += cost

        return run


def test_rounds_rotate_and_fill_the_round_time():
    clock = StubClock()
    t = time_interleaved(
        [clock.runner("a", 0.010), clock.runner("b", 0.002)],
        rounds=4,
        warmup=2,
        min_round_seconds=0.02,
        settle=0,
        clock=clock,
    )
    assert [len(r) for r in t[0].rounds] == [2] * 4  # 0.02 / 0.010
    assert [len(r) for r in t[1].rounds] == [10] * 4  # 0.02 / 0.002
    timed = clock.calls[4:]  # after two warm-up calls each
    firsts = [timed[0], timed[12], timed[24], timed[26 + 10]]
    assert firsts[:2] == ["a", "b"]  # round 1 starts with a, round 2 with b
    assert t[0].median == pytest.approx(0.010) and t[1].median == pytest.approx(0.002)
    assert t[0].spread == pytest.approx(0.0)
    assert ratio_range(t[0], t[1]) == pytest.approx((5.0, 5.0))


def test_each_share_of_a_round_opens_with_untimed_settling_runs():
    clock = StubClock()
    t = time_interleaved([clock.runner("a", 0.01), clock.runner("b", 0.01)], rounds=2, warmup=1, settle=2, clock=clock)
    assert clock.calls.count("a") == 1 + 2 * (2 + 10) and t[0].runs == 20


def test_spread_and_percentiles():
    t = Timing(rounds=[[1.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    assert t.round_medians == [1.0, 2.0, 2.0]
    assert t.spread == pytest.approx(0.5)
    assert t.min == 1.0 and t.p90 == pytest.approx(2.5)


def _profile_events(names_ops_durs, runs=2):
    """A synthetic onnxruntime trace: ``runs`` model runs, each with the same nodes."""
    events, ts = [], 0
    for _ in range(runs):
        start = ts
        for name, op, dur in names_ops_durs:
            events.append({"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}})
            ts += dur
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": ts - start})
        ts += 10
    return events


def test_fused_and_reordered_nodes_map_to_their_layer():
    from wnc_onnx.bench.profile import _per_run

    model, _ = compress(vgg16(image=32), ranks={"conv2_1": (8, 8)}, include="^conv2_1$")
    nm = NodeMap(model)
    trace = [
        ("conv1_1_relu_nchwc", "Conv", 100),  # Conv fused with Relu, named after the Relu's output
        ("conv2_1/wnc/in_1x1_out_nchwc", "Conv", 10),  # named after its output tensor
        ("ReorderOutput_token_7", "ReorderOutput", 3),  # inserted: counts with the layer before
        ("conv2_1/wnc/core_3x3", "Conv", 20),
        ("conv2_1/wnc/out_1x1", "FusedConv", 5),
        ("pool_16_nchwc", "MaxPool", 7),
        ("fused fc6", "FusedGemm", 50),
    ]
    table, unmapped = attribute(_per_run(_profile_events(trace), 0), nm)
    assert unmapped == ["ReorderOutput_token_7"]
    assert table["conv1_1"]["Conv"] == [0.1, 0.1]
    roles = table["conv2_1"]
    assert set(roles) == {"in_1x1", "core_3x3", "out_1x1", "ReorderOutput (added by onnxruntime)"}
    assert roles["ReorderOutput (added by onnxruntime)"] == [0.003, 0.003]
    assert table["(other)"]["other"] == [0.007, 0.007]
    assert table["fc6"]["Gemm"] == [0.05, 0.05]


def test_warm_up_runs_are_dropped_from_the_profile():
    from wnc_onnx.bench.profile import _per_run

    runs = _per_run(_profile_events([("a", "Conv", 5)], runs=3), skip=1)
    assert len(runs) == 2


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    model = demo_cnn()
    onnx.save(model, a)
    onnx.save(compress(model)[0], b)
    return a, b


def test_bench_json_schema_and_per_layer(pair, tmp_path, capsys):
    a, b = pair
    rep, png = tmp_path / "bench.json", tmp_path / "layers.png"
    rc = main(
        ["bench", str(a), str(b), "--rounds", "2", "--warmup", "1", "--round-time", "0.005", "--threads", "1,2"]
        + ["--per-layer", "--profile-runs", "3", "--report", str(rep), "--plot", str(png), "-q"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(rep.read_text())
    assert d["schema_version"] == 1 and d["config"]["provider"] == "CPUExecutionProvider"
    assert [(r["model"], r["threads"]) for r in d["runs"]] == [
        ("a.onnx", 1),
        ("b.onnx", 1),
        ("a.onnx", 2),
        ("b.onnx", 2),
    ]
    for r in d["runs"]:
        assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["throughput"] == pytest.approx(1000 / r["median_ms"])
        assert r["runs"] >= 2
    assert d["runs"][0]["speedup"] == 1.0
    assert d["memory_bytes"]["a.onnx"] > 0 and d["memory_bytes"]["b.onnx"] > 0
    assert d["energy"]["source"] or d["energy"]["note"]
    layers = d["per_layer"][0]["layers"]
    report = compress(demo_cnn())[1]
    assert {x["layer"] for x in layers} == {r.name for r in report.layers}
    for x in layers:
        decomposed = x["layer"] in {r.name for r in report.decomposed}
        roles = {p[0] for p in x["parts"]}
        if decomposed:
            assert roles & {"in_1x1", "core_3x3", "out_1x1", "svd_in", "svd_out"}, roles
            assert x["macs_ratio"] > 1
        times = [p[1] for p in x["parts"]]
        assert times and all(ms > 0 for ms in times), x
        if len(times) == 1:  # the median of one series is that series' median
            assert x["after_ms"] == pytest.approx(times[0], rel=1e-9)
        else:  # every run's total holds each part, so the median total is at least each part's median
            assert x["after_ms"] >= max(times) - 1e-12, x
    assert "per layer: b.onnx against a.onnx" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def _dynamic(model, dims):
    """``model`` with its first input's dims replaced (names for dynamic ones)."""
    shape = model.graph.input[0].type.tensor_type.shape
    for d, v in zip(shape.dim, dims, strict=True):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    return model


def test_batch_sizes_give_throughput(pair, capsys):
    path = pair[0]  # the demo CNN: dynamic batch
    rc = main(["bench", str(path), "--batch", "1,4", "--rounds", "2", "--round-time", "0.005", "--no-memory", "--json"])
    assert rc == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["batch"] for r in runs] == [1, 4]
    assert runs[1]["throughput"] == pytest.approx(4000 / runs[1]["median_ms"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--provider", "cuda"], "installed: CPUExecutionProvider"),
        (["--threads", "x"], "--threads"),
        (["--plot", "p.png"], "add --per-layer"),
        (["--session-option", "nokey"], "KEY=VALUE"),
        (["--rounds", "1"], "rounds must be >= 2"),
    ],
)
def test_bad_options_one_line_exit_2(pair, args, needle, capsys):
    rc = main(["bench", str(pair[0]), *args, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_fixed_batch_refuses_other_batch_sizes(tmp_path, capsys):
    path = tmp_path / "fixed.onnx"
    onnx.save(conv_model(3, 8, (3, 3), (16, 16)), path)
    rc = main(["bench", str(path), "--batch", "4", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "fixed batch of 1" in err and "--batch 1" in err


def test_model_that_fails_to_load_and_missing_model(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    node = helper.make_node("NoSuchOp", ["x"], ["y"])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(g), bad)
    rc = main(["bench", str(bad), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "onnxruntime cannot load" in err and len(err.strip().splitlines()) == 1
    rc = main(["bench", str(tmp_path / "none.onnx"), "-q"])
    assert rc == 2 and "model not found" in capsys.readouterr().err


def test_dynamic_dims_need_input_shape(tmp_path, capsys):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic(conv_model(3, 8, (3, 3), (16, 16)), ["N", 3, "H", "W"]), path)
    rc = main(["bench", str(path), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--input-shape x=1,3,<H>,<W>" in err, err
    rc = main(["bench", str(path), "--input-shape", "x=1,3,16,16", "--rounds", "2", "--no-memory", "-q", "--json"])
    assert rc == 0


def test_rapl_counter_read_and_wraparound(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone: not counted twice
    meter = EnergyMeter(powercap=str(tmp_path))
    assert meter.available and "package-0" in meter.source
    (zone / "energy_uj").write_text("1000\n")  # wrapped: 1000 + 1000000 - 999000 = 2000 uJ
    assert meter.read() == pytest.approx(0.002)


def test_no_counter_is_reported_as_unavailable(tmp_path):
    meter = EnergyMeter(powercap=str(tmp_path / "none"))
    assert not meter.available and meter.read() is None and "RAPL" in meter.why


def test_measure_api_takes_real_inputs(pair):
    a, b = pair
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    name = onnx.load(str(a)).graph.input[0].name
    res = measure([a, b], BenchConfig(inputs={name: x}, rounds=2, memory=False, min_round_seconds=0.005))
    assert res.config["inputs"] == "given" and [r.batch for r in res.runs] == [1, 1]


def test_per_layer_plot_stays_readable_for_many_layers(tmp_path):
    from PIL import Image

    from wnc_onnx.bench.result import LayerComparison, LayerTime
    from wnc_onnx.report.plot import plot_layer_times

    comp = LayerComparison(baseline="a.onnx", model="b.onnx", threads=1, runs=5)
    for i in range(120):
        after = [["in_1x1", 0.1], ["core_3x3", 0.2 + (0.5 if i % 7 == 0 else 0)], ["out_1x1", 0.1]]
        comp.layers.append(LayerTime(f"layer_{i}", "Conv", 0.6, sum(p[1] for p in after), after, 1000, 400))
    small = LayerComparison(baseline="a.onnx", model="b.onnx", threads=1, runs=5, layers=comp.layers[:10])
    big_png, small_png = tmp_path / "big.png", tmp_path / "small.png"
    plot_layer_times([comp], big_png)
    plot_layer_times([small], small_png)
    big, little = Image.open(big_png).size, Image.open(small_png).size
    assert big[0] == little[0] and big[1] > 5 * little[1]  # fixed width, one row per layer


def test_a_speedup_from_unsteady_rounds_is_flagged_with_the_steadier_settings():
    """The figure a busy machine gives (median far above the fastest run) is marked beside it."""
    from wnc_onnx.bench.measure import _unsteady
    from wnc_onnx.bench.result import BenchResult, ModelRun

    def run(name, median, lo, spread, speedup):
        return ModelRun(name, name, 2, 1, median, median, lo, spread, 10, speedup, [speedup, speedup], None, None, 1)

    config = {"provider": "CPUExecutionProvider", "session_options": {}, "graph_optimization": "all"}
    machine = {"cpu": "cpu", "cores": 2, "onnxruntime": "1"}
    noisy = BenchResult(config, machine, [run("a", 10.2, 2.1, 0.9, 1.0), run("b", 0.64, 0.6, 0.05, 15.87)])
    _unsteady(noisy)
    (w,) = noisy.warnings
    assert "x15.87 is unsteady" in w and "median 10.20 ms against its fastest run 2.10 ms" in w
    assert "--threads 1" in w and "allow_spinning=0" in w
    assert "x15.87 (15.87-15.87) **unsteady**" in noisy.to_table()
    assert json.loads(noisy.to_json())["runs"][0]["unsteady"] is True
    steady = BenchResult(config, machine, [run("a", 10.2, 10.0, 0.03, 1.0), run("b", 3.6, 3.5, 0.04, 2.8)])
    _unsteady(steady)
    assert not steady.warnings and "unsteady" not in steady.to_table()
