"""`finetune --pq-lambda`: compression-aware training, then the product-quantized export
(runs in the training environment, .ci/run stage 2)."""

import json
import os

import numpy as np
import onnx
import pytest

if os.environ.get("WNC_REQUIRE_TRAINING") == "1":
    import onnxruntime.training.api  # noqa: F401
else:
    pytest.importorskip("onnxruntime.training.api", reason="needs the training environment (.ci/run stage 2)")

from tests.helpers import labelled_images, run, small_classifier  # noqa: E402
from wnc_onnx.cli import main  # noqa: E402
from wnc_onnx.rewrite.passes.pq import MARK, dequantize_model  # noqa: E402

PQ = ["--pq-k", "16", "--pq-dim", "4"]  # the classifier's fc.w is 4 x 96: 96 sub-vectors of 4


@pytest.fixture
def work(tmp_path):
    onnx.save(small_classifier(), tmp_path / "small.onnx")
    x, y = labelled_images(160)
    np.savez(tmp_path / "train.npz", x=x[:112], y=y[:112])
    np.savez(tmp_path / "val.npz", x=x[112:], y=y[112:])
    return tmp_path


def _cli(work, out, *extra):
    return main(["finetune", str(work / "small.onnx"), str(work / out), "--train", str(work / "train.npz"),
                 "--val", str(work / "val.npz"), "--batch-size", "16", "--lr", "3e-3", "-q", *extra])  # fmt: skip


def _history(work, out):
    return json.loads((work / out.replace(".onnx", ".history.json")).read_text())


def test_pq_lambda_trains_toward_the_codebook_and_writes_the_quantized_model(work, capsys):
    assert _cli(work, "pull.onnx", "--epochs", "3", "--pq-lambda", "100", *PQ) == 0
    assert _cli(work, "free.onnx", "--epochs", "3", "--pq-lambda", "0", *PQ) == 0
    out = capsys.readouterr().out
    assert "PQ dist" in out and "product-quantized 1 weight(s)" in out
    pulled, free = _history(work, "pull.onnx"), _history(work, "free.onnx")
    for h in (pulled, free):
        assert all(e["pq_distance"] is not None and e["pq_val_accuracy"] is not None for e in h["epochs"])
        assert h["initial"]["pq_val_accuracy"] is not None
        assert h["pq"]["totals"]["quantized"] == 1 and h["pq"]["weights"][0]["weight"] == "fc.w"
    # the pull brings the weights near their quantization; without it they stay where training puts them
    assert pulled["epochs"][-1]["pq_distance"] < 0.5 * free["epochs"][-1]["pq_distance"]
    model = onnx.load(work / "pull.onnx")
    onnx.checker.check_model(model, full_check=True)
    names = {t.name for t in model.graph.initializer}
    assert "fc.w" not in names and any(MARK in n for n in names)
    x, y = np.load(work / "val.npz")["x"], np.load(work / "val.npz")["y"]
    (scores,) = run(model, {"image": x})
    np.testing.assert_allclose(scores, run(dequantize_model(model), {"image": x})[0], atol=1e-5)
    # the written model is the one the last epoch scored as quantized
    assert float((scores.argmax(1) == y).mean()) == pytest.approx(pulled["epochs"][-1]["pq_val_accuracy"])
    assert pulled["final"]["accuracy"] == pytest.approx(pulled["epochs"][-1]["pq_val_accuracy"])


def test_a_full_pull_puts_the_weights_on_the_centroids(work):
    # lr * lambda >= 1: after every step the weights are their quantization
    assert _cli(work, "snap.onnx", "--epochs", "2", "--pq-lambda", "1e6", *PQ) == 0
    h = _history(work, "snap.onnx")
    assert h["epochs"][-1]["pq_distance"] < 1e-4
    assert h["epochs"][-1]["pq_val_accuracy"] == pytest.approx(h["epochs"][-1]["val_accuracy"])
    assert h["pq"]["weights"][0]["rel_error"] < 1e-4


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--pq-lambda", "-1"], "--pq-lambda"),
        (["--pq-lambda", "10", "--pq-k", "999"], "--pq-k"),
        (["--pq-lambda", "10"], "no weight of the model can be product-quantized"),  # k=256 > 96 sub-vectors
        (["--pq-lambda", "10", "--pq-op-types", "Conv", *PQ], "no weight of the model can be product-quantized"),
    ],
)
def test_bad_pq_options_are_one_line_exit_2(work, capsys, extra, needle):
    assert _cli(work, "bad.onnx", "--epochs", "1", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "fix:" in err[0]
    assert not (work / "bad.onnx").exists()


def test_example_combines_seeds_into_mean_and_range(tmp_path):
    """examples/pq_mnist.py --combine: per method and setting the mean accuracy and its range
    over the runs given, a table and the plot (the runs themselves take minutes: docs/pq.md)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def result(seed, accs):
        rows = [
            {"method": "pq", "setting": "d=8 k=256", "fc_rate": 27.1, "test_accuracy": accs[0]},
            {"method": "pq+penalty", "setting": "d=8 k=256", "fc_rate": 27.1 + seed, "test_accuracy": accs[1]},
        ]
        return {"dataset": "mnist", "seed": seed, "original_test_accuracy": accs[2], "fc_bytes": 3_221_504,
                "finetune": {}, "lambda": 5.0, "rows": rows}  # fmt: skip

    for seed, accs in ((0, (0.95, 0.97, 0.96)), (1, (0.93, 0.98, 0.94))):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "results.json").write_text(json.dumps(result(seed, accs)))
    out = tmp_path / "all"
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "pq_mnist.py"), "--out", str(out), "--combine",
         str(tmp_path / "s0"), str(tmp_path / "s1")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1] and res["original_test_accuracy"] == pytest.approx(0.95)
    pen = next(r for r in res["rows"] if r["method"] == "pq+penalty")
    assert pen["test_accuracy"] == pytest.approx(0.975) and pen["fc_rate"] == pytest.approx(27.6)
    assert (pen["test_accuracy_min"], pen["test_accuracy_max"], pen["runs"]) == (0.97, 0.98, 2)
    assert "| pq+penalty | d=8 k=256 | x27.6 | 97.50% | +2.50 | 97.00% - 98.00% |" in (out / "results.md").read_text()
    assert (out / "pq_mnist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
