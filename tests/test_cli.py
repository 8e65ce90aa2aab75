"""The command line: options reach the code, bad input fails cleanly (one line, exit 2)."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.helpers import conv_model, rel_diff
from wnc_onnx.cli import main
from wnc_onnx.zoo import demo_cnn


@pytest.fixture
def demo(tmp_path):
    path = tmp_path / "demo.onnx"
    onnx.save(demo_cnn(), path)
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_python_dash_m_end_to_end(demo, tmp_path):
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    before = digest(demo)
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", str(demo), str(out), "--report", str(rep)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "decomposed" in proc.stdout and "[6/6]" in proc.stderr  # table on stdout, progress on stderr
    assert digest(demo) == before
    report = json.loads(rep.read_text())
    for layer in report["layers"]:
        for key in (
            "name",
            "op_type",
            "status",
            "ranks",
            "params_before",
            "params_after",
            "macs_before",
            "macs_after",
            "rel_error",
        ):
            assert key in layer
    assert report["totals"]["file_bytes_after"] == out.stat().st_size
    assert report["totals"]["decomposed"] == 6
    # planted ranks of the demo model are found by EVBMF
    assert report["layers"][1]["ranks"] == {"R3": 12, "R4": 20}
    small = onnx.load(out)
    onnx.checker.check_model(small, full_check=True)
    # errors compound through the 6 layers: bounded by their sum
    assert rel_diff(demo_cnn(), small) < sum(layer["rel_error"] for layer in report["layers"])


def test_inspect_writes_nothing(demo, tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "inspect", demo, "-q")
    assert rc == 0 and "planned" in out and "conv2" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx"]


def test_plot_and_json(demo, tmp_path, capsys):
    png = tmp_path / "ranks.png"
    rc, out, _ = run_cli(capsys, demo, tmp_path / "o.onnx", "--plot", png, "--json", "-q")
    assert rc == 0
    assert json.loads(out)["totals"]["decomposed"] == 6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_options_reach_the_pass(demo, tmp_path, capsys):
    def layers(*extra):
        rep = tmp_path / "r.json"
        rc, _, err = run_cli(capsys, "inspect", demo, "--report", rep, "-q", *extra)
        assert rc == 0, err
        return {r["name"]: r for r in json.loads(rep.read_text())["layers"]}

    base = layers()
    assert base["conv2"]["ranks"] == {"R3": 12, "R4": 20}
    assert layers("--rank-multiple", "16")["conv2"]["ranks"] == {"R3": 16, "R4": 32}
    assert layers("--min-rank", "16")["conv2"]["ranks"] == {"R3": 16, "R4": 20}
    boosted = layers("--rank-boost", "0.5")["conv2"]["ranks"]
    assert boosted == {"R3": 22, "R4": 42}  # halfway from (12, 20) to (32, 64)
    ex = layers("--exclude", "^fc")
    assert ex["fc1"]["status"] == "skipped" and "exclude" in ex["fc1"]["reason"]
    inc = layers("--include", "conv[12]")
    assert inc["conv2"]["status"] == "planned" and inc["conv3"]["status"] == "skipped"
    ops = layers("--op-types", "Gemm")
    assert ops["conv1"]["status"] == "skipped" and ops["fc2"]["status"] == "planned"
    assert layers("--no-fc-tucker")["fc1"]["method"] == "svd"
    assert layers("--tucker1-max-in", "64")["conv3"]["method"] == "tucker1"
    (tmp_path / "ranks.json").write_text(json.dumps({"conv3": [10, 11], "fc2": 5}))
    ranked = layers("--ranks", tmp_path / "ranks.json", "--exclude", "conv3")
    assert ranked["conv3"]["ranks"] == {"R3": 10, "R4": 11} and ranked["conv3"]["rank_source"] == "file"
    assert ranked["fc2"]["ranks"] == {"R": 5}

    def passes(*extra):
        rep = tmp_path / "p.json"
        rc, _, err = run_cli(capsys, demo, tmp_path / "o.onnx", "--report", rep, "-q", *extra)
        assert rc == 0, err
        return [p["name"] for p in json.loads(rep.read_text())["passes"]]

    assert passes() == ["name_nodes", "initializer_inputs", "fold_constants", "fold_batchnorm", "lowrank", "cleanup"]
    assert passes("--skip-pass", "cleanup", "--no-fold-bn", "--keep-initializer-inputs") == [
        "name_nodes",
        "fold_constants",
        "lowrank",
    ]


def test_no_saving_and_rank_zero_are_skipped_with_reason(tmp_path, capsys):
    noise = tmp_path / "noise.onnx"
    onnx.save(conv_model(16, 16, (3, 3), (8, 8)), noise)  # i.i.d. weights: EVBMF rank 0
    rc, out, err = run_cli(capsys, noise, tmp_path / "o.onnx")
    assert rc == 2 and "VBMF rank 0" in out and "no layer was compressed" in err
    assert not (tmp_path / "o.onnx").exists()
    # -q: only the one line, which names the reason and a fix that fits it
    rc, out, err = run_cli(capsys, noise, tmp_path / "o.onnx", "-q")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "VBMF rank 0" in err and "no layer was compressed" in err and "--ranks" in err
    (tmp_path / "r.json").write_text(json.dumps({"conv": [16, 16]}))
    rc, out, err = run_cli(capsys, noise, tmp_path / "o.onnx", "--ranks", tmp_path / "r.json", "-q")
    assert rc == 2 and out == "" and "no saving" in err and len(err.strip().splitlines()) == 1


def bad_cases(tmp_path, demo):
    data = demo.read_bytes()
    (tmp_path / "noise.bin").write_bytes(b"\x13\x37 definitely not a protobuf \xff\xfe" * 10)
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.onnx").write_bytes(b"")
    relu = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
        )
    )
    onnx.save(relu, tmp_path / "relu.onnx")
    (tmp_path / "ranks_unknown.json").write_text(json.dumps({"conv_nope": [2, 2]}))
    (tmp_path / "ranks_bad.json").write_text("{not json")
    (tmp_path / "ranks_big.json").write_text(json.dumps({"conv2": [999, 2]}))
    out = tmp_path / "out.onnx"
    return {
        "missing file": ([tmp_path / "nope.onnx", out], "not found"),
        "not onnx": ([tmp_path / "noise.bin", out], "not an ONNX model"),
        "truncated": ([tmp_path / "trunc.onnx", out], ""),
        "empty": ([tmp_path / "empty.onnx", out], "empty"),
        "nothing to compress": ([tmp_path / "relu.onnx", out], "nothing to compress"),
        "output is input": ([demo, demo], "is the input"),
        "unknown layer": ([demo, out, "--ranks", tmp_path / "ranks_unknown.json"], "conv_nope"),
        "bad ranks json": ([demo, out, "--ranks", tmp_path / "ranks_bad.json"], "not valid JSON"),
        "rank too big": ([demo, out, "--ranks", tmp_path / "ranks_big.json"], "outside 1..32"),
        "missing ranks file": ([demo, out, "--ranks", tmp_path / "none.json"], "not found"),
        "no output dir": ([demo, tmp_path / "no" / "dir" / "o.onnx"], "does not exist"),
        "bad regex": ([demo, out, "--include", "("], "invalid option"),
        "bad op type": ([demo, out, "--op-types", "Conv,LSTM"], "unsupported --op-types"),
        "unknown flag": ([demo, out, "--frobnicate"], "unrecognized arguments"),
        "bad boost": ([demo, out, "--rank-boost", "2"], "--rank-boost must be in"),
        "bad pass": ([demo, out, "--skip-pass", "lowrank"], "--skip-pass names"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not onnx",
        "truncated",
        "empty",
        "nothing to compress",
        "output is input",
        "unknown layer",
        "bad ranks json",
        "rank too big",
        "missing ranks file",
        "no output dir",
        "bad regex",
        "bad op type",
        "unknown flag",
        "bad boost",
        "bad pass",
    ],
)
def test_bad_input_one_line_exit_2_no_output(case, tmp_path, demo, capsys):
    args, needle = bad_cases(tmp_path, demo)[case]
    before = digest(demo)
    with pytest.raises(SystemExit) if case == "unknown flag" else _nullctx() as exc:
        rc, _, err = run_cli(capsys, *args)
    if case == "unknown flag":
        rc, err = exc.value.code, capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1, err
    assert lines[0].startswith("wnc-onnx: error:") and "fix:" in lines[0]
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()
    assert not list(tmp_path.glob(".out.onnx.*"))
    assert digest(demo) == before


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_bad_input_through_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01garbage" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", str(tmp_path / "junk.onnx"), str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_demo_command(tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "demo", tmp_path / "d")
    assert rc == 0 and "6 of 6 layers decomposed" in out
    assert (tmp_path / "d" / "demo_cnn.small.onnx").is_file() and (tmp_path / "d" / "report.json").is_file()


def test_verify_random_and_npz_inputs(demo, tmp_path, capsys):
    rep = tmp_path / "r.json"
    rc, _, err = run_cli(
        capsys, demo, tmp_path / "o.onnx", "--verify", "--report", rep, "-q", "--input-shape", "image=3,3,32,32"
    )
    assert rc == 0, err
    assert "verify (random inputs: image=3x3x32x32)" in err and "top-1 agreement" in err
    v = json.loads(rep.read_text())["extras"]["verify"]
    assert v["source"] == "random" and v["outputs"][0]["shape"] == [3, 10]
    assert 0 < v["worst_rel"] < 0.5 and v["outputs"][0]["finite"]
    npz = tmp_path / "x.npz"
    np.savez(npz, image=np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    rc, _, err = run_cli(capsys, demo, tmp_path / "o2.onnx", "--inputs", npz, "-q")
    assert rc == 0 and "verify (user inputs: image=2x3x32x32)" in err


def test_verify_tolerance_exceeded_exits_1_and_writes_nothing(demo, tmp_path, capsys):
    rc, _, err = run_cli(capsys, demo, tmp_path / "o.onnx", "--tolerance", "1e-6", "-q")
    assert rc == 1 and "exceeds --tolerance" in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()
    rc, _, _ = run_cli(capsys, demo, tmp_path / "o.onnx", "--tolerance", "0.9", "-q")
    assert rc == 0 and (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--input-shape", "image=1,x"], "is not NAME=D1,D2"),
        (["--input-shape", "nope=1,3,32,32", "--verify"], "unknown input"),
        (["--inputs", "missing.npz"], "inputs file not found"),
        (["--input-shape", "image=1,3,7,7", "--verify"], "cannot run the original model"),
    ],
)
def test_verify_bad_input(demo, tmp_path, capsys, args, needle):
    rc, _, err = run_cli(capsys, demo, tmp_path / "o.onnx", "-q", *args)
    assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists()
