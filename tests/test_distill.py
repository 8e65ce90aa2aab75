"""Distillation from the original model (`finetune --teacher`): no labels, any outputs, features
(runs in the training environment, .ci/run stage 2, which has torch)."""

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
    import torch  # noqa: F401
else:
    pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

import wnc_onnx  # noqa: E402
from tests.helpers import run  # noqa: E402
from wnc_onnx.cli import main  # noqa: E402
from wnc_onnx.data.arrays import InputArrays  # noqa: E402
from wnc_onnx.errors import WncError  # noqa: E402
from wnc_onnx.finetune import ArrayData, FinetuneConfig, finetune  # noqa: E402
from wnc_onnx.finetune.distill import build_objective, rewritten_outputs  # noqa: E402
from wnc_onnx.zoo import demo_cnn  # noqa: E402

TORCH = {"backend": "torch", "device": "cpu"}
BACKENDS = {"torch": TORCH, "ort": {"backend": "ort"}}


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def agreement(a, b):
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def kl(a, b, t=1.0):
    """KL(softmax(a / t) || softmax(b / t)), per sample, averaged."""
    la = (
        a / t
        - np.log(np.exp(a / t - (a / t).max(1, keepdims=True)).sum(1, keepdims=True))
        - (a / t).max(1, keepdims=True)
    )
    lb = (
        b / t
        - np.log(np.exp(b / t - (b / t).max(1, keepdims=True)).sum(1, keepdims=True))
        - (b / t).max(1, keepdims=True)
    )
    return float((np.exp(la) * (la - lb)).sum(1).mean())


@pytest.fixture(scope="module")
def pair():
    """The demo CNN and a hard compression of it (ranks 4: its top class changes on a third of inputs)."""
    teacher = demo_cnn()
    teacher.ir_version = 10
    student, _ = wnc_onnx.compress(teacher, ranks={"conv2": [4, 4], "conv3": [4, 4], "conv4": [4, 4], "fc1": [4, 4]})
    x = np.random.default_rng(0).standard_normal((320, 3, 32, 32)).astype(np.float32)
    return teacher, student, x[:256], x[256:]


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_distillation_without_labels_recovers_the_teacher(pair, backend):
    teacher, student, train, held = pair
    (ref,) = run(teacher, {"image": held})
    (before,) = run(student, {"image": held})
    cfg = FinetuneConfig(epochs=4, batch_size=32, lr=2e-3, lr_step=3, **BACKENDS[backend])
    tuned, history = finetune(student, InputArrays({"image": train}), InputArrays({"image": held}), cfg,
                              teacher=teacher, quiet=True)  # fmt: skip
    (after,) = run(tuned, {"image": held})
    # KL pins the class scores up to a shift, not the raw logits: judged by what the scores decide
    assert agreement(ref, before) < 0.7 and agreement(ref, after) >= 0.9, (
        agreement(ref, before),
        agreement(ref, after),
    )
    assert kl(ref, after) < 0.25 * kl(ref, before), (kl(ref, before), kl(ref, after))
    terms = history.distill["terms"]
    assert terms[0]["tensor"] == "logits" and terms[0]["kind"] == "kl" and terms[0]["for"] == "logits"
    # the rewritten layers' outputs, but for fc2's, the model's output already in a term
    assert [t["tensor"] for t in terms[1:]] == [n for n in rewritten_outputs(student) if n != "logits"]
    assert len(terms) == 6 and {t["for"] for t in terms[1:]} == {"feature"}  # conv1-conv4, fc1
    assert history.epochs[-1].val_agreement == pytest.approx(agreement(ref, after), abs=1e-6)
    assert history.epochs[-1].teacher_seconds > 0 and history.epochs[-1].val_accuracy is None  # no labels
    assert [o.name for o in tuned.graph.output] == ["logits"] and tuned.graph.node == student.graph.node
    assert history.warnings == []  # the loss fell: nothing to say


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_a_loss_that_rises_in_the_first_epoch_is_said_with_a_smaller_lr(pair, backend, caplog):
    teacher, student, train, _ = pair
    cfg = FinetuneConfig(epochs=1, batch_size=32, lr=0.3, **BACKENDS[backend])
    with caplog.at_level("WARNING", logger="wnc_onnx.finetune.trainer"):
        _, history = finetune(student, InputArrays({"image": train}), None, cfg, teacher=teacher, quiet=True)
    (said,) = history.warnings
    assert "the training loss rose from" in said and "try --lr 0.1" in said, said
    assert said in caplog.text and history.to_dict()["warnings"] == [said]


