"""Defects found by trying wnc-onnx as a new user would (issue 9, part 4): one test each."""

import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from tests.helpers import session
from wnc_onnx.cli import main
from wnc_onnx.rewrite.passes import gs_tools
from wnc_onnx.zoo import demo_cnn, planted_kernel

FULL = {"rank_boost": 1.0, "require_savings": False}


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def conv_bn(ir_version: int, opset: int, extra_inputs=(), unused=False) -> onnx.ModelProto:
    """x -> Conv(planted W) -> BatchNormalization -> y; IR < 4 lists initializers as inputs."""
    rng = np.random.default_rng(0)
    values = {
        "W": planted_kernel(rng, 24, 16, (3, 3), 6, 6),
        "s": 1 + 0.3 * rng.random(24),
        "b": 0.1 * rng.standard_normal(24),
        "m": 0.1 * rng.standard_normal(24),
        "v": 1 + rng.random(24),
    }
    if unused:
        values["unused"] = rng.standard_normal(5)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in values.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])]
    listed = [t for t in inits if ir_version < 4 or t.name in extra_inputs]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in listed]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 8, 8])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def outputs_match(original: onnx.ModelProto, small: onnx.ModelProto, tol: float = 1e-4) -> None:
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)}
    for a, b in zip(session(original).run(None, feeds), session(small).run(None, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(a).max()))


def test_ir3_conv_with_batchnorm_compresses():
    """The folded bias was not listed among the inputs of an IR 3 graph: exit 3 at the checker."""
    model = conv_bn(ir_version=3, opset=8)
    small, report = wnc_onnx.compress(model, **FULL)
    assert report.layer("conv").status == "decomposed"
    onnx.checker.check_model(small, full_check=True)
    inits = {t.name for t in small.graph.initializer}
    assert inits <= {i.name for i in small.graph.input}  # IR 3: every initializer is an input
    outputs_match(model, small)


@pytest.mark.parametrize("ir_version,opset", [(3, 8), (7, 13)])
@pytest.mark.parametrize("keep", [False, True])
def test_unused_initializer_that_is_an_input_never_becomes_a_required_input(ir_version, opset, keep):
    """Cleanup removed such an initializer but kept the input: a new required input."""
    model = conv_bn(ir_version, opset, extra_inputs=("unused",), unused=True)
    skip = ("initializer_inputs",) if keep else ()
    small, _ = wnc_onnx.compress(model, skip_passes=skip, **FULL)
    inits = {t.name for t in small.graph.initializer}
    required = [i.name for i in small.graph.input if i.name not in inits]
    assert required == ["x"]
    if keep and ir_version >= 4:  # the interface stays: input and its default both
        assert "unused" in inits and "unused" in {i.name for i in small.graph.input}
    outputs_match(model, small)


