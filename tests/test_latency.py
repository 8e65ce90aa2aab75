"""Latency-aware compression: forms, isolation, the never-slower rule, the speed-up allocation, the cache.

The rules are checked against stubbed timers (timings are never asserted); one run times
real forms in onnxruntime to check that every form it builds runs and gives the layer's
output shape."""

import json
import math

import numpy as np
import onnx
import pytest

from tests.helpers import rel_diff
from wnc_onnx import compress
from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.check.latency import oracle as oracle_mod
from wnc_onnx.check.latency.allocate import LayerOptions, allocate, never_slower
from wnc_onnx.check.latency.forms import ORIGINAL, Form, ModeSpectra, at_least_as_accurate, ladder
from wnc_onnx.check.latency.isolate import isolated
from wnc_onnx.check.latency.oracle import Measured
from wnc_onnx.cli import main
from wnc_onnx.rewrite.passes.rules import DEFAULT_RULES
from wnc_onnx.zoo import demo_cnn


def m(ms, spread=0.01):
    return Measured(ms / 1e3, spread)


def options(name, base, times, errors):
    return LayerOptions(name, base, {f: m(t) for f, t in times.items()}, errors)


T2 = Form("tucker2", 8, 8)
T2R = Form("tucker2", 16, 16)
T1 = Form("tucker1", None, 8)


def test_the_fastest_form_as_accurate_as_the_policy_wins():
    opt = options("c", T2, {ORIGINAL: 1.0, T2: 0.6, T2R: 0.4}, {ORIGINAL: 0, T2: 0.2, T2R: 0.1})
    c = never_slower(opt)
    assert c.form == T2R and "x2.50" in c.why
    assert "slower than" in c.rejected[T2] and "slower" in c.rejected[ORIGINAL]


def test_a_layer_is_never_kept_slower_than_the_original():
    opt = options("c", T2, {ORIGINAL: 1.0, T2: 1.3, T1: 1.1}, {ORIGINAL: 0, T2: 0.2, T1: 0.1})
    c = never_slower(opt)
    assert c.form == ORIGINAL and "not faster than the original" in c.rejected[T1]


def test_a_gain_inside_the_noise_keeps_the_original():
    opt = LayerOptions("c", T2, {ORIGINAL: m(1.0, 0.10), T2: m(0.95, 0.10)}, {ORIGINAL: 0, T2: 0.2})
    assert never_slower(opt).form == ORIGINAL
    opt = LayerOptions("c", T2, {ORIGINAL: m(1.0, 0.01), T2: m(0.95, 0.01)}, {ORIGINAL: 0, T2: 0.2})
    assert never_slower(opt).form == T2
    # a very noisy run counts the noise at most 10%: a clear gain still wins
    opt = LayerOptions("c", T2, {ORIGINAL: m(1.0, 2.0), T2: m(0.8, 2.0)}, {ORIGINAL: 0, T2: 0.2})
    assert never_slower(opt).form == T2


def test_a_faster_but_less_accurate_form_is_rejected():
    lower = Form("tucker2", 4, 4)
    opt = options("c", T2, {ORIGINAL: 1.0, T2: 0.6, lower: 0.2}, {ORIGINAL: 0, T2: 0.2, lower: 0.5})
    c = never_slower(opt)
    assert c.form == T2 and "above the policy's" in c.rejected[lower]


def _spectra(rng, n=32):
    out = [np.sort(rng.random(n) ** 4)[::-1]]
    inp = [np.sort(rng.random(n) ** 4)[::-1]]
    return ModeSpectra(out, inp)


@pytest.mark.parametrize("seed", range(5))
def test_forms_offered_as_accurate_cannot_cost_more_error(seed):
    rng = np.random.default_rng(seed)
    sp = _spectra(rng)
    base = Form("tucker2", int(rng.integers(1, 30)), int(rng.integers(1, 30)))
    for f in at_least_as_accurate(base, 32, 32, True):
        assert sp.rel_error(f) <= sp.rel_error(base) + 1e-12, f
    lad = ladder(base, 32, 32)
    assert base in lad and len(lad) > 3
    assert all(1 <= f.r4 <= 32 and 1 <= (f.r3 or 1) <= 32 for f in lad)


