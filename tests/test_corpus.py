"""Real-world exports through the CLI: they compress (valid, runnable, finite, exact at full
rank) or exit with one clear line; a traceback is a bug."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import wnc_onnx
from tests.corpus import CORPUS, fetch, verify_inputs
from tests.helpers import session
from wnc_onnx.verify import random_inputs, verify


@pytest.fixture(scope="module", params=sorted(CORPUS))
def real_model(request):
    return request.param, fetch(request.param)


def test_default_cli_with_verify(real_model, tmp_path):
    model_id, path = real_model
    out, rep = tmp_path / "small.onnx", tmp_path / "report.json"
    args = [sys.executable, "-m", "wnc_onnx", str(path), str(out), "--verify", "--report", str(rep), "-q"]
    feeds = verify_inputs(model_id)
    if feeds is not None:
        np.savez(tmp_path / "inputs.npz", **feeds)
        args += ["--inputs", str(tmp_path / "inputs.npz")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("wnc-onnx: error:") and "fix:" in lines[0], proc.stderr
        assert not out.exists()
        return
    small = onnx.load(out)
    onnx.checker.check_model(small, full_check=True)
    report = json.loads(rep.read_text())
    assert report["totals"]["decomposed"] > 0
    assert report["totals"]["params_after"] < report["totals"]["params_before"]
    assert all(o["finite"] for o in report["extras"]["verify"]["outputs"])
    feeds = verify_inputs(model_id) or random_inputs(small, seed=1)
    assert all(np.all(np.isfinite(o)) for o in session(small).run(None, feeds))
    # inputs and outputs are unchanged
    original = onnx.load(path)
    assert [i.name for i in small.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in small.graph.output] == [o.name for o in original.graph.output]


def test_full_rank_round_trip_is_exact(real_model):
    model_id, path = real_model
    try:
        small, report = wnc_onnx.compress(str(path), rank_boost=1.0, require_savings=False)
    except wnc_onnx.WncError as exc:
        assert "nothing to compress" in str(exc), exc
        return
    assert report.totals.decomposed > 0
    result = verify(onnx.load(path), small, inputs=verify_inputs(model_id))
    for o in result.outputs:
        ref_max = max(abs(o.ref_range[0]), abs(o.ref_range[1]))
        assert o.max_abs <= 1e-4 * max(ref_max, 1.0), (model_id, o)
