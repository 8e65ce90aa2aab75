"""`wnc-onnx finetune` end to end (runs in the training environment, .ci/run stage 2)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

if os.environ.get("WNC_REQUIRE_TRAINING") == "1":
    import onnxruntime.training.api  # noqa: F401
else:
    pytest.importorskip("onnxruntime.training.api", reason="needs the training environment (.ci/run stage 2)")

from tests.helpers import conv_model, labelled_images, run, small_classifier  # noqa: E402
from wnc_onnx.cli import main  # noqa: E402


@pytest.fixture
def work(tmp_path):
    model = small_classifier()
    onnx.save(model, tmp_path / "small.onnx")
    x, y = labelled_images(96)
    np.savez(tmp_path / "train.npz", x=x[:64], y=y[:64])
    np.savez(tmp_path / "val.npz", x=x[64:], y=y[64:])
    return tmp_path


def _cli(work, *extra):
    return main(["finetune", str(work / "small.onnx"), str(work / "tuned.onnx"), "--train", str(work / "train.npz"),
                 "--val", str(work / "val.npz"), "--batch-size", "16", "-q", *extra])  # fmt: skip


def test_finetune_writes_a_plain_model_history_and_curve(work, capsys):
    before = (work / "small.onnx").read_bytes()
    assert _cli(work, "--epochs", "2", "--lr", "3e-3", "--reference", str(work / "small.onnx")) == 0
    assert (work / "small.onnx").read_bytes() == before
    tuned = onnx.load(work / "tuned.onnx")
    onnx.checker.check_model(tuned)
    assert [i.name for i in tuned.graph.input] == ["image"] and [o.name for o in tuned.graph.output] == ["logits"]
    history = json.loads((work / "tuned.history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["reference"]["val_accuracy"] == pytest.approx(history["initial"]["val_accuracy"])
    x, y = np.load(work / "val.npz")["x"], np.load(work / "val.npz")["y"]
    accuracy = float((run(tuned, {"image": x})[0].argmax(1) == y).mean())
    assert history["final"]["accuracy"] == pytest.approx(accuracy)
    assert accuracy == pytest.approx(history["epochs"][-1]["val_accuracy"])
    assert (work / "tuned.curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (work / "tuned.onnx.ckpt").exists()  # the default checkpoint folder goes on success
    assert "written model, scored on --val by plain onnxruntime" in capsys.readouterr().out


def _bad(work, name, x=None, y=None):
    np.savez(work / name, x=np.zeros((4, 1, 8, 8), np.float32) if x is None else x, y=np.zeros(4) if y is None else y)
    return str(work / name)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("labels", "l.npz: labels range over 1..7, the model scores 4 classes"),
        ("shape", "samples have shape [1, 9, 9], the model input 'image' takes ['N', 1, 8, 8]"),
        ("empty", "holds no samples"),
        ("classes", "cross-entropy needs a score per class"),
        ("missing", "data file not found"),
        ("resume", "no checkpoint folder"),
        ("epochs", "epochs, batch size and lr step must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(work, capsys, case, needle):
    args = {
        "labels": ["--train", _bad(work, "l.npz", y=np.arange(4) * 2 + 1)],
        "shape": ["--train", _bad(work, "s.npz", x=np.zeros((4, 1, 9, 9), np.float32))],
        "empty": ["--train", _bad(work, "e.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0))],
        "missing": ["--train", str(work / "nope.npz")],
        "resume": ["--resume"],
        "epochs": ["--epochs", "0"],
        "classes": [],
    }[case]
    if case == "classes":
        onnx.save(conv_model(1, 4, (3, 3), (8, 8)), work / "small.onnx")  # output (1, 4, 6, 6)
    snapshot = (work / "small.onnx").read_bytes()
    assert _cli(work, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wnc-onnx: error: ") and needle in err[0] and "fix:" in err[0]
    assert (work / "small.onnx").read_bytes() == snapshot
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("tuned")) == []


def test_image_folders_train(work):
    from PIL import Image

    x, y = labelled_images(48)
    for split, rows in (("train", range(32)), ("val", range(32, 48))):
        for i in rows:
            folder = work / split / f"class{y[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(x[i, 0] * 40 + 128, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((16, 16)).save(folder / f"{i}.png")
    args = ["finetune", str(work / "small.onnx"), str(work / "tuned.onnx"), "--train", str(work / "train"), "-q",
            "--val", str(work / "val"), "--epochs", "1", "--mean", "0.5", "--std", "0.25"]  # fmt: skip
    assert main(args) == 0
    history = json.loads((work / "tuned.history.json").read_text())
    assert 0.0 <= history["final"]["accuracy"] <= 1.0 and len(history["epochs"]) == 1


def test_ctrl_c_checkpoints_and_resume_finishes(work):
    ckpt = work / "ckpt"
    big = labelled_images(4000)
    np.savez(work / "train.npz", x=big[0], y=big[1])
    cmd = [sys.executable, "-m", "wnc_onnx", "finetune", str(work / "small.onnx"), str(work / "tuned.onnx"),
           "--train", str(work / "train.npz"), "--epochs", "50", "--checkpoint-dir", str(ckpt)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ckpt / "progress.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved in" in err and "--resume" in err
    assert not (work / "tuned.onnx").exists()
    done = json.loads((ckpt / "progress.json").read_text())["epochs_done"]
    assert done >= 1
    resumed = subprocess.run(
        [*cmd[:-4], "--epochs", str(done + 1), "--checkpoint-dir", str(ckpt), "--resume", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((work / "tuned.history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, done + 2)) and history["resumed_at"] == [done]
    assert ckpt.is_dir()  # an explicit --checkpoint-dir is kept


def test_int8_models_are_refused_and_their_float_parent_is_tuned_then_quantized_again(work, capsys):
    """compress --int8 writes the float parent beside the int8 model; finetune refuses the int8
    model (its weights cannot be trained), tunes the parent and, with --int8, quantizes again."""
    from wnc_onnx.rewrite.int8_quantize import count_quantized, quantized_nodes

    x = np.load(work / "train.npz")["x"]
    np.savez(work / "calib.npz", image=x)
    rc = main(["compress", str(work / "small.onnx"), str(work / "q.onnx"), "--int8", "--calibration",
               str(work / "calib.npz"), "--threads", "1", "-q"])  # fmt: skip
    assert rc == 0 and quantized_nodes(onnx.load(work / "q.onnx"))
    assert not quantized_nodes(onnx.load(work / "q.float.onnx"))
    capsys.readouterr()
    before = (work / "q.onnx").read_bytes()
    rc = main(["finetune", str(work / "q.onnx"), str(work / "t.onnx"), "--train", str(work / "train.npz"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "is quantized" in err and "q.float.onnx" in err and "--int8" in err
    assert len(err.strip().splitlines()) == 1 and not (work / "t.onnx").exists()
    assert (work / "q.onnx").read_bytes() == before
    rc = main(["finetune", str(work / "q.float.onnx"), str(work / "t.onnx"), "--train", str(work / "train.npz"),
               "--val", str(work / "val.npz"), "--epochs", "1", "--batch-size", "16", "--int8", "--external-data",
               "-q"])  # fmt: skip
    assert rc == 0
    tuned, parent = onnx.load(work / "t.onnx"), onnx.load(work / "t.float.onnx")
    assert count_quantized(tuned) > 0 and not quantized_nodes(parent)
    history = json.loads((work / "t.history.json").read_text())
    assert history["int8"]["samples"] == 64 and history["int8"]["int8_layers"] == count_quantized(tuned)
    xv, yv = np.load(work / "val.npz")["x"], np.load(work / "val.npz")["y"]
    accuracy = float((run(tuned, {"image": xv})[0].argmax(1) == yv).mean())
    assert history["final"]["accuracy"] == pytest.approx(accuracy)  # the int8 model written is the one scored