def test_svd_and_tucker1_errors_are_exact_energy_fractions():
    sp = ModeSpectra([np.array([9.0, 4.0, 1.0])])
    assert sp.rel_error(Form("svd", None, 1)) == pytest.approx(np.sqrt(5 / 14))
    assert sp.rel_error(Form("svd", None, 3)) == 0.0 and sp.rel_error(ORIGINAL) == 0.0


def _ladder_options():
    """Three layers: time falls and error grows as ranks shrink."""
    out = {}
    for name, scale in (("a", 1.0), ("b", 2.0), ("c", 0.5)):
        forms = {ORIGINAL: 10.0 * scale}
        errors = {ORIGINAL: 0.0}
        for k, r in enumerate((64, 32, 16, 8)):
            f = Form("svd", None, r)
            forms[f] = scale * (8 - 2 * k)
            errors[f] = 0.05 * (k + 1) * (1 + 0.1 * scale)
        out[name] = options(name, Form("svd", None, 32), forms, errors)
    return out


def test_allocation_reaches_a_target_with_errors_spread_evenly():
    opts = _ladder_options()
    whole = 40.0  # 35 ms in the three layers, 5 elsewhere
    alloc = allocate(opts, whole, 2.0)
    assert alloc.reached and alloc.predicted_ms <= whole / 2 + 1e-9
    errs = [opts[n].errors[f] for n, f in alloc.forms.items()]
    # the smallest bound that reaches the goal: a looser one would not be needed
    assert max(errs) <= 0.15 * 1.2 + 1e-9
    # more error is never spent than the goal needs: giving any layer its next better form breaks it
    for n, f in alloc.forms.items():
        better = [g for g in opts[n].times if opts[n].errors[g] < opts[n].errors[f]]
        for g in better:
            assert alloc.predicted_ms + (opts[n].ms(g) - opts[n].ms(f)) > whole / 2 - 1e-9


def test_an_unreachable_target_says_so():
    alloc = allocate(_ladder_options(), 40.0, 100.0)
    assert not alloc.reached and alloc.predicted_speedup < 100


def test_a_modest_target_spends_no_error():
    alloc = allocate(_ladder_options(), 40.0, 1.0)
    assert alloc.reached and all(f == ORIGINAL for f in alloc.forms.values())
    alloc = allocate(_ladder_options(), 40.0, 1.01)  # 0.4 ms to save: one layer, at its least error
    changed = {n: f for n, f in alloc.forms.items() if f != ORIGINAL}
    assert len(changed) == 1 and all(f.r4 == 64 for f in changed.values())


def test_isolated_forms_run_and_give_the_layers_output_shape():
    import onnxruntime as ort

    model = demo_cnn()
    ctx = GraphContext(model, shapes=None)
    from wnc_onnx.config import CompressConfig

    cfg = CompressConfig()
    done = 0
    for node in model.graph.node:
        for rule in DEFAULT_RULES:
            layer = rule.match(node, ctx, cfg)
            if layer is None:
                continue
            layer.name = node.name
            # the methods the planner gives: Tucker-2 for spatial kernels, SVD otherwise (1x1 convs too)
            base = Form("tucker2", 4, 4) if layer.tucker_capable and layer.s > 4 else Form("svd", None, 4)
            shapes = set()
            for f in [ORIGINAL, *at_least_as_accurate(base, layer.s, layer.t, layer.tucker_capable)]:
                iso, feeds = isolated(layer, rule, ctx, f)
                onnx.checker.check_model(iso)
                out = ort.InferenceSession(iso.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
                shapes.add(out[0].shape)
            assert len(shapes) == 1, (node.name, shapes)
            done += 1
            break
    assert done == 6


def test_a_pointwise_conv_is_timed_in_its_svd_form(monkeypatch, tmp_path):
    """1x1 convs plan as SVD; their forms must build and run (they once failed and, being
    untimeable, were all kept whole)."""
    from tests.helpers import conv_model

    monkeypatch.setenv("WNC_ONNX_CACHE", str(tmp_path))
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.slower_in_context", lambda *a, **k: [])
    model = conv_model(64, 64, (1, 1), (8, 8))
    _, report = compress(model, latency_aware=True, threads=1, ranks={"conv": 8})
    lat = report.layers[0].latency
    assert report.layers[0].method in (None, "svd") and "not timed" not in lat["why"], lat
    block = report.extras["latency"]["channel_block"]["block"]
    rounded = {f"svd R={-(-8 // block) * block}"} if block > 1 else set()
    assert set(lat["measured_ms"]) == {"original", "svd R=8"} | rounded  # the rank rounded up to the block measured


class StubTimer:
    """Decomposed forms of ``slow`` take 3x the original; every other form takes less, by ranks."""

    def __init__(self, slow=()):
        self.slow = set(slow)
        self.calls = 0

    def __call__(self, oracle, cases):
        self.calls += 1
        out = []
        for model, _ in cases:
            layer = model.graph.node[0].name.split("/wnc/")[0]
            if model.graph.name == "isolated_original":
                out.append(Measured(1e-3, 0.01))
                continue
            weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
            t = 3e-3 if layer in self.slow else 1e-3 * min(0.9, 0.1 + weights / 1e5)
            out.append(Measured(t, 0.01))
        return out


@pytest.fixture
def stub(monkeypatch, tmp_path):
    monkeypatch.setenv("WNC_ONNX_CACHE", str(tmp_path / "cache"))
    timer = StubTimer(slow={"conv2"})
    timer.cache_root = tmp_path / "cache"
    monkeypatch.setattr(oracle_mod.Oracle, "_time", lambda self, cases: timer(self, cases))
    monkeypatch.setattr("wnc_onnx.check.latency.choose.LatencyChooser.time_whole", _whole)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", lambda *a, **k: None)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", lambda *a, **k: None)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.slower_in_context", lambda *a, **k: [])
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.profile_pair", lambda *a, **k: None)
    return timer


