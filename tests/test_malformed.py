"""Malformed models, tried systematically with hypothesis: every one ends in one line on
stderr and exit 2 (never a traceback, a hang or a partial output file), and the input is
never modified. Byte-level fuzzing of a valid model may also give a valid model: then
the run must succeed (exit 0) with a valid output, never fail as an internal error."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import with_output_shapes
from wnc_onnx.cli import main
from wnc_onnx.zoo import planted_kernel

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def small_cnn(c1: int, c2: int, classes: int, seed: int) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm; low-rank weights plus
    noise (the way trained ones look to EVBMF), so that a valid model does compress."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        if len(shape) == 1:
            return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        w = planted_kernel(rng, shape[0], shape[1], shape[2:], None if shape[1] == 3 else 3, 3)
        return numpy_helper.from_array(w.reshape(shape), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["h2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["h2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [init("w1", c1, 3, 3, 3), init("b1", c1), init("w2", c2, c1, 3, 3), init("wf", classes, c2)],
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


cnns = st.builds(
    small_cnn,
    c1=st.integers(8, 24),
    c2=st.integers(8, 24),
    classes=st.integers(2, 12),
    seed=st.integers(0, 2**16),
)


def run(src: Path, out: Path, *extra: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(src), str(out), "-q", *extra])
    return rc, err.getvalue()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def assert_clean_failure(folder: Path, src_name: str, needle: str | None = None, *extra: str) -> str:
    """Run the CLI on ``folder/src_name``; it must fail cleanly. Returns the error line."""
    out_dir = folder / "out"
    out_dir.mkdir(exist_ok=True)
    before = digest(folder)
    rc, err = run(folder / src_name, out_dir / "o.onnx", *extra)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("wnc-onnx: error:") and "; fix: " in lines[0], lines[0]
    assert "Traceback" not in err
    if needle is not None:
        assert needle in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []  # no output, no staged leftovers
    assert digest(folder) == before  # input (and its data) untouched
    return lines[0]


def save(model: onnx.ModelProto, folder: Path, name: str = "in.onnx") -> str:
    (folder / name).write_bytes(model.SerializeToString())
    return name


# -- bytes ---------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in.onnx").write_bytes(data)
        assert_clean_failure(folder, "in.onnx")


@FUZZ
@given(model=cnns, cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_protobuf(model, cut):
    data = model.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in.onnx").write_bytes(data[: int(cut * len(data))])
        assert_clean_failure(folder, "in.onnx")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(model=cnns, edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1))
def test_byte_fuzz_never_crashes(model, edits):
    """Corrupted bytes: either a clean one-line error or a valid compressed model."""
    data = bytearray(model.SerializeToString())
    for where, value in edits:
        data[int(where * len(data))] = value
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in.onnx").write_bytes(bytes(data))
        (folder / "out").mkdir()
        rc, err = run(folder / "in.onnx", folder / "out" / "o.onnx")
        assert "Traceback" not in err and "internal error" not in err, err
        if rc == 0:
            onnx.checker.check_model(str(folder / "out" / "o.onnx"))
        else:
            assert rc == 2, err
            assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
            assert list((folder / "out").iterdir()) == []


# -- structure -----------------------------------------------------------------------------


def _weighted_inputs(model: onnx.ModelProto) -> list[tuple[int, int]]:
    return [(i, j) for i, n in enumerate(model.graph.node) for j, name in enumerate(n.input) if name]


@FUZZ
@given(model=cnns, pick=st.data(), ghost=st.text("abcdefghij_", min_size=1, max_size=12))
def test_dangling_input(model, pick, ghost):
    i, j = pick.draw(st.sampled_from(_weighted_inputs(model)))
    model.graph.node[i].input[j] = f"ghost_{ghost}"
    with tempfile.TemporaryDirectory() as tmp:
        line = assert_clean_failure(Path(tmp), save(model, Path(tmp)), "fails the ONNX checker")
        assert f"ghost_{ghost}" in line


@FUZZ
@given(model=cnns, pick=st.data(), delta=st.integers(-64, 64).filter(bool))
def test_wrong_initializer_size(model, pick, delta):
    t = pick.draw(st.sampled_from(list(model.graph.initializer)))
    raw = t.raw_data
    t.raw_data = raw[:delta] if delta < 0 else raw + b"\0" * delta
    with tempfile.TemporaryDirectory() as tmp:
        line = assert_clean_failure(Path(tmp), save(model, Path(tmp)), t.name)
        assert "bytes" in line


@FUZZ
@given(model=cnns, pick=st.data(), name=st.from_regex(r"[A-Z][a-z]{3,10}Op", fullmatch=True))
def test_unknown_op(model, pick, name):
    node = pick.draw(st.sampled_from(list(model.graph.node)))
    node.op_type = name
    with tempfile.TemporaryDirectory() as tmp:
        line = assert_clean_failure(Path(tmp), save(model, Path(tmp)), "fails the ONNX checker")
        assert name in line


@FUZZ
@given(model=cnns, pick=st.data())
def test_cycle(model, pick):
    n = len(model.graph.node)
    i = pick.draw(st.integers(0, n - 2))
    j = pick.draw(st.integers(i + 1, n - 1))
    model.graph.node[i].input[0] = model.graph.node[j].output[0]  # i now reads what j (after i) makes
    with tempfile.TemporaryDirectory() as tmp:
        assert_clean_failure(Path(tmp), save(model, Path(tmp)), "fails the ONNX checker")


@FUZZ
@given(model=cnns, how=st.sampled_from(["deleted", "renamed", "truncated", "offset"]))
def test_broken_external_data(model, how):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx.save_model(
            model, str(folder / "in.onnx"), save_as_external_data=True, location="in.data", size_threshold=0
        )
        data = folder / "in.data"
        if how == "deleted":
            data.unlink()
        elif how == "renamed":
            data.rename(folder / "other.data")
        elif how == "truncated":
            data.write_bytes(data.read_bytes()[:-5])
        else:  # an entry pointing past the end of the file
            m = onnx.load(str(folder / "in.onnx"), load_external_data=False)
            entry = next(e for e in m.graph.initializer[-1].external_data if e.key == "offset")
            entry.value = str(int(entry.value) + 10**6)
            (folder / "in.onnx").write_bytes(m.SerializeToString())
        needle = "missing" if how in ("deleted", "renamed") else "truncated"
        assert_clean_failure(folder, "in.onnx", needle)


# -- output location -----------------------------------------------------------------------


def test_unwritable_output_directory(tmp_path):
    src = tmp_path / save(small_cnn(24, 24, 10, 0), tmp_path)
    before = src.read_bytes()
    assert run(src, tmp_path / "ok.onnx")[0] == 0  # the model itself compresses
    # /proc refuses new files even for root; a read-only directory also does for other users
    targets = [Path("/proc/wnc-onnx-out.onnx")]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        targets.append(ro / "o.onnx")
    for out in targets:
        rc, err = run(src, out)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and "; fix: " in lines[0], err
        assert "writ" in lines[0]
        assert not out.exists()
    assert src.read_bytes() == before


def test_output_parent_is_a_file(tmp_path):
    src = tmp_path / save(small_cnn(12, 12, 4, 0), tmp_path)
    (tmp_path / "afile").write_text("x")
    rc, err = run(src, tmp_path / "afile" / "o.onnx")
    assert rc == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


# -- the real command: separate process, bounded time ---------------------------------------


@pytest.mark.parametrize("case", ["dangling", "cycle", "unknown op", "bad size", "no data file"])
def test_cli_process_fails_fast_with_one_line(case, tmp_path):
    model = small_cnn(12, 12, 4, 1)
    if case == "dangling":
        model.graph.node[2].input[0] = "nowhere"
    elif case == "cycle":
        model.graph.node[0].input[0] = "y"
    elif case == "unknown op":
        model.graph.node[1].op_type = "Frobnicate"
    elif case == "bad size":
        model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    src = tmp_path / "in.onnx"
    if case == "no data file":
        onnx.save_model(model, str(src), save_as_external_data=True, location="w.data", size_threshold=0)
        (tmp_path / "w.data").unlink()
    else:
        src.write_bytes(model.SerializeToString())
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", str(src), str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a speed target
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("wnc-onnx: error:"), proc.stderr
    assert not list(tmp_path.glob("o.onnx*")) and not list(tmp_path.glob(".o.onnx*"))
