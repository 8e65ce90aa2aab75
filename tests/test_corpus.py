"""Real-world exports through the CLI: they compress (valid, runnable, finite, exact at full
rank) or exit with one clear line; a traceback is a bug."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import wnc_onnx
from tests.corpus import CORPUS, fetch, verify_inputs
from tests.helpers import session
from wnc_onnx.check.verify import verify
from wnc_onnx.data.feeds import random_inputs
from wnc_onnx.rewrite.pipeline import count_params


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
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr  # every corpus model compresses
    small = onnx.load(out)
    onnx.checker.check_model(small, full_check=True)
    report = json.loads(rep.read_text())
    assert report["totals"]["decomposed"] > 0
    assert report["totals"]["params_after"] < report["totals"]["params_before"]
    assert all(o["finite"] for o in report["extras"]["verify"]["outputs"])
    feeds = verify_inputs(model_id) or random_inputs(small, seed=1)
    assert all(np.all(np.isfinite(o)) for o in session(small).run(None, feeds))
    # inputs and outputs are unchanged (weights that old exports also listed as inputs are not inputs)
    original = onnx.load(path)
    weights = {t.name for t in original.graph.initializer}
    assert [i.name for i in small.graph.input] == [i.name for i in original.graph.input if i.name not in weights]
    assert [o.name for o in small.graph.output] == [o.name for o in original.graph.output]
    # the verify figures are there for every output, and the summary never states a partial MAC total
    assert len(report["extras"]["verify"]["outputs"]) == len(original.graph.output)
    totals = report["totals"]
    assert (totals["macs_before"] is None) == (totals["macs_unknown_layers"] > 0)


def test_old_export_with_weights_as_inputs_is_compressed(tmp_path):
    """CenterFace lists all 194 weights as graph inputs too: they are dropped from the inputs
    (with a note) and the layers compressed; --keep-initializer-inputs keeps the old interface,
    and then the refusal names that flag as the fix."""
    path = fetch("centerface")
    small, report = wnc_onnx.compress(str(path))
    assert report.totals.decomposed >= 30
    assert [i.name for i in small.graph.input] == ["input.1"]
    assert any("also listed as graph inputs" in w for w in report.warnings)
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", str(path), str(tmp_path / "o.onnx"), "-q", "--keep-initializer-inputs"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert "graph input" in proc.stderr and "drop --keep-initializer-inputs" in proc.stderr


def test_subgraph_layers_reading_outer_weights_are_compressed():
    """openWakeWord's head runs Gemms in an If branch on weights of the main graph."""
    path = fetch("oww_hey_jarvis")
    small, report = wnc_onnx.compress(str(path))
    inner = [r for r in report.layers if r.name.startswith("If_32/then_branch/")]
    assert inner and any(r.status == "decomposed" for r in inner)
    assert not any("not a constant" in r.reason for r in inner)
    # at full rank the branch computes the same function (random inputs never take it: force it)
    full, _ = wnc_onnx.compress(str(path), rank_boost=1.0, require_savings=False)

    def forced(model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        node = next(n for n in model.graph.node if n.op_type == "If")
        model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["force_then"], value_int=1))
        model.graph.node.insert(1, onnx.helper.make_node("Cast", ["force_then"], ["force_cond"], to=9))
        node.input[0] = "force_cond"
        return model

    original = onnx.load(path)
    if_node = next(n for n in full.graph.node if n.op_type == "If")
    then_branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert sum(n.name.startswith("If_32/then_branch/Gemm_34/wnc/") for n in then_branch.node) >= 2
    feeds = random_inputs(original, seed=3)
    for a, b in zip(session(forced(original)).run(None, feeds), session(forced(full)).run(None, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_full_rank_round_trip_is_exact(real_model):
    model_id, path = real_model
    small, report = wnc_onnx.compress(str(path), rank_boost=1.0, require_savings=False)
    assert report.totals.decomposed > 0  # every corpus model holds layers to rewrite
    result = verify(onnx.load(path), small, inputs=verify_inputs(model_id))
    for o in result.outputs:
        ref_max = max(abs(o.ref_range[0]), abs(o.ref_range[1]))
        assert o.max_abs <= 1e-4 * max(ref_max, 1.0), (model_id, o)


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet", "light_inception_v1", "light_densenet121"])
def test_onnx_light_models_with_constant_weights(name, tmp_path):
    """The onnx package's light_* models compute every weight with ConstantOfShape (a
    constant fill): folded, every layer is exactly rank 1, and the outputs do not move."""
    path = LIGHT / f"{name}.onnx"
    small, report = wnc_onnx.compress(str(path))
    decomposed = report.decomposed
    assert decomposed and all(set(r.vbmf_ranks.values()) == {1} for r in decomposed)
    stored = count_params(onnx.load(path))  # the shapes the fills are made from
    assert report.totals.params_before > 100 * stored  # the folded weights count, not the shapes
    result = verify(str(path), small)
    assert all(o.error is not None and o.error < 1e-3 for o in result.outputs), result.to_table()