def test_the_rewritten_layers_outputs_are_the_default_features(pair):
    teacher, student, _, _ = pair
    names = rewritten_outputs(student)
    report = json.loads(next(e.value for e in student.metadata_props if e.key == "wnc_onnx"))
    assert len(names) == len(report["layers"]) and all(n in {o for n in teacher.graph.node for o in n.output}
                                                        for n in names)  # fmt: skip
    plain = build_objective(student, teacher, features="none")
    assert [t.tensor for t in plain.terms] == ["logits"]
    with pytest.raises(WncError, match="do not both compute"):
        build_objective(student, teacher, features=("nope",))


def softmax_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a final Softmax: its output 'probs', the logits inside."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    classes = out.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes]))
    return out


def test_a_softmax_output_is_distilled_at_its_logits_and_keeps_its_softmax(pair):
    teacher, student, train, held = pair
    teacher, student = softmax_head(teacher), softmax_head(student)
    cfg = FinetuneConfig(epochs=2, batch_size=32, **TORCH)
    tuned, history = finetune(student, InputArrays({"image": train}), None, cfg, teacher=teacher, quiet=True)
    assert history.distill["terms"][0]["tensor"] == "logits" and "Softmax" in history.distill["terms"][0]["why"]
    (probs,) = run(tuned, {"image": held})
    assert tuned.graph.node[-1].op_type == "Softmax" and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_labels_with_a_softmax_output_train_on_the_logits(pair, backend):
    """Cross-entropy on probabilities (a softmax taken twice) trained the wrong thing; the loss is
    the cross-entropy of the logits, and the written model keeps its Softmax."""
    teacher, student, train, held = pair
    student = softmax_head(student)
    y = run(teacher, {"image": held})[0].argmax(1)
    cfg = FinetuneConfig(epochs=1, batch_size=64, backend=backend, device="cpu" if backend == "torch" else None)
    tuned, history = finetune(student, ArrayData(held, y), ArrayData(held, y), cfg, quiet=True)
    logits = run(student, {"image": held})[0]  # the probabilities: back to log space
    log_p = np.log(np.clip(logits, 1e-30, None))
    ce_logits = float(-log_p[np.arange(len(y)), y].mean())
    assert history.initial_val_loss == pytest.approx(ce_logits, rel=1e-4)
    assert tuned.graph.node[-1].op_type == "Softmax" and [o.name for o in tuned.graph.output] == ["probs"]
    assert np.allclose(run(tuned, {"image": held})[0].sum(1), 1, atol=1e-5)


