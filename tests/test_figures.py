"""The figures a user reads: MACs at the sizes given, totals that are totals, verify errors
that mean something, plots that stay readable, and results that do not depend on threads."""

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import conv_model
from wnc_onnx.check.verify import compare_output, verify
from wnc_onnx.cli import main
from wnc_onnx.errors import WncError
from wnc_onnx.zoo import demo_cnn, planted_kernel


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def dynamic_cnn(path=None):
    """Two planted convs on an input (N, 8, H, W): every MAC count needs --input-shape."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2", pads=[1] * 4),
    ]
    inits = [
        numpy_helper.from_array(planted_kernel(rng, 32, 8, (3, 3), 4, 6), "W1"),
        numpy_helper.from_array(planted_kernel(rng, 32, 32, (3, 3), 6, 6), "W2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, "height", "width"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        onnx.save(model, path)
    return model


# -- MACs on dynamic shapes ---------------------------------------------------------------


def test_input_shape_reaches_mac_counting():
    model = dynamic_cnn()
    _, unknown = wnc_onnx.compress(model)
    assert unknown.totals.macs_before is None and unknown.totals.macs_unknown_layers == 2
    _, known = wnc_onnx.compress(model, input_shapes={"x": (1, 8, 20, 30)})
    conv1 = known.layer("conv1")
    assert conv1.macs_before == 32 * 8 * 9 * 20 * 30
    assert known.totals.macs_before == sum(r.macs_before for r in known.layers)
    assert known.totals.macs_after == sum(r.macs_after for r in known.layers)
    assert known.config["input_shapes"] == {"x": [1, 8, 20, 30]}
    plan = wnc_onnx.inspect(model, input_shapes={"x": (1, 8, 20, 30)})
    assert plan.totals.macs_before == known.totals.macs_before


@pytest.mark.parametrize(
    "shapes,needle",
    [({"nope": (1, 8, 4, 4)}, "unknown input"), ({"x": (1, 8, 4)}, "has 3 dims, the input has 4")],
)
def test_bad_input_shapes_are_one_clear_error(shapes, needle):
    with pytest.raises(WncError, match=needle):
        wnc_onnx.compress(dynamic_cnn(), input_shapes=shapes)


def test_summary_names_the_flag_and_never_prints_a_partial_total(tmp_path, capsys):
    dynamic_cnn(tmp_path / "m.onnx")
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "m.onnx", "-q")
    summary = out.strip().splitlines()[-1]
    assert rc == 0 and "2 of 2 layers planned" in summary
    assert "MACs unknown" in summary and "--input-shape x=1,8,<height>,<width>" in summary
    assert "MACs 0" not in summary and "->" not in summary.split("MACs", 1)[1]
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "m.onnx", "-q", "--input-shape", "x=1,8,20,30", "--json")
    totals = json.loads(out)["totals"]
    assert totals["macs_before"] == 32 * 8 * 9 * 600 + 32 * 32 * 9 * 600 and totals["macs_unknown_layers"] == 0
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "m.onnx", "-q", "--json")
    totals = json.loads(out)["totals"]
    assert totals["macs_before"] is None and totals["macs_after"] is None  # null, as the README says


def test_partial_mac_figures_are_labelled_as_partial():
    """A model whose first layer has a static size and the second not (its input is
    reshaped to a shape given at run time)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("Reshape", ["h", "shape"], ["h4"], name="to_map"),
        helper.make_node("Conv", ["h4", "W2"], ["y"], name="conv", pads=[1] * 4),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 3)) @ rng.standard_normal((3, 64))).astype(np.float32), "W1"),
        numpy_helper.from_array(planted_kernel(rng, 32, 16, (3, 3), 4, 4), "W2"),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
                helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, "a", "b"])],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    report = wnc_onnx.inspect(model, min_rank=1)
    t = report.totals
    assert t.macs_before is None and t.macs_known_layers == 1 and t.macs_unknown_layers == 1
    line = report.to_table().splitlines()[-1]
    assert f"MACs unknown for {t.macs_unknown_layers} of 2 layers" in line and "the other 1:" in line