def sliced_shape_model(weight_from: str) -> onnx.ModelProto:
    """A conv whose weight is computed (Mul: needs folding; Cast: read directly), and a
    Reshape target built from Shape(x, start=0, end=2), which graphsurgeon folded as the
    whole shape (it ignores start / end): the run ended in exit 3 at the final checker."""
    rng = np.random.default_rng(0)
    w = planted_kernel(rng, 32, 16, (3, 3), 6, 6)
    if weight_from == "mul":
        inits = [numpy_helper.from_array(w / 2, "Wh"), numpy_helper.from_array(np.float32(2), "two")]
        make_w = helper.make_node("Mul", ["Wh", "two"], ["W"], name="make_w")
    else:
        inits = [numpy_helper.from_array(w.astype(np.float16), "Wh")]
        make_w = helper.make_node("Cast", ["Wh"], ["W"], to=TensorProto.FLOAT, name="make_w")
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus1"))
    nodes = [
        make_w,
        helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["x"], ["s"], start=0, end=2, name="shape"),
        helper.make_node("Concat", ["s", "minus1"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["y", "target"], ["z"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 128])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("weight_from", ["mul", "cast"])
@pytest.mark.parametrize("skip", [(), ("fold_constants",)])
def test_constant_folding_touches_only_weights(weight_from, skip):
    model = sliced_shape_model(weight_from)
    small, report = wnc_onnx.compress(model, skip_passes=skip, **FULL)
    onnx.checker.check_model(small, full_check=True)
    shape = next(n for n in small.graph.node if n.op_type == "Shape")
    assert {a.name: a.i for a in shape.attribute} == {"start": 0, "end": 2}
    if weight_from == "cast" or not skip:  # a Cast weight compresses even without the folding pass
        assert report.layer("conv").status == "decomposed"
    outputs_match(model, small, 1e-2 if weight_from == "cast" else 1e-4)  # cast: factors are stored in fp16


def test_a_fold_that_breaks_the_graph_falls_back(monkeypatch):
    """Whatever graphsurgeon returns must pass the strict checker, or the run goes on unfolded."""
    model = sliced_shape_model("mul")
    real = gs_tools.roundtrip

    def breaking(m, work):
        out = real(m, work)
        out.graph.node[-1].input[1] = "s"  # Reshape to a 2-element shape: strict inference fails
        return out

    monkeypatch.setattr(gs_tools, "roundtrip", breaking)
    small, report = wnc_onnx.compress(model, **FULL)
    entry = next(p for p in report.passes if p["name"] == "fold_constants")
    assert entry["status"].startswith("failed: the folded graph fails the ONNX checker")
    onnx.checker.check_model(small, full_check=True)
    outputs_match(model, small)


@pytest.mark.parametrize("sub", ["inspect", "compress"])
def test_a_closed_pipe_ends_quietly(tmp_path, sub):
    """`wnc-onnx inspect --json | head -c100` ended in exit 3 (BrokenPipeError)."""
    onnx.save(demo_cnn(), tmp_path / "d.onnx")
    args = [sys.executable, "-m", "wnc_onnx", sub, str(tmp_path / "d.onnx")]
    args += [str(tmp_path / "o.onnx")] if sub == "compress" else []
    proc = subprocess.Popen([*args, "--json", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
    if sub == "compress":
        onnx.checker.check_model(onnx.load(tmp_path / "o.onnx"))


def test_demo_into_a_file_and_debug_flag(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    rc, _, err = run_cli(capsys, "demo", target, "--debug")
    assert rc == 2 and err.count("\n") == 1 and "is a file" in err and "fix:" in err
    assert target.read_text() == "x"


@pytest.mark.parametrize("typo,guess", [("compres", "compress"), ("inpsect", "inspect"), ("zzz", None)])
def test_a_subcommand_typo_names_the_subcommands(typo, guess, capsys):
    rc, out, err = run_cli(capsys, typo, "a.onnx", "b.onnx")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "compress, inspect, finetune, bench, demo" in err
    assert (f"did you mean '{guess}'" in err) if guess else ("did you mean" not in err)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, capsys, mask):
    onnx.save(demo_cnn(), tmp_path / "d.onnx")
    old = os.umask(mask)
    try:
        rc, _, err = run_cli(
            capsys, tmp_path / "d.onnx", tmp_path / "o.onnx", "--report", tmp_path / "r.json", "--plot",
            tmp_path / "p.png", "-q",
        )  # fmt: skip
    finally:
        os.umask(old)
    assert rc == 0, err
    for name in ("o.onnx", "r.json", "p.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_help_is_for_users(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and "subcommands:" in out and "thin layer" not in out and "``" not in out
    for sub in ("compress", "inspect", "finetune", "demo"):
        with pytest.raises(SystemExit) as done:
            main([sub, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: False)" not in flat and "(default: [])" not in flat
        assert not re.search(r"\(default: [^)]*\) \(default:", flat), sub
        if sub == "finetune":
            for flag in ("--epochs", "--batch-size", "--loss"):
                line = flat.split(flag, 2)[2] if flat.count(flag) > 1 else flat.split(flag, 1)[1]
                assert line.split("--")[0].strip().split(" ", 1)[1].strip(), flag  # help text after the metavar
        if sub == "demo":
            assert "default: wnc-demo" in flat


def test_training_install_message_names_torch_first():
    from wnc_onnx.finetune.backends.ort.runtime import INSTALL

    assert INSTALL.index("torch==2.13.0") < INSTALL.index("'.[train]'")


def test_a_folding_failure_is_one_short_note(monkeypatch, capsys, tmp_path):
    """Silero's note came twice (a log line and a table note) at ~300 characters."""

    def broken(model, work):
        raise RuntimeError("graph is broken:\n" + "node X must be topologically sorted; " * 20)

    monkeypatch.setattr(gs_tools, "roundtrip", broken)
    onnx.save(sliced_shape_model("mul"), tmp_path / "m.onnx")
    rc, out, err = run_cli(capsys, tmp_path / "m.onnx", tmp_path / "o.onnx", "--ranks", _ranks(tmp_path))
    text = out + err
    lines = [ln for ln in text.splitlines() if "fold_constants" in ln]
    assert len(lines) == 1 and len(lines[0]) <= 200, lines


def _ranks(tmp_path):
    path = tmp_path / "ranks.json"
    path.write_text(json.dumps({"conv": 4}))
    return path


def test_progress_columns_line_up_whatever_the_names(tmp_path):
    rng = np.random.default_rng(0)
    names = ["c0", "a_very_long_layer_name_that_an_exporter_made_up/with/a/path/Conv"]
    w1, w2 = planted_kernel(rng, 16, 16, (3, 3), 4, 4), planted_kernel(rng, 16, 16, (3, 3), 4, 4)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h"], name=names[0], pads=[1] * 4),
        helper.make_node("Conv", ["h", "W2"], ["y"], name=names[1], pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", "inspect", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert len(progress) == 2
    starts = {ln.index(f" {name} ") for ln, name in zip(progress, names, strict=True)}
    assert len(starts) == 1  # the names start in the same column


# -- found by reviewing the change ------------------------------------------------------------


def _mm_model(nodes, inits, outputs=("y",)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 256]) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _low_rank(rank=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((256, rank)) @ rng.standard_normal((rank, 256))


def _rel_rms(a_model, b_model):
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    a, b = session(a_model).run(None, {"x": x})[0], session(b_model).run(None, {"x": x})[0]
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(a**2)))


def test_a_broken_rewrite_is_a_bug_also_for_a_path_input(tmp_path, monkeypatch):
    """The passes rewrite a loaded model in place: the strict check of the input must be
    judged before they run, or a broken output passes as 'the input fails it too'."""
    from wnc_onnx.rewrite.passes.lowrank import LowRankPass

    real = LowRankPass.__call__

    def breaking(self, model, report, *, in_place=False):
        result = real(self, model, report, in_place=in_place)
        g = result.model.graph
        g.initializer.append(numpy_helper.from_array(np.ones((5, 3), np.float32), "bad"))
        g.node.append(helper.make_node("MatMul", [g.node[0].output[0], "bad"], ["bad_out"], name="bad_mm"))
        return result

    monkeypatch.setattr(LowRankPass, "__call__", breaking)
    onnx.save(demo_cnn(), tmp_path / "d.onnx")
    for source in (demo_cnn(), str(tmp_path / "d.onnx")):
        with pytest.raises(RuntimeError, match="fails the ONNX checker"):
            wnc_onnx.compress(source, skip_passes=("cleanup",))


def test_integer_weights_behind_a_cast_are_factored_in_float():
    w = np.clip(np.round(_low_rank(4) * 10), -127, 127).astype(np.int8)
    nodes = [
        helper.make_node("Cast", ["W"], ["Wf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "Wf"], ["y"], name="mm"),
    ]
    model = _mm_model(nodes, [numpy_helper.from_array(w, "W")])
    small, report = wnc_onnx.compress(model, require_savings=False)
    assert report.layer("mm").status == "decomposed"
    assert all(t.data_type == TensorProto.FLOAT for t in small.graph.initializer if "/wnc/" in t.name)
    assert _rel_rms(model, small) < 2 * report.layer("mm").rel_error + 1e-3  # not truncated to int8


def test_a_weight_computed_through_a_transpose_is_folded():
    """W -> Transpose -> Mul(s) -> MatMul: the Transpose must be folded with the Mul."""
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], name="tr", perm=[1, 0]),
        helper.make_node("Mul", ["Wt", "s"], ["Ws"], name="scale"),
        helper.make_node("MatMul", ["x", "Ws"], ["y"], name="mm"),
    ]
    inits = [
        numpy_helper.from_array(_low_rank().astype(np.float32), "W"),
        numpy_helper.from_array(np.float32(0.5), "s"),
    ]
    model = _mm_model(nodes, inits)
    small, report = wnc_onnx.compress(model)
    entry = next(p for p in report.passes if p["name"] == "fold_constants")
    assert entry["status"] == "folded" and report.layer("mm").status == "decomposed"
    assert _rel_rms(model, small) < 1e-3


def test_a_weight_shared_through_a_transpose_is_not_rewritten():
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], name="tr", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "Wt"], ["y1"], name="mm1"),
        helper.make_node("MatMul", ["x", "W"], ["y2"], name="mm2"),
    ]
    model = _mm_model(nodes, [numpy_helper.from_array(_low_rank().astype(np.float32), "W")], ("y1", "y2"))
    small, report = wnc_onnx.compress(model)
    assert report.totals.decomposed == 0 and all("shared by 2 nodes" in r.reason for r in report.layers)
    assert report.totals.params_after == report.totals.params_before  # the model did not grow