def _whole(self, model, shapes, values=None):
    self.whole_ms = 8.0
    return 8.0


def test_latency_aware_keeps_a_slower_layer_whole(stub):
    model = demo_cnn()
    out, report = compress(model, latency_aware=True, threads=1)
    recs = {r.name: r for r in report.layers}
    assert recs["conv2"].status == "skipped" and "latency-aware: kept whole" in recs["conv2"].reason
    assert recs["conv2"].latency["chosen"] == "original"
    for name, r in recs.items():
        if name != "conv2" and r.status == "decomposed":
            assert r.rank_source == "latency" and r.latency["chosen"] != "original"
            ms = r.latency["measured_ms"]
            assert ms[r.latency["chosen"]] < ms["original"]
    assert not any(n.name.startswith("conv2/wnc/") for n in out.graph.node)
    assert rel_diff(model, out) < 0.5
    info = report.extras["latency"]
    assert info["timings_measured"] > 0 and info["timings_cached"] == 0
    assert "alone" in report.to_table()
    # a second run on the same target reads the cache and times nothing
    calls = stub.calls
    _, again = compress(model, latency_aware=True, threads=1)
    assert stub.calls == calls and again.extras["latency"]["timings_cached"] == info["timings_measured"]
    assert [r.ranks for r in again.layers] == [r.ranks for r in report.layers]


def test_layers_slower_inside_the_model_are_kept_whole(stub, monkeypatch):
    """Alone a form may win and still lose inside the model (layout changes between layers)."""
    seen = []

    def profiled(original, result, report, cfg, threads):
        seen.append(sorted(r.name for r in report.decomposed))
        return [{"layer": "conv3", "original_ms": 1.0, "compressed_ms": 1.2}] if len(seen) == 1 else []

    monkeypatch.setattr("wnc_onnx.rewrite.on_target.slower_in_context", profiled)
    out, report = compress(demo_cnn(), latency_aware=True, threads=1)
    assert "conv3" in seen[0] and "conv3" not in seen[1] and len(seen) == 2
    rec = next(r for r in report.layers if r.name == "conv3")
    assert rec.status == "skipped" and "slower inside the model" in rec.reason
    # the rerun skips it before timing: its record keeps the first run's timings, the choice now the original
    assert rec.latency["chosen"] == "original" and "original" in rec.latency["measured_ms"]
    assert "1.200 ms compressed against 1.000 ms original" in rec.latency["why"]
    assert report.extras["latency"]["kept_whole_in_context"][0]["layer"] == "conv3"
    assert not any(n.name.startswith("conv3/wnc/") for n in out.graph.node)


