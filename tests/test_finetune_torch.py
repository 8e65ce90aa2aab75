"""`finetune --backend torch`: agreement with the ORT backend, the graph written back, torch.distributed
(runs in the training environment, .ci/run stage 2, which has torch; the loop's own behaviour on both
backends is tests/test_finetune_train.py)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

if os.environ.get("WNC_REQUIRE_TRAINING") == "1":
    import onnxruntime.training.api  # noqa: F401
    import torch
else:
    pytest.importorskip("onnxruntime.training.api", reason="needs the training environment (.ci/run stage 2)")
    torch = pytest.importorskip("torch")

from onnx import helper, numpy_helper  # noqa: E402

import wnc_onnx  # noqa: E402
from tests.helpers import labelled_images, run, small_classifier  # noqa: E402
from wnc_onnx.cli import main  # noqa: E402
from wnc_onnx.errors import WncError  # noqa: E402
from wnc_onnx.finetune import ArrayData, FinetuneConfig, finetune  # noqa: E402
from wnc_onnx.finetune.backends.torch.graph import GraphModule  # noqa: E402
from wnc_onnx.finetune.checkpoint import Progress, check  # noqa: E402
from wnc_onnx.zoo import demo_cnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def compressed():
    """demo_cnn compressed (Tucker-2 convs, SVD FC), its labels the original's decisions."""
    teacher = demo_cnn()
    teacher.ir_version = 10
    x = np.random.default_rng(0).standard_normal((192, 3, 32, 32)).astype(np.float32)
    y = run(teacher, {"image": x})[0].argmax(1)
    small, _ = wnc_onnx.compress(teacher, min_rank=2, rank_boost=0.0)
    return small, ArrayData(x[:128], y[:128], "train"), ArrayData(x[128:], y[128:], "val")


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_both_backends_take_the_same_steps(compressed, optimizer):
    model, train, val = compressed
    runs = {}
    for backend in ("ort", "torch"):
        cfg = FinetuneConfig(epochs=3, batch_size=32, lr=1e-3 if optimizer == "adamw" else 1e-2, lr_step=2,
                             optimizer=optimizer, backend=backend, device="cpu")  # fmt: skip
        runs[backend] = finetune(model, train, val, cfg, quiet=True)
    (t_ort, h_ort), (t_torch, h_torch) = runs["ort"], runs["torch"]
    # same weights, batches and update formula (the steps themselves: the next test). Over epochs the float32
    # rounding of the two runtimes' kernels drifts apart a little: AdamW's step is about lr * sign(g) where a
    # gradient is near zero, and a ReLU or max-pool that flips passes a different gradient.
    assert h_torch.epochs[0].train_loss == pytest.approx(h_ort.epochs[0].train_loss, rel=1e-3)
    later = 2e-2
    for a, b in zip(h_ort.epochs, h_torch.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=later)
        assert b.val_loss == pytest.approx(a.val_loss, rel=later)
    (a,), (b,) = run(t_ort, {"image": val.x}), run(t_torch, {"image": val.x})
    assert float(np.linalg.norm(a - b) / np.linalg.norm(a)) < later
    # the torch-tuned model, run by plain onnxruntime, scores what the backend measured
    (scores,) = run(t_torch, {"image": val.x})
    shifted = scores - scores.max(1, keepdims=True)
    nll = -(shifted[np.arange(len(val.y)), val.y] - np.log(np.exp(shifted).sum(1)))
    assert float(nll.mean()) == pytest.approx(h_torch.epochs[-1].val_loss, rel=1e-5)
    assert float((scores.argmax(1) == val.y).mean()) == pytest.approx(h_torch.epochs[-1].val_accuracy)
    assert h_torch.runtime.startswith("torch ") and h_torch.config["backend"] == "torch"