def test_an_input_rewritten_in_place_is_not_copied_from(tmp_path):
    """The copying writer must notice a changed input even with its mtime put back."""
    import os

    from tests.test_wire import big_model
    from wnc_onnx.io.model_io import load_model_and_source, staged_model

    path = tmp_path / "m.onnx"
    onnx.save(big_model(), path)
    model, source = load_model_and_source(path)
    st = os.stat(path)
    span = source.spans["M"]
    with open(path, "r+b") as fh:
        fh.seek(span.start + span.length - 4096)
        fh.write(b"\xff" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with staged_model(model, tmp_path / "o.onnx", source=source):
        pass
    assert onnx.load(tmp_path / "o.onnx") == model


def test_unknown_fields_survive_the_copying_writer(tmp_path):
    from tests.test_wire import big_model
    from wnc_onnx.io import wire
    from wnc_onnx.io.model_io import load_model_and_source, staged_model

    path = tmp_path / "m.onnx"
    path.write_bytes(big_model().SerializeToString() + wire._key(99, 0) + wire._encode_varint(7))
    model, source = load_model_and_source(path)
    assert wire.has_unknown_fields(model)
    with staged_model(model, tmp_path / "o.onnx", source=source):
        pass
    assert (tmp_path / "o.onnx").read_bytes() == model.SerializeToString()  # the plain path, which keeps them


def test_compress_says_what_it_wrote(tmp_path, capsys):
    """`compress` printed no 'wrote ...' line (demo and finetune do): one line on stderr names
    every file it wrote, the table alone stays on stdout."""
    src, out, rep = tmp_path / "d.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(demo_cnn(), src)
    assert main([str(src), str(out), "--report", str(rep), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"wrote {out}, {rep}"]
    assert "layers decomposed" in captured.out and "wrote" not in captured.out
    assert main([str(src), str(tmp_path / "e.onnx"), "--external-data", "-q", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"wrote {tmp_path / 'e.onnx'}, {tmp_path / 'e.onnx.data'}"
    assert json.loads(captured.out)["model"]["output_data"] == str(tmp_path / "e.onnx.data")


def test_a_bad_config_value_names_the_flag_and_the_help_that_lists_it(tmp_path, capsys):
    """`--target-speedup 0` named the Python field (target_speedup) and pointed to
    'wnc-onnx --help', which does not list compress options."""
    src = tmp_path / "d.onnx"
    onnx.save(demo_cnn(), src)
    for flag, value in (("--target-speedup", "0"), ("--min-rank", "-1"), ("--pq-k", "999")):
        assert main([str(src), str(tmp_path / "o.onnx"), flag, value, "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"wnc-onnx: error: invalid option: {flag} must be"), err
        assert err.endswith("fix: see 'wnc-onnx compress --help'") and "_" not in err.split("fix:")[0], err
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    assert "--target-speedup" in capsys.readouterr().out


def test_compress_checks_the_outputs_by_default_and_names_the_next_command(tmp_path, capsys):
    """A plain compress printed no warning for a broken model (the warning came with --verify
    only): it checks on random inputs by default and says how to recover, with the command."""
    src, out, rep = tmp_path / "d.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(demo_cnn(), src)
    (tmp_path / "ranks.json").write_text(json.dumps({"conv3": [2, 2]}))
    assert main([str(src), str(out), "-q", "--ranks", str(tmp_path / "ranks.json"), "--report", str(rep)]) == 0
    err = capsys.readouterr().err
    assert "verify (random inputs" in err and "warning: the compressed model's outputs differ a lot" in err
    assert f"wnc-onnx finetune {out} {tmp_path / 'o.tuned.onnx'} --teacher {src} --train INPUTS.npz" in err
    assert json.loads(rep.read_text())["extras"]["verify"]["large_error"] is True
    assert main([str(src), str(tmp_path / "n.onnx"), "-q", "--no-verify", "--report", str(rep)]) == 0
    assert "verify" not in json.loads(rep.read_text())["extras"] and "warning" not in capsys.readouterr().err


def test_a_model_the_default_check_cannot_run_is_written_with_a_note(tmp_path, capsys):
    """Default random inputs cannot run every model (here a length only 48 fits): without --verify
    that is a note and the model is written; with --verify it is the one-line error it was."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 4)) @ rng.standard_normal((4, 48))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
            helper.make_node("MatMul", ["r", "w"], ["y"], name="fc"),
        ],  # fmt: skip
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 48]), "shape")],
    )
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert main([str(src), str(out), "-q"]) == 0 and out.is_file()
    captured = capsys.readouterr()
    assert "note: the outputs were not checked (onnxruntime cannot run the original model" in captured.out
    assert "--input-shape x=" in captured.out
    assert main([str(src), str(tmp_path / "v.onnx"), "-q", "--verify"]) == 2
    assert "cannot run the original model" in capsys.readouterr().err and not (tmp_path / "v.onnx").exists()
    assert main([str(src), str(tmp_path / "c.onnx"), "-q", "--verify", "--no-verify"]) == 2
    assert "contradict" in capsys.readouterr().err