def test_inspect_totals_count_the_plan(tmp_path):
    """inspect printed 'weights 3.01M -> 3.01M' for dynamic-shape models: planned layers count."""
    model = dynamic_cnn()
    plan = wnc_onnx.inspect(model)
    done = wnc_onnx.compress(model)[1]
    assert plan.totals.planned == 2 and plan.totals.decomposed == 0
    assert plan.totals.params_after == done.totals.params_after < plan.totals.params_before
    assert "2 of 2 layers planned" in plan.to_table()


# -- verify figures -----------------------------------------------------------------------


def test_error_is_normalized_by_the_reference_rms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 100)).astype(np.float32)
    b = a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    d = compare_output("y", "float", a, b)
    assert d.norm == "rel to RMS" and d.error == pytest.approx(0.1, rel=0.05)
    assert d.top1_agreement is None  # "float": not class scores
    # a reference near zero everywhere on a bounded output (a detector's probability map on noise)
    tiny = np.full((1, 1, 8, 8), 3e-7, np.float32)
    d = compare_output("prob", "bounded", tiny, np.zeros_like(tiny))
    assert d.norm == "abs, bounded output" and d.error == pytest.approx(3e-7, rel=1e-3)
    d = compare_output("z", "float", np.zeros((3,), np.float32), np.full((3,), 0.5, np.float32))
    assert d.norm == "abs, reference is 0" and d.error == pytest.approx(0.5)


def test_top1_per_position_for_token_outputs():
    a = np.zeros((1, 3, 5), np.float32)
    a[0, :, 2] = 1.0  # every position picks class 2
    b = a.copy()
    b[0, 0, 4] = 2.0  # the first position now picks class 4
    d = compare_output("tokens", "class probabilities", a, b)
    assert d.top1_agreement == pytest.approx(2 / 3)