def test_a_layer_that_cannot_be_timed_stays_whole(stub):
    from tests.helpers import conv_model

    model = conv_model(16, 32, (3, 3), (12, 12))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"  # a size only the user knows
    _, report = compress(model, latency_aware=True, threads=1, ranks={"conv": (4, 4)})
    rec = report.layers[0]
    assert rec.status == "skipped" and "not timed alone" in rec.reason and "--input-shape" in rec.reason
    _, report = compress(
        model, latency_aware=True, threads=1, ranks={"conv": (4, 4)}, input_shapes={"x": (1, 16, 12, 12)}
    )
    assert report.layers[0].latency["measured_ms"]


def test_target_speedup_with_stubbed_times(stub):
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    info = report.extras["latency"]
    assert info["target_speedup"] == 1.5 and info["reached"] and info["predicted_speedup"] >= 1.5 - 1e-6
    _, report = compress(demo_cnn(), target_speedup=1000, threads=1)
    assert not report.extras["latency"]["reached"]
    assert any("cannot be reached" in w for w in report.warnings)


def test_latency_aware_for_real_on_the_demo(tmp_path, monkeypatch, capsys):
    """Real onnxruntime timings (values not asserted): every layer is chosen and explained."""
    monkeypatch.setenv("WNC_ONNX_CACHE", str(tmp_path / "cache"))
    src, out, rep = tmp_path / "demo.onnx", tmp_path / "small.onnx", tmp_path / "r.json"
    onnx.save(demo_cnn(), src)
    rc = main([str(src), str(out), "--latency-aware", "--threads", "1", "--report", str(rep), "-q"])
    assert rc == 0
    d = json.loads(rep.read_text())
    for r in d["layers"]:
        assert r["latency"]["chosen"] in r["latency"]["measured_ms"]
        assert (r["status"] == "skipped") == (r["latency"]["chosen"] == "original")
    assert d["extras"]["latency"]["measured"]["speedup"] > 0
    assert (tmp_path / "cache" / "latency.json").is_file()


def _measured_as(fn, calls):
    """A stand-in for the whole-model timing: the speed-up ``fn(goal)`` for each allocation's goal."""

    def measured(original, result, report, cfg, threads):
        lat = report.extras["latency"]
        goal = cfg.target_speedup * lat["calibration"]
        calls.append(goal)
        got = fn(goal)
        lat["measured"] = {"original_ms": 8.0, "compressed_ms": 8.0 / got, "speedup": got, "spread": 0.02}

    return measured