def two_heads() -> onnx.ModelProto:
    """Two inputs ('image', 'gain'), two outputs: a class index made by ArgMax, and 4 box values."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32) * 0.4, "c.w"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2, "c2.w"),
        numpy_helper.from_array(rng.standard_normal((16 * 16, 12)).astype(np.float32) * 0.1, "cls.w"),
        numpy_helper.from_array(rng.standard_normal((16 * 16, 4)).astype(np.float32) * 0.1, "box.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "c2.w"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Mul", ["c2", "gain"], ["g"], name="gain"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "cls.w"], ["scores"], name="cls"),
        helper.make_node("ArgMax", ["scores"], ["label"], name="argmax", axis=1, keepdims=0),
        helper.make_node("MatMul", ["f", "box.w"], ["box"], name="box"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_heads",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, ["N", 1, 1, 1]),
        ],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_every_output_of_a_two_input_model_is_distilled(backend):
    teacher = two_heads()
    # conv2 (random, full-rank weights) at ranks 8 of 16 moves both heads; the heads themselves stay whole
    student, rep = wnc_onnx.compress(teacher, include="^conv2$", ranks={"conv2": [8, 8]})
    assert rep.totals.decomposed == 1
    rng = np.random.default_rng(5)
    feeds = {"image": rng.standard_normal((256, 1, 8, 8)).astype(np.float32),
             "gain": rng.uniform(0.5, 2, (256, 1, 1, 1)).astype(np.float32)}  # fmt: skip
    train = InputArrays({k: v[:192] for k, v in feeds.items()})
    held = {k: v[192:] for k, v in feeds.items()}
    probe = onnx.ModelProto()
    probe.CopyFrom(teacher)
    probe.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 12]))
    cfg = FinetuneConfig(epochs=8, batch_size=32, lr=3e-3, lr_step=8, **BACKENDS[backend])
    tuned, history = finetune(student, train, None, cfg, teacher=teacher, quiet=True)
    kinds = {t["for"]: (t["tensor"], t["kind"]) for t in history.distill["terms"] if t["for"] != "feature"}
    assert kinds == {"label": ("scores", "kl"), "box": ("box", "mse")}
    label_t, box_t = run(teacher, held)
    label_s, box_s = run(student, held)
    label_a, box_a = run(tuned, held)
    assert rel(box_t, box_a) < 0.8 * rel(box_t, box_s), (rel(box_t, box_s), rel(box_t, box_a))  # the boxes learned
    assert (label_a == label_t).mean() > (label_s == label_t).mean() + 0.1  # and the ArgMax's scores
    assert label_a.dtype == np.int64 and [o.name for o in tuned.graph.output] == ["label", "box"]


def test_alpha_one_is_the_label_loss_alone(pair):
    """``alpha`` mixes the label loss in: at 1 the run takes the steps of training on labels alone."""
    teacher, student, train, _ = pair
    y = run(teacher, {"image": train})[0].argmax(1)
    data = ArrayData(train[:128], y[:128])
    cfg = FinetuneConfig(epochs=1, batch_size=32, **TORCH)
    _, labels = finetune(student, data, None, cfg, quiet=True)
    _, mixed = finetune(student, data, None, FinetuneConfig(epochs=1, batch_size=32, alpha=1.0, **TORCH),
                        teacher=teacher, quiet=True)  # fmt: skip
    assert mixed.epochs[0].train_loss == pytest.approx(labels.epochs[0].train_loss, rel=1e-5)
    _, half = finetune(student, data, None, FinetuneConfig(epochs=1, batch_size=32, alpha=0.5, **TORCH),
                       teacher=teacher, quiet=True)  # fmt: skip
    assert half.epochs[0].train_loss != pytest.approx(labels.epochs[0].train_loss, rel=1e-3)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_both_backends_take_the_same_steps(pair, alpha):
    """The ort backend's loss graph (backends/ort/distill_loss) is the torch backend's loss: the
    same first loss, and the same curve over two epochs (KL at the logits, five features, and the
    label loss mixed in at alpha 0.5)."""
    teacher, student, train, held = pair
    y, yh = (run(teacher, {"image": a})[0].argmax(1) for a in (train, held))
    data = ArrayData(train[:128], y[:128]) if alpha else InputArrays({"image": train[:128]})
    val = ArrayData(held, yh) if alpha else InputArrays({"image": held})
    losses = {}
    for backend in ("ort", "torch"):
        cfg = FinetuneConfig(epochs=2, batch_size=32, lr=1e-3, alpha=alpha, **BACKENDS[backend])
        _, h = finetune(student, data, val, cfg, teacher=teacher, quiet=True)
        last = h.epochs[-1]
        losses[backend] = [e.train_loss for e in h.epochs] + [last.val_loss, last.val_agreement]
        assert (last.val_accuracy is not None) == bool(alpha)  # labelled validation: accuracy too
        losses[backend] += [last.val_accuracy] if alpha else []
    assert losses["ort"] == pytest.approx(losses["torch"], rel=2e-3), losses


@pytest.mark.parametrize("opset", [11, 17])
def test_the_ort_loss_graph_computes_the_torch_terms(opset):
    """KL along a middle class axis (moved last before opset 13, where LogSoftmax flattens) and the
    variance-scaled squared error, in plain onnxruntime, against the torch backend's terms."""
    import onnxruntime as ort
    import torch

    from wnc_onnx.finetune.backends.ort import distill_loss
    from wnc_onnx.finetune.backends.torch.losses import term_loss
    from wnc_onnx.finetune.distill import Objective, Term

    nodes = [helper.make_node("Relu", ["x"], ["feat"]), helper.make_node("Neg", ["feat"], ["seq"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 5])],
                              [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", 7, 5])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7  # what the training environment's onnxruntime 1.19.2 reads
    terms = (Term("seq", "kl", 1, 0.7, "seq", "t"), Term("feat", "mse", -1, 0.3, "feature", "t"))
    objective = Objective(terms, temperature=2.5, alpha=None, feature_weight=0.3)
    loss = distill_loss.build(model, objective, None, None)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(1)
    x, t_seq, t_feat = (rng.standard_normal((4, 7, 5)).astype(np.float32) for _ in range(3))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([loss], {"x": x, "teacher:seq": t_seq, "teacher:feat": t_feat})[0]
    feat = np.maximum(x, 0)
    want = 0.7 * term_loss("kl", 1, 2.5, torch.from_numpy(-feat), torch.from_numpy(t_seq)) + 0.3 * term_loss(
        "mse", -1, 2.5, torch.from_numpy(feat), torch.from_numpy(t_feat)
    )
    assert float(got) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_a_resumed_distillation_ends_where_one_run_does(pair, tmp_path, backend):
    """Checkpoints carry a distillation as a labelled run: 1 epoch, then --resume to 2, takes the
    steps of 2 epochs in one go; the teacher is read from a file with its weights as external data."""
    teacher, student, train, held = pair
    copy = onnx.ModelProto()
    copy.CopyFrom(teacher)  # onnx.save moves the weights of the proto it writes out to the data file
    onnx.save(copy, tmp_path / "teacher.onnx", save_as_external_data=True, location="teacher.data", size_threshold=0)
    assert (tmp_path / "teacher.data").stat().st_size > 10_000
    data, val = InputArrays({"image": train[:128]}), InputArrays({"image": held})
    cfg = {"batch_size": 32, "lr": 1e-3, **BACKENDS[backend]}
    path = tmp_path / "teacher.onnx"
    _, whole = finetune(student, data, val, FinetuneConfig(epochs=2, **cfg), teacher=path, quiet=True)
    finetune(student, data, val, FinetuneConfig(epochs=1, **cfg), teacher=path, checkpoint_dir=tmp_path / "ck",
             quiet=True)  # fmt: skip
    tuned, resumed = finetune(student, data, val, FinetuneConfig(epochs=2, **cfg), teacher=path,
                              checkpoint_dir=tmp_path / "ck", resume=True, quiet=True)  # fmt: skip
    assert len(resumed.epochs) == 2 and resumed.distill == whole.distill
    assert [e.train_loss for e in resumed.epochs] == pytest.approx([e.train_loss for e in whole.epochs], rel=1e-4)
    (ref,) = run(teacher, {"image": held})
    (got,) = run(tuned, {"image": held})
    assert agreement(ref, got) == pytest.approx(resumed.epochs[-1].val_agreement, abs=1e-6)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_distills_each_process_on_its_shard(pair, tmp_path):
    """2 processes distilling, each on half of every batch, end where one process does."""
    teacher, student, train, held = pair
    onnx.save(teacher, tmp_path / "teacher.onnx")
    onnx.save(student, tmp_path / "small.onnx")
    np.savez(tmp_path / "train.npz", image=train)
    np.savez(tmp_path / "held.npz", image=held)
    args = ["finetune", "small.onnx", "tuned.onnx", "--teacher", "teacher.onnx", "--train", "train.npz", "--val",
            "held.npz", "--epochs", "3", "--batch-size", "32", "--lr", "2e-3", "--threads", "1", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "wnc_onnx", *args],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    h2 = json.loads((tmp_path / "tuned.history.json").read_text())
    assert "2 processes" in h2["runtime"] and "batch 16 per process" in h2["runtime"]
    (tmp_path / "tuned.onnx").rename(tmp_path / "two.onnx")
    one = subprocess.run([sys.executable, "-m", "wnc_onnx", *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    h1 = json.loads((tmp_path / "tuned.history.json").read_text())
    (ref,) = run(teacher, {"image": held})
    (before,) = run(student, {"image": held})
    a2 = agreement(ref, run(onnx.load(tmp_path / "two.onnx"), {"image": held})[0])
    a1 = agreement(ref, run(onnx.load(tmp_path / "tuned.onnx"), {"image": held})[0])
    assert a2 == pytest.approx(h2["epochs"][-1]["val_agreement"], abs=1e-6)  # scored over both shards
    assert a2 > agreement(ref, before) + 0.1 and abs(a2 - a1) <= 0.05, (agreement(ref, before), a1, a2)
    assert h2["epochs"][0]["train_loss"] == pytest.approx(h1["epochs"][0]["train_loss"], rel=0.05)


@pytest.fixture
def files(pair, tmp_path):
    teacher, student, train, held = pair
    onnx.save(teacher, tmp_path / "model.onnx")
    onnx.save(student, tmp_path / "small.onnx")
    np.savez(tmp_path / "inputs.npz", image=train[:96])
    np.savez(tmp_path / "held.npz", x=held)
    return tmp_path


def test_cli_distills_from_unlabelled_inputs_and_a_flat_image_folder(files, capsys):
    out = files / "tuned.onnx"
    rc = main(["finetune", str(files / "small.onnx"), str(out), "--train", str(files / "inputs.npz"), "--val",
               str(files / "held.npz"), "--teacher", str(files / "model.onnx"), "--epochs", "1", "-q"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    history = json.loads((files / "tuned.history.json").read_text())
    assert history["config"]["backend"] == "torch" and history["distill"]["terms"][0]["kind"] == "kl"
    assert history["epochs"][0]["val_agreement"] is not None and "agreement" in captured.out
    rng = np.random.default_rng(0)
    (files / "photos").mkdir()
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(files / "photos" / f"{i}.png")
    rc = main(["finetune", str(files / "small.onnx"), str(files / "t2.onnx"), "--train", str(files / "photos"),
               "--teacher", str(files / "model.onnx"), "--epochs", "1", "--augment", "crop,color", "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert (files / "t2.onnx").is_file()


def renamed_input(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.input[0].name = "pixels"
    for n in out.graph.node:
        n.input[:] = ["pixels" if i == "image" else i for i in n.input]
    return out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--teacher", "{other}"], "the teacher's inputs ['pixels'] are not the model's ['image']"),
        (
            ["--teacher", "{teacher}", "--alpha", "0.5"],
            "--alpha mixes the label loss in, and inputs.npz hold no labels",
        ),
        (["--alpha", "0.5", "--train", "{labelled}"], "--alpha mixes the label loss into distillation"),
        (["--teacher", "{teacher}", "--distill-loss", "nope=kl"], "--distill-loss names unknown output(s) ['nope']"),
        (["--teacher", "{teacher}", "--distill-loss", "logits=cosine"], "unknown loss"),
        (["--teacher", "{teacher}", "--temperature", "0"], "--temperature must be > 0"),
        (["--teacher", "{teacher}", "--augment", "crop,blur"], "--augment crop,blur: unknown ['blur']"),
        (["--train", "{inputs}"], "has no labels, and this run trains on them"),
        (["--teacher", "{teacher}", "--train", "{wrong}"], "holds ['a', 'b']: which is the input 'image'?"),
    ],
)
def test_bad_distillation_input_is_one_line_exit_2(files, capsys, extra, needle):
    onnx.save(renamed_input(onnx.load(files / "model.onnx")), files / "other.onnx")
    np.savez(files / "labelled.npz", x=np.zeros((8, 3, 32, 32), np.float32), y=np.zeros(8, np.int64))
    np.savez(files / "wrong.npz", a=np.zeros((8, 3, 32, 32), np.float32), b=np.zeros((8, 3, 32, 32), np.float32))
    paths = {"teacher": files / "model.onnx", "other": files / "other.onnx", "labelled": files / "labelled.npz",
             "inputs": files / "inputs.npz", "wrong": files / "wrong.npz"}  # fmt: skip
    args = [a.format(**paths) for a in extra]
    train = [] if "--train" in args else ["--train", str(files / "inputs.npz")]
    rc = main(["finetune", str(files / "small.onnx"), str(files / "o.onnx"), *train, *args, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0] and "fix:" in err[0], err
    assert not (files / "o.onnx").exists()


def test_compress_then_recover_in_one_flow(tmp_path, capsys):
    """compress --distill EPOCHS --calibration DATA: calibrated, distilled on the same inputs, and
    the held-back part (never seen by either) shows the original against both models."""
    teacher = demo_cnn()
    teacher.ir_version = 10
    onnx.save(teacher, tmp_path / "model.onnx")
    x = np.random.default_rng(4).standard_normal((320, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", image=x)
    (tmp_path / "ranks.json").write_text(json.dumps({"conv2": [4, 4], "conv3": [4, 4], "conv4": [4, 4], "fc1": [4, 4]}))
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    rc = main([str(tmp_path / "model.onnx"), str(out), "--ranks", str(tmp_path / "ranks.json"), "--calibration",
               str(tmp_path / "inputs.npz"), "--distill", "4", "--report", str(rep), "-q"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    d = json.loads(rep.read_text())["extras"]["distill"]
    assert d["held_back"] == 40 and d["train_samples"] == 280 and d["epochs"] == 4 and d["lr"] == 3e-4
    assert d["recovered"]["agreement"] >= d["compressed"]["agreement"], d
    assert d["recovered"]["output_error"] < d["compressed"]["output_error"], d
    assert "Distilled from the original for 4 epoch(s) on 280 samples" in captured.out
    held = {"image": x[-40:]}
    ref, got = run(teacher, held)[0], run(onnx.load(out), held)[0]
    assert agreement(ref, got) == pytest.approx(d["recovered"]["agreement"])  # the written model is the recovered one
    cal = ["--calibration", str(tmp_path / "inputs.npz")]
    for extra, needle in ((["--distill", "2"], "--distill trains on the calibration data"),
                          (["--distill", "0", *cal], "a number of epochs"),
                          (["--distill", "2", "--distill-lr", "0", *cal], "--distill-lr must be > 0"),
                          (["--distill-lr", "1e-3", *cal], "--distill-lr is the rate of --distill")):  # fmt: skip
        assert main([str(tmp_path / "model.onnx"), str(tmp_path / "x.onnx"), *extra, "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and not (tmp_path / "x.onnx").exists()