def test_top1_counts_ties_and_integer_outputs_compare_exactly():
    tied = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
    other = np.array([[0.0, 1.0 + 1e-9, 0.0], [0.0, 3.0, 1.0]], np.float32)  # picks the second of a tie
    assert compare_output("s", "class scores", tied, other).top1_agreement == 1.0
    disagree_on_first = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 1.0]], np.float32)
    assert compare_output("s", "class scores", tied, disagree_on_first).top1_agreement == 0.5
    idx = compare_output("i", "integer", np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    assert idx.error is None and idx.equal_fraction == 0.75 and idx.top1_agreement is None


def _head(op: str, classes: int = 10) -> onnx.ModelProto:
    """x (2, 16) -> Gemm -> [op] -> y: scores, probabilities, or a regression."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], name="fc")]
    if op == "exp/sum":  # a softmax written out, as jax2tf exports do
        nodes += [
            helper.make_node("Exp", ["g"], ["e"]),
            helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1),
            helper.make_node("Div", ["e", "s"], ["y"]),
        ]
    elif op != "none":
        nodes.append(helper.make_node(op, ["g"], ["y"], name="head"))
    out = "y" if op != "none" else "g"
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, classes])],
            [
                numpy_helper.from_array(rng.standard_normal((16, classes)).astype(np.float32), "W"),
                numpy_helper.from_array(np.array([-1], np.int64), "axes"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return model


@pytest.mark.parametrize(
    "op,classes,kind",
    [
        ("none", 10, "class scores"),  # logits of a 10-class classifier
        ("none", 3, "float"),  # (N, 3): a regression head (DNSMOS's three scores)
        ("Softmax", 3, "class probabilities"),
        ("exp/sum", 12, "class probabilities"),  # Magika writes its softmax out
        ("Sigmoid", 10, "bounded"),
        ("Relu", 10, "float"),
    ],
)
def test_output_kind_follows_the_op_that_made_it(op, classes, kind):
    model = _head(op, classes)
    result = verify(model, model)
    assert result.outputs[0].kind == kind
    assert (result.outputs[0].top1_agreement is not None) == kind.startswith("class")
    bounded = kind in ("bounded", "class probabilities")
    assert (result.outputs[0].norm == "abs, bounded output") == bounded


def test_input_values_fill_integer_and_scalar_inputs():
    """Silero's `sr` must be 16000: a random draw cannot serve it, --input-value can."""
    nodes = [
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "srf"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                helper.make_tensor_value_info("sr", TensorProto.INT64, []),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    result = verify(model, model, input_values={"sr": 16000})
    assert result.input_shapes["sr"] == [] and result.outputs[0].error == 0.0


def test_run_failures_suggest_only_what_can_help():
    # an integer input a random draw cannot serve (an index into a 4-row table: 0..3 is fine,
    # but a Gather whose table has 1 row fails): the hint names --input-value, not --input-shape
    nodes = [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("idx", TensorProto.INT64, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
            [numpy_helper.from_array(np.ones((1, 2), np.float32), "table")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(WncError) as err:
        verify(model, model, seed=5)
    assert "--input-value idx=" in str(err.value) and "--input-shape" not in str(err.value)


def test_an_op_onnxruntime_lacks_is_not_a_shape_problem():
    """An opset-6 model whose op onnxruntime has no kernel for: the hint is not --input-shape."""
    model = conv_model(4, 4, (3, 3), (6, 6))
    model.graph.node[0].op_type = "ConvNotAnOp"
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(WncError) as err:
        verify(model, model)
    assert "cannot load the original model" in str(err.value) and "--input-shape" not in str(err.value)


def test_large_error_gets_one_line_naming_the_layers(tmp_path, capsys):
    onnx.save(demo_cnn(), tmp_path / "d.onnx")
    (tmp_path / "ranks.json").write_text(json.dumps({"conv3": [2, 2]}))  # far below its planted ranks
    rc, _, err = run_cli(
        capsys,
        tmp_path / "d.onnx",
        tmp_path / "o.onnx",
        "--verify",
        "-q",
        "--ranks",
        tmp_path / "ranks.json",
        "--report",
        tmp_path / "r.json",
    )
    assert rc == 0
    verify_data = json.loads((tmp_path / "r.json").read_text())["extras"]["verify"]
    layers = verify_data["layers"]
    assert {r["name"] for r in layers} == {"conv1", "conv2", "conv3", "conv4", "fc1", "fc2"}
    assert all(r["error_out"] >= 0 and r["added"] == pytest.approx(r["error_out"] - r["error_in"]) for r in layers)
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert verify_data["large_error"] and len(warning) == 1
    assert "--exclude '^(" in warning[0] and "finetune" in warning[0] and "--rank-boost" in warning[0]
    assert max(layers, key=lambda r: r["added"])["name"] == "conv3"  # the layer cut hardest adds the most
    assert "conv3" in warning[0]
    # a small error gets no warning
    rc, _, err = run_cli(capsys, tmp_path / "d.onnx", tmp_path / "o2.onnx", "--verify", "-q", "--rank-boost", "0.5")
    assert rc == 0 and "warning:" not in err


# -- plots ---------------------------------------------------------------------------------


def _png_size(path):
    data = path.read_bytes()[:24]
    return struct.unpack(">II", data[16:24])


def test_ranks_plot_stays_readable_for_many_layers(tmp_path):
    """150 layers: the figure grows in height only, at a fixed width; rows stay >= 15 px."""
    from wnc_onnx.report import LayerReport, Report
    from wnc_onnx.report.plot import plot_report

    report = Report()
    for i in range(150):
        report.layers.append(
            LayerReport(
                f"block{i}/conv",
                "Conv",
                "decomposed",
                S=64,
                T=64,
                ranks={"R3": 16, "R4": 20},
                params_before=36864,
                params_after=9000,
                macs_before=None,
                macs_after=None,
            )
        )
    plot_report(report, tmp_path / "many.png")
    width, height = _png_size(tmp_path / "many.png")
    assert width <= 1600 and height / 150 >= 15


def _bars_under_legends(fig) -> list[str]:
    """Labels of legends that overlap a bar of their axes, once drawn."""
    from matplotlib.patches import Rectangle

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hits = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() and p.get_height()]
        hits += [t.get_text() for t in legend.get_texts() for b in bars if box.overlaps(b.get_window_extent(renderer))]
    return hits


@pytest.mark.parametrize("layers", [3, 40])
def test_plot_legends_cover_no_bar(layers):
    """The legends sat in the lower right, over the last layers' bars."""
    from wnc_onnx.bench.result import LayerComparison, LayerTime
    from wnc_onnx.report import LayerReport, Report
    from wnc_onnx.report.plot import layer_times_figure, pyplot, report_figure

    plt = pyplot()
    report = Report()
    for i in range(layers):
        report.layers.append(
            LayerReport(
                f"conv{i}",
                "Conv",
                "decomposed",
                S=64,
                T=512,
                ranks={"R3": 16, "R4": 500},
                params_before=9000,
                params_after=1000,
                macs_before=9000,
                macs_after=1000,
            )
        )
    comp = LayerComparison(baseline="a.onnx", model="b.onnx", threads=1, runs=3, unmapped=[])
    for i in range(layers):
        comp.layers.append(
            LayerTime(
                layer=f"conv{i}",
                op_type="Conv",
                before_ms=5.0,
                after_ms=4.9,
                macs_before=9,
                macs_after=1,
                parts=[["in_1x1", 1.0], ["core_3x3", 2.9], ["out_1x1", 1.0]],
            )
        )
    for fig in (report_figure(report, plt), layer_times_figure([comp], plt)):
        assert [ax.get_legend() is not None for ax in fig.axes].count(True) >= 1
        assert _bars_under_legends(fig) == []
        plt.close(fig)


# -- threads -------------------------------------------------------------------------------


def test_results_do_not_depend_on_threads():
    from tests.corpus import fetch

    path = fetch("ppocr_rec")
    one = wnc_onnx.inspect(str(path), threads=1)
    two = wnc_onnx.inspect(str(path), threads=2)
    assert [r.ranks for r in one.layers] == [r.ranks for r in two.layers]
    assert one.totals.params_after == two.totals.params_after
    assert one.config["threads_used"] == 1 and two.config["threads_used"] == 2


def test_input_shape_errors_name_the_data_inputs_only(tmp_path, capsys):
    """The demo's large weights become inputs of the weight-free view shape inference runs
    on; the message must list the model's own inputs, and a size the model refuses at
    --verify gets a hint about --input-shape, not about defaults."""
    onnx.save(demo_cnn(), tmp_path / "d.onnx")
    rc, _, err = run_cli(capsys, "inspect", tmp_path / "d.onnx", "--input-shape", "nope=1,2", "-q")
    assert rc == 2 and "the model's inputs are ['image']" in err
    rc, _, err = run_cli(
        capsys, tmp_path / "d.onnx", tmp_path / "o.onnx", "--verify", "--input-shape", "image=1,3,7,7", "-q"
    )
    assert rc == 2 and "check the sizes given with --input-shape" in err and err.count("\n") == 1


def argmax_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` ending in ArgMax: an integer class index out, the logits inside."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(onnx.helper.make_node("ArgMax", ["logits"], ["label"], name="argmax", axis=1, keepdims=0))
    del out.graph.output[:]
    out.graph.output.append(onnx.helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]))
    return out


def test_an_argmax_output_is_measured_at_the_scores_it_reads(tmp_path, capsys):
    """An integer output's element error means nothing (class indices): --verify measures the
    float tensor ArgMax reads, says so, and still gives the share of equal labels."""
    from wnc_onnx.check.verify import verify

    model = argmax_head(demo_cnn())
    small, _ = wnc_onnx.compress(model, ranks={"conv3": [4, 4]})
    result = verify(model, small, input_shapes={"image": [16, 3, 32, 32]})
    (out,) = result.outputs
    assert out.name == "label" and out.measured_at == "logits" and out.made_by == "ArgMax 'argmax'"
    assert out.error is not None and 0 < out.error < 1 and out.kind == "class scores"
    assert out.top1_agreement == pytest.approx(out.equal_fraction)  # the labels are the scores' argmax
    assert "measured at 'logits', which ArgMax 'argmax' turns into the output" in result.to_table()