def test_a_missed_target_is_corrected_until_measured_within_10_percent(stub, monkeypatch):
    """The whole model runs slower than its layers alone predict (0.8 x the goal): the goal is
    corrected by the miss until the measured speed-up is within 10% of the target."""
    calls = []
    fn = _measured_as(lambda goal: 0.8 * goal, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    lat = report.extras["latency"]
    steps = lat["steps"]
    assert calls[0] == pytest.approx(1.5) and len(steps) >= 2
    assert steps[1]["goal"] == pytest.approx(1.5 * 1.5 / 1.2, rel=1e-3)  # scaled by the first miss
    assert lat["met"] and abs(lat["measured"]["speedup"] / 1.5 - 1) <= 0.10
    assert lat["measured_speedup"] == lat["measured"]["speedup"]
    assert not any("target-speedup" in w for w in report.warnings)


def test_the_allocation_that_reaches_the_target_is_kept_and_the_miss_explained(stub, monkeypatch):
    """Timings that never land within 10%: the loop stops (after MAX_ALLOCATIONS, when the next
    goal is one it measured already, or builds forms it measured already) and keeps the slowest
    allocation that reaches the target, saying so."""
    from wnc_onnx.rewrite import speed_target

    calls = []
    fn = _measured_as(lambda goal: 1.2 if len(calls) % 2 else 1.9, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    lat = report.extras["latency"]
    n = len(lat["steps"])
    assert 3 <= n <= speed_target.MAX_ALLOCATIONS and not lat["met"]
    assert lat["measured"]["speedup"] == 1.9  # the speed asked for, rather than the closer x1.20
    (w,) = [w for w in report.warnings if "--target-speedup" in w]
    assert "x1.90" in w and ("not within 10%" in w or "cannot be met within 10%" in w), w


def test_a_target_the_fastest_forms_cannot_meet_names_what_bounds_it(stub, monkeypatch):
    calls = []
    fn = _measured_as(lambda goal: 1.3, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    _, report = compress(demo_cnn(), target_speedup=1000, threads=1)
    lat = report.extras["latency"]
    assert len(calls) == 1 and not lat["met"] and not lat["reached"]
    b = lat["bounds"]
    assert b["layers"] and all(x["ms"] <= x["original_ms"] for x in b["layers"])
    (w,) = [w for w in report.warnings if "cannot be met" in w]
    assert (
        "the highest measured is x1.30" in w and "nodes that are not layers take" in w and b["layers"][0]["layer"] in w
    )


def test_in_context_times_replace_the_times_alone_in_the_next_allocation(stub, monkeypatch):
    """A form that runs 3x slower inside the model than alone is charged that in the next
    allocation: the report shows its in-context times beside the times alone, and the loop
    records the correction."""
    from wnc_onnx.bench.result import LayerComparison, LayerTime

    def profiled(original, result, report, cfg, threads):
        layers = [
            LayerTime(r.name, "Conv", 1.0, 3.0 if r.name == "conv3" else 0.5, [], None, None) for r in report.decomposed
        ]
        return LayerComparison("original", "compressed", 1, 20, layers)

    calls = []
    fn = _measured_as(lambda goal: 1.2 if len(calls) == 1 else 1.5, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.profile_pair", profiled)
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    lat = report.extras["latency"]
    assert lat["met"] and lat["steps"][0]["corrected_in_context"] >= 1
    conv3 = next(r for r in report.layers if r.name == "conv3")
    inside = conv3.latency["in_context_ms"]  # its original and first chosen form as profiled (1.0, 3.0 ms)
    assert inside["original"] == pytest.approx(1.0) and pytest.approx(3.0) in list(inside.values())
    assert conv3.latency["measured_ms"]["original"] == pytest.approx(1.0)  # the times alone stay as measured


def test_the_next_goal_is_proportional_then_bracketed():
    from wnc_onnx.rewrite.speed_target import next_goal

    assert next_goal([{"goal": 4.0, "measured_speedup": 2.0}], 4.0) == pytest.approx(8.0)
    steps = [{"goal": 4.0, "measured_speedup": 2.0}, {"goal": 8.0, "measured_speedup": 8.0}]
    assert next_goal(steps, 4.0) == pytest.approx(math.sqrt(4.0 * 8.0))  # halfway in log
    assert next_goal([{"goal": 4.0, "measured_speedup": 100.0}], 4.0) == pytest.approx(0.2 * 4.0)  # clipped


def test_the_channel_block_is_what_the_probe_measured():
    from wnc_onnx.check.latency.block import ChannelBlock, decide

    ranks = range(33, 65)
    stepped = {r: 1.0 + (0.0 if r % 8 == 0 else 0.4) + r / 1000 for r in ranks}  # off-block ranks pay reorders
    assert decide(stepped).block == 8 and decide(stepped).gain > 1.3
    smooth = {r: r / 64 for r in ranks}  # time follows the work: rounding up only costs
    assert decide(smooth).block == 1
    b = ChannelBlock(16, 1.2)
    assert b.round_up(37, 64) == 48 and b.round_up(60, 62) == 62 and b.on_block(62, 62) and not b.on_block(37, 64)


def test_ranks_rounded_to_the_measured_block_are_chosen_and_reported(monkeypatch, tmp_path):
    """Where the probe finds a block, forms on it are offered; a faster one wins and the
    report says which ranks moved and why."""
    from wnc_onnx.check.latency.block import ChannelBlock

    monkeypatch.setenv("WNC_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("wnc_onnx.rewrite.passes.lowrank_latency.measure_block", lambda oracle: ChannelBlock(16, 1.25))
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", lambda *a, **k: None)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.slower_in_context", lambda *a, **k: [])

    def timer(self, cases):  # ranks on 16 run at half the time of others
        out = []
        for model, _ in cases:
            dims = [d for t in model.graph.initializer for d in t.dims if d > 3]
            t = 1e-3 if model.graph.name == "isolated_original" else 0.9e-3
            if model.graph.name != "isolated_original" and all(d % 16 == 0 for d in dims):
                t = 0.4e-3
            out.append(Measured(t, 0.01))
        return out

    monkeypatch.setattr(oracle_mod.Oracle, "_time", timer)
    _, report = compress(demo_cnn(), latency_aware=True, threads=1, ranks={"conv2": (13, 21), "conv3": (32, 48)})
    recs = {r.name: r for r in report.layers}
    assert recs["conv2"].ranks == {"R3": 16, "R4": 32}
    assert recs["conv2"].latency["rounded"].startswith("R3 13->16, R4 21->32: on the channel block of 16")
    assert "rounded" not in recs["conv3"].latency  # already on the block
    assert report.extras["latency"]["channel_block"]["block"] == 16


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["--target-speedup", "0"],
            "--target-speedup must be > 0 (e.g. 2 for twice as fast); fix: see 'wnc-onnx compress --help'",
        ),
        (["--latency-aware", "--provider", "nope"], "installed: CPUExecutionProvider"),
        (["--latency-aware", "--session-option", "x"], "KEY=VALUE"),
    ],
)
def test_bad_latency_options(tmp_path, args, needle, capsys):
    src = tmp_path / "demo.onnx"
    onnx.save(demo_cnn(), src)
    rc = main([str(src), str(tmp_path / "o.onnx"), *args, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.onnx").exists()


def test_a_slower_layer_left_whole_blames_the_decomposed_layer_feeding_it():
    from wnc_onnx.rewrite.on_target import decomposed_neighbour, decomposed_upstream

    model = demo_cnn()  # conv1 -> relu -> conv2 -> relu -> pool -> conv3 ...
    assert decomposed_upstream(model, "conv3", {"conv2"}) == "conv2"
    assert decomposed_upstream(model, "conv3", {"conv1"}) is None  # conv2 stands between, whole
    assert decomposed_upstream(model, "conv3", {"conv1"}, depth=10) is None
    assert decomposed_upstream(model, "conv1", {"conv2"}) is None
    assert decomposed_neighbour(model, "conv1", {"conv2"}) == "conv2"  # the reorder before conv2 runs after conv1
    assert decomposed_neighbour(model, "conv2", {"conv1", "conv3"}) == "conv1"


def test_target_speedup_with_calibration_ranks_by_the_data_and_checks_max_error(stub, tmp_path):
    """With calibration data the speed-up's allocation weighs each form by its output error on the
    data (the layers' modelled errors are the data spectra's, not the kernel's); --max-error then
    checks the result: over it is one WncError naming both figures, under it the report keeps both."""
    from wnc_onnx.errors import WncError

    x = np.random.default_rng(3).standard_normal((96, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", image=x)
    cal = tmp_path / "cal.npz"
    _, plain = compress(demo_cnn(), target_speedup=1.5, threads=1)
    _, data = compress(demo_cnn(), target_speedup=1.5, threads=1, calibration=cal)
    errs = {r.name: r.latency["kernel_error"] for r in data.layers if r.latency and "kernel_error" in r.latency}
    free = {r.name: r.latency["kernel_error"] for r in plain.layers if r.latency and "kernel_error" in r.latency}
    assert errs and errs.keys() == free.keys() and errs != free
    assert data.extras["latency"]["reached"] and data.extras["calibration"]["output_error"] > 0
    with pytest.raises(WncError, match="costs an output error of .* over --max-error 1e-06"):
        compress(demo_cnn(), target_speedup=1.5, threads=1, calibration=cal, max_error=1e-6)
    _, rep = compress(demo_cnn(), target_speedup=1.5, threads=1, calibration=cal, max_error=10.0)
    assert rep.extras["max_error"]["measured"] == rep.extras["calibration"]["output_error"] <= 10.0


def test_the_cache_is_kept_per_machine(stub, monkeypatch):
    """Timings taken on one CPU are not trusted on another (model or instruction sets differ)."""
    model = demo_cnn()
    _, first = compress(model, latency_aware=True, threads=1)
    key = first.extras["latency"]["target"]
    assert key["cpu"] and isinstance(key["isa"], list)
    calls = stub.calls
    other = {"cpu": "Some Other CPU", "isa": ["avx2"], "arch": "x86_64"}
    monkeypatch.setattr(oracle_mod, "target_machine", lambda provider: other)
    _, second = compress(model, latency_aware=True, threads=1)
    assert stub.calls > calls and second.extras["latency"]["timings_cached"] == 0
    assert second.extras["latency"]["target"]["cpu"] == "Some Other CPU"
    tables = json.loads((stub.cache_root / "latency.json").read_text())
    assert sorted(json.loads(k)["cpu"] for k in tables) == sorted([key["cpu"], "Some Other CPU"])


def test_the_machine_is_described_from_cpuinfo():
    from wnc_onnx.io import machine

    assert machine.cpu_model() and set(machine.cpu_isa()) <= set(machine.ISA_FLAGS)
    assert "gpu" not in machine.target_machine("CPUExecutionProvider")
    assert "gpu" in machine.target_machine("CUDAExecutionProvider")


def test_a_target_the_graph_passes_alone_exceed_is_said_so(stub, monkeypatch):
    """Weights removed from the graph inputs can make a model faster than the target before any
    layer is factored: the run says that, not 'rerun on a quiet machine'."""
    calls = []
    fn = _measured_as(lambda goal: 8.0, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    steps = report.extras["latency"]["steps"]
    assert steps[0]["decomposed"] > 0 and steps[-1]["decomposed"] == 0  # the goal fell until nothing was factored
    assert report.totals.decomposed == 0  # as fast, and nothing lost to factoring
    (w,) = [w for w in report.warnings if "target-speedup" in w]
    assert "measured x8.00 with no layer factored" in w and "graph passes" in w


def test_allocations_on_either_side_with_no_step_between_are_named(stub, monkeypatch):
    """A goal between two measured allocations that builds one of them again: the layers offer
    nothing between; the run names both and keeps the one that reaches the target."""
    from wnc_onnx.rewrite import speed_target

    calls = []
    fn = _measured_as(lambda goal: 4.0 if goal > 1.0 else 1.0, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    lat = report.extras["latency"]
    assert len(calls) < speed_target.MAX_ALLOCATIONS and lat["measured"]["speedup"] == 4.0
    (w,) = [w for w in report.warnings if "--target-speedup" in w]
    assert "cannot be met within 10%" in w and "x1.00" in w and "x4.00" in w and "no step between" in w, w


def test_a_goal_that_changes_no_form_stops_the_loop_with_one_side_measured(stub, monkeypatch):
    """Every allocation short of the target, and a new goal that builds the same forms (a Silero
    VAD whose layers sit in If bodies the allocation does not move): one clear line, no crash."""
    calls = []
    fn = _measured_as(lambda goal: 1.1, calls)
    monkeypatch.setattr("wnc_onnx.rewrite.on_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.measure_whole", fn)
    monkeypatch.setattr("wnc_onnx.rewrite.speed_target.forms_of", lambda report: [])  # every build the same
    _, report = compress(demo_cnn(), target_speedup=1.5, threads=1)
    (w,) = [w for w in report.warnings if "--target-speedup" in w]
    assert "a new goal built the same forms again" in w and "kept x1.10" in w, w


def test_progress_is_one_line_per_layer_per_compression(stub, monkeypatch, caplog):
    """A rerun (a layer kept whole in context) shows only the layers whose outcome changed, and
    no layer's timings twice; the counts cover the whole compression."""
    import logging

    seen = []

    def profiled(original, result, report, cfg, threads):
        seen.append(1)
        return [{"layer": "conv3", "original_ms": 1.0, "compressed_ms": 1.2}] if len(seen) == 1 else []

    monkeypatch.setattr("wnc_onnx.rewrite.on_target.slower_in_context", profiled)
    with caplog.at_level(logging.INFO, logger="wnc_onnx"):
        _, report = compress(demo_cnn(), latency_aware=True, threads=1)
    assert len(seen) == 2  # the pass ran twice
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for layer in ("conv1", "conv2", "conv4", "fc1"):
        assert sum(f" {layer}  " in ln for ln in lines) == 1, layer  # its result line, once
        assert sum(f"] {layer}: " in ln for ln in lines) <= 1, layer  # its timings, at most once
    assert sum(" conv3  " in ln for ln in lines) == 2  # decomposed, then kept whole: both shown
    info = report.extras["latency"]
    assert info["timings_cached"] > 0 and info["timings_measured"] > 0  # both runs counted