def test_the_first_steps_losses_agree_to_float32_rounding(compressed, tmp_path):
    from wnc_onnx.finetune.distributed import Dist
    from wnc_onnx.finetune.sources import model_spec
    from wnc_onnx.finetune.trainer import _start

    model, train, _ = compressed
    losses = {}
    for backend in ("ort", "torch"):
        cfg = FinetuneConfig(batch_size=32, lr=1e-3, backend=backend, device="cpu")
        run_ = _start(model, [], cfg, Dist(), None, tmp_path / backend, model_spec(model, "cross_entropy"))
        run_.set_lr(cfg.lr)
        run_.train_mode()
        losses[backend] = [run_.step({"image": xb}, yb, None, "test") for xb, yb in list(train.batches(32))[:3]]
    assert losses["torch"][0] == pytest.approx(losses["ort"][0], rel=1e-6)  # the same weights and batch
    assert losses["torch"] == pytest.approx(losses["ort"], rel=1e-4)  # after one and two identical updates


def test_the_output_is_the_input_graph_with_new_values(compressed):
    model, train, _ = compressed
    tuned, _ = finetune(model, train, None, FinetuneConfig(epochs=1, batch_size=32, backend="torch"), quiet=True)
    before, after = onnx.ModelProto(), onnx.ModelProto()
    before.CopyFrom(model)
    after.CopyFrom(tuned)
    assert [t.name for t in after.graph.initializer] == [t.name for t in before.graph.initializer]
    changed = [t.name for t, u in zip(after.graph.initializer, before.graph.initializer, strict=True)
               if t.SerializeToString() != u.SerializeToString()]  # fmt: skip
    trained = set(wnc_onnx.finetune.common.trainable(model)[0])
    assert changed and set(changed) <= trained  # the rest bit-identical
    del before.graph.initializer[:], after.graph.initializer[:]
    assert after.SerializeToString() == before.SerializeToString()  # nodes, names, attributes, opsets, IR, metadata


