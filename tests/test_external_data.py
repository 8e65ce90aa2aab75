"""Models whose weights live in external data: read one layer at a time, written by streaming."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import wnc_onnx
from tests.helpers import random_feeds
from wnc_onnx.cli import main
from wnc_onnx.io import external_data
from wnc_onnx.io.model_io import load_model
from wnc_onnx.zoo import demo_cnn


def save_external(model: onnx.ModelProto, path, data_name: str | None = None) -> None:
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name or path.name + ".data",
        size_threshold=1024,
    )


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def outputs(path, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def ext_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = src / "model.onnx"
    save_external(demo_cnn(), path, "weights.bin")
    return path


def feeds_for(path):
    return random_feeds(onnx.load(str(path), load_external_data=False))


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_loading_leaves_weights_on_disk(ext_model):
    model = load_model(ext_model)
    tensors = [t for t in external_data.all_tensors(model) if external_data.is_external(t)]
    assert tensors, "the fixture should have external tensors"
    assert model.ByteSize() < 20_000  # the proto holds names and offsets, not weights
    for t in tensors:  # locations resolved to absolute paths that exist
        loc = external_data.ExternalDataInfo(t).location
        assert loc.startswith("/") and loc.endswith("weights.bin")
    # reading one tensor gives the same array onnx's own loader gives
    full = onnx.load(str(ext_model))
    ref = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    for t in tensors:
        np.testing.assert_array_equal(external_data.read_array(t), ref[t.name])


def test_compress_external_in_external_out(ext_model, tmp_path, capsys):
    before = digests(ext_model.parent)
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    rc, _, err = run_cli(capsys, ext_model, out, "--verify", "--report", tmp_path / "r.json", "-q")
    assert rc == 0, err
    assert (out.parent / "small.onnx.data").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.onnx", "small.onnx.data"]  # nothing staged left
    assert digests(ext_model.parent) == before  # input and its data untouched
    assert out.stat().st_size < 20_000
    onnx.checker.check_model(str(out), full_check=True)
    feeds = feeds_for(ext_model)
    got, ref = outputs(out, feeds), outputs(ext_model, feeds)
    assert all(np.isfinite(g).all() for g in got)
    rel = max(float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref, strict=True))
    assert rel < 0.5
    # offsets in the written data file are page-aligned
    written = onnx.load(str(out), load_external_data=False)
    for t in external_data.all_tensors(written):
        if external_data.is_external(t):
            info = external_data.ExternalDataInfo(t)
            assert info.location == "small.onnx.data" and (info.offset or 0) % external_data.ALIGN == 0


def test_full_rank_round_trip_is_exact(ext_model, tmp_path):
    ranks = {}
    for layer in wnc_onnx.inspect(str(ext_model)).layers:
        if layer.status == "planned" and layer.S and layer.T:
            full = {"tucker2": [layer.S, layer.T], "tucker1": layer.T, "svd": min(layer.S, layer.T)}
            ranks[layer.name] = full[layer.method]
    model, report = wnc_onnx.compress(str(ext_model), ranks=ranks, require_savings=False)
    assert report.totals.decomposed == len(ranks) > 0
    # new factors of external weights are parked on disk, not held in the proto
    assert model.ByteSize() < 40_000
    out = tmp_path / "full.onnx"
    wnc_onnx.save_model(model, out)
    feeds = feeds_for(ext_model)
    for g, r in zip(outputs(out, feeds), outputs(ext_model, feeds), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))


@pytest.mark.parametrize(("flag", "external"), [("--no-external-data", False), ("--external-data", True)])
def test_output_form_is_chosen_by_flag(flag, external, ext_model, tmp_path, capsys):
    inline_src = tmp_path / "inline.onnx"
    onnx.save(demo_cnn(), inline_src)
    src = inline_src if external else ext_model
    out = tmp_path / "o.onnx"
    rc, _, err = run_cli(capsys, src, out, flag, "-q")
    assert rc == 0, err
    assert (tmp_path / "o.onnx.data").exists() is external
    feeds = feeds_for(src)
    assert all(np.isfinite(g).all() for g in outputs(out, feeds))
    model = onnx.load(str(out), load_external_data=False)
    assert external_data.has_external(model) is external


def test_inline_input_stays_inline_by_default(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(demo_cnn(), src)
    rc, _, err = run_cli(capsys, src, tmp_path / "o.onnx", "-q")
    assert rc == 0, err
    assert not (tmp_path / "o.onnx.data").exists()


def test_api_accepts_a_proto_with_relative_external_data(ext_model, monkeypatch):
    proto = onnx.load(str(ext_model), load_external_data=False)
    snapshot = proto.SerializeToString()
    monkeypatch.chdir(ext_model.parent)
    model, report = wnc_onnx.compress(proto)
    assert report.totals.decomposed > 0
    assert proto.SerializeToString() == snapshot  # the caller's proto is untouched


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1, err
    assert lines[0].startswith("wnc-onnx: error:") and "fix:" in lines[0]
    return lines[0]


def test_missing_data_file(ext_model, tmp_path, capsys):
    (ext_model.parent / "weights.bin").unlink()
    rc, _, err = run_cli(capsys, ext_model, tmp_path / "o.onnx")
    assert rc == 2
    assert "weights.bin" in _one_error_line(err) and "missing" in err
    assert not list(tmp_path.glob("o.onnx*"))


def test_truncated_data_file(ext_model, tmp_path, capsys):
    data = ext_model.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[:1000])
    rc, _, err = run_cli(capsys, ext_model, tmp_path / "o.onnx")
    assert rc == 2
    assert "truncated" in _one_error_line(err)
    assert not list(tmp_path.glob("o.onnx*"))


def test_output_data_file_may_not_overwrite_the_inputs(tmp_path, capsys):
    path = tmp_path / "a.onnx"
    save_external(demo_cnn(), path, "b.onnx.data")
    before = digests(tmp_path)
    rc, _, err = run_cli(capsys, path, tmp_path / "b.onnx", "-q")
    assert rc == 2
    assert "holds the input's weights" in _one_error_line(err)
    assert digests(tmp_path) == before