def test_a_weight_read_by_two_nodes_stays_one_weight():
    """y = W (W x): torch ties the two uses as the graph does; both backends agree."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((6, 6)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6])], [w])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 6, 32)
    net = GraphModule(model, ["w"])
    assert list(net.named_onnx_parameters()) == ["w"]
    tuned = {}
    for backend in ("ort", "torch"):
        cfg = FinetuneConfig(epochs=2, batch_size=8, lr=1e-2, backend=backend)
        tuned[backend] = _weights(finetune(model, ArrayData(x, y), None, cfg, quiet=True)[0])["w"]
    np.testing.assert_allclose(tuned["torch"], tuned["ort"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(tuned["torch"], numpy_helper.to_array(w))


def test_pq_lambda_on_the_torch_backend_matches_ort(tmp_path):
    onnx.save(small_classifier(), tmp_path / "small.onnx")
    x, y = labelled_images(160)
    np.savez(tmp_path / "train.npz", x=x[:112], y=y[:112])
    np.savez(tmp_path / "val.npz", x=x[112:], y=y[112:])
    hist = {}
    for backend in ("ort", "torch"):
        out = tmp_path / f"{backend}.onnx"
        assert main(["finetune", str(tmp_path / "small.onnx"), str(out), "--train", str(tmp_path / "train.npz"),
                     "--val", str(tmp_path / "val.npz"), "--batch-size", "16", "--lr", "3e-3", "--epochs", "2", "-q",
                     "--pq-lambda", "100", "--pq-k", "16", "--pq-dim", "4", "--backend", backend]) == 0  # fmt: skip
        hist[backend] = json.loads((tmp_path / f"{backend}.history.json").read_text())
    for a, b in zip(hist["ort"]["epochs"], hist["torch"]["epochs"], strict=True):
        assert b["pq_distance"] == pytest.approx(a["pq_distance"], rel=1e-3)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert hist["torch"]["pq"]["totals"]["quantized"] == 1


def _cli(tmp_path, *extra):
    return main(["finetune", str(tmp_path / "small.onnx"), str(tmp_path / "out.onnx"), "--train",
                 str(tmp_path / "train.npz"), "--epochs", "1", "-q", *extra])  # fmt: skip


@pytest.fixture
def small(tmp_path):
    onnx.save(small_classifier(), tmp_path / "small.onnx")
    x, y = labelled_images(32)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    return tmp_path


def _one_line(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "fix:" in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(small, capsys):
    assert _cli(small, "--backend", "torch", "--device", "cuda") == 2
    _one_line(capsys, "no CUDA GPU")
    assert not (small / "out.onnx").exists()
    assert _cli(small, "--device", "cuda") == 2  # the ort backend
    _one_line(capsys, "use --backend torch")


def _dropout_in_training(g):
    g.node.append(helper.make_node("Dropout", ["raw", "ratio0", "train0"], ["logits"], name="drop"))
    g.initializer.extend([numpy_helper.from_array(np.array(0.5, np.float32), "ratio0"),
                          numpy_helper.from_array(np.array(True), "train0")])  # fmt: skip


@pytest.mark.parametrize(
    "add,needle",
    [  # an op it has not (found before training), a form of an op it has not (found when it runs)
        (lambda g: g.node.append(helper.make_node("Hardmax", ["raw"], ["logits"], name="pick")),
         "cannot run op Hardmax (node 'pick')"),
        (_dropout_in_training, "Dropout in training mode (node 'drop')"),
    ],
)  # fmt: skip
def test_what_the_backend_cannot_run_is_named_with_its_node(small, capsys, add, needle):
    model = small_classifier()
    model.graph.node[-1].output[0] = "raw"
    add(model.graph)
    onnx.save(model, small / "small.onnx")
    assert _cli(small, "--backend", "torch") == 2
    _one_line(capsys, needle)
    assert not (small / "out.onnx").exists()


def test_an_opset_outside_the_range_is_one_line(small, capsys):
    model = small_classifier()
    model.opset_import[0].version = 23
    onnx.save(model, small / "small.onnx")
    assert _cli(small, "--backend", "torch") == 2
    _one_line(capsys, "opsets 7-22; this model uses opset 23")


def test_missing_torch_names_the_install_command(small, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert _cli(small, "--backend", "torch") == 2
    _one_line(capsys, "pip install torch==2.13.0")


def test_several_processes_need_the_torch_backend(small, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert _cli(small) == 2
    _one_line(capsys, "add --backend torch")


def test_a_mid_epoch_checkpoint_resumes_with_the_same_number_of_processes(tmp_path):
    progress = Progress("sha", "cross_entropy", "adamw", 1, batches_done=5, batch_size=16, backend="torch",
                        world_size=2)  # fmt: skip
    check(progress, tmp_path, "sha", "cross_entropy", "adamw", 16, 0, "torch", 2)
    with pytest.raises(WncError, match="by 2 process\\(es\\), this run has 1"):
        check(progress, tmp_path, "sha", "cross_entropy", "adamw", 16, 0, "torch", 1)
    check(
        Progress("sha", "cross_entropy", "adamw", 1, backend="torch", world_size=2),
        tmp_path,
        "sha",
        "cross_entropy",
        "adamw",
        16,
        0,
        "torch",
        3,
    )  # fmt: skip  (at an epoch's end: any number)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_two_processes_tune_a_compressed_digits_cnn(tmp_path):
    """The held-out check of issue 13: 2 gloo processes, the result within 1 point of the original and the graph
    unchanged but for initializer values; then resumed by one process for one more epoch."""
    sys.path.insert(0, str(ROOT / "examples"))
    import digits_cnn

    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = digits_cnn.load("digits", seed=0, test_size=0.3)
    original = digits_cnn.to_onnx(digits_cnn.train(digits_cnn.build("digits"), x_tr, y_tr, 20, seed=0), 8)
    small, _ = wnc_onnx.compress(original)
    onnx.save(small, tmp_path / "small.onnx")
    np.savez(tmp_path / "train.npz", x=x_tr, y=y_tr)
    np.savez(tmp_path / "val.npz", x=x_te, y=y_te)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    args = ["finetune", "small.onnx", "tuned.onnx", "--train", "train.npz", "--val", "val.npz", "--epochs", "4",
            "--lr", "3e-4", "--batch-size", "16", "--backend", "torch", "--threads", "1", "--checkpoint-dir", "ck",
            "-q", "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "wnc_onnx", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((tmp_path / "tuned.history.json").read_text())
    assert "2 processes" in history["runtime"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["small.onnx", "train.npz", "val.npz", "tuned.onnx", "tuned.history.json", "tuned.curve.png", "ck"]
    )  # (before the one-process run below)
    tuned = onnx.load(tmp_path / "tuned.onnx")
    base = digits_cnn.accuracy(original, x_te, y_te)
    two = digits_cnn.accuracy(tuned, x_te, y_te)
    assert "batch 8 per process" in history["runtime"]  # --batch-size 16 is the global batch
    # one process with the same arguments takes the same steps over the same global batch: it ends where two do
    (tmp_path / "one").mkdir()
    for f in ("small.onnx", "train.npz", "val.npz"):
        shutil.copy(tmp_path / f, tmp_path / "one" / f)
    one = subprocess.run([sys.executable, "-m", "wnc_onnx", *args], cwd=tmp_path / "one", env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    alone = digits_cnn.accuracy(onnx.load(tmp_path / "one" / "tuned.onnx"), x_te, y_te)
    assert abs(two - alone) <= 0.01, (two, alone, base)
    start = digits_cnn.accuracy(small, x_te, y_te)
    assert two > start + 0.005 and two >= base - 0.02, (start, two, alone, base)  # it did train
    assert history["final"]["accuracy"] == pytest.approx(history["epochs"][-1]["val_accuracy"])
    a, b = onnx.ModelProto(), onnx.ModelProto()
    a.CopyFrom(small)
    b.CopyFrom(tuned)
    del a.graph.initializer[:], b.graph.initializer[:]
    assert a.SerializeToString() == b.SerializeToString()
    # one process resumes the two processes' checkpoint (at an epoch's end) for a fifth epoch
    args[args.index("--epochs") + 1] = "5"
    again = subprocess.run([sys.executable, "-m", "wnc_onnx", *args, "--resume"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((tmp_path / "tuned.history.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4, 5] and resumed["resumed_at"] == [4]


def test_shards_split_each_epoch_between_processes(tmp_path):
    from PIL import Image

    from wnc_onnx.data.images import load_image_folder
    from wnc_onnx.finetune.distributed import Dist
    from wnc_onnx.finetune.sources import BatchSource, model_spec

    spec = model_spec(small_classifier(), "cross_entropy")
    data = ArrayData(np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 8, 8), np.float32),
                     np.arange(10) % 4)  # fmt: skip

    def seen(source, epoch):
        return [int(x[0, 0, 0]) for feeds, _ in source.epoch(epoch, seed=3) for x in feeds["image"]]

    for shuffle in (True, False):
        parts = [seen(BatchSource(data, spec, 3, shuffle=shuffle, label="d", dist=Dist(r, 3, r)), 0) for r in range(3)]
        everything = sorted(i for p in parts for i in p)
        if shuffle:  # DistributedSampler: as many samples each, padded with repeats
            assert [len(p) for p in parts] == [4, 4, 4] and set(everything) == set(range(10))
            other = [seen(BatchSource(data, spec, 3, shuffle=True, label="d", dist=Dist(r, 3, r)), 1) for r in range(3)]
            assert other != parts  # re-shuffled per epoch
        else:  # scoring: every sample once
            assert everything == list(range(10))
    # image folders take the same per-process order, decoding only their share
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * (3 * c + i), np.uint8)).save(tmp_path / f"c{c}" / f"{i}.png")
    folder = load_image_folder(tmp_path, (8, 8), 1, (0.0,), (1.0,))
    xs, ys = zip(*folder.batches(2, order=[5, 0, 3]), strict=True)
    assert np.concatenate(ys).tolist() == [1, 0, 1]
    assert np.round(np.concatenate(xs)[:, 0, 0, 0] * 255).tolist() == [200, 0, 120]
