"""The fine-tuning loop on ONNX Runtime training (runs in the training environment).

.ci/run's second stage installs onnxruntime-training-cpu 1.19.2 + torch 2.13.0 in their
own venv and runs this file there; in the main environment (plain onnxruntime) it is
skipped; stage 2 sets WNC_REQUIRE_TRAINING=1, so there it cannot be skipped."""

import json
import os
import signal

import numpy as np
import onnx
import pytest

if os.environ.get("WNC_REQUIRE_TRAINING") == "1":  # .ci/run stage 2: a missing runtime is a failure
    import onnxruntime.training.api  # noqa: F401
else:
    pytest.importorskip("onnxruntime.training.api", reason="needs the training environment (.ci/run stage 2)")

import onnxruntime as ort  # noqa: E402

import wnc_onnx  # noqa: E402
from wnc_onnx.errors import WncError  # noqa: E402
from wnc_onnx.finetune import ArrayData, FinetuneConfig, finetune  # noqa: E402
from wnc_onnx.finetune.trainer import FinetuneInterrupted  # noqa: E402
from wnc_onnx.zoo import demo_cnn  # noqa: E402


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[
        0
    ]


def test_finetune_recovers_the_teacher_and_exports_a_plain_model():
    teacher = demo_cnn()
    teacher.ir_version = 10  # the 1.19.2 runtime reads IR <= 10
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 3, 32, 32)).astype(np.float32)
    y = _run(teacher, x).argmax(1)  # labels: the original network's decisions
    small, _ = wnc_onnx.compress(teacher, min_rank=2, rank_boost=0.0)
    before = float((_run(small, x[256:]).argmax(1) == y[256:]).mean())
    snapshot = small.SerializeToString()
    tuned, history = finetune(
        small,
        ArrayData(x[:256], y[:256]),
        ArrayData(x[256:], y[256:]),
        FinetuneConfig(epochs=3, batch_size=32, lr=1e-3),
        quiet=True,
    )
    assert small.SerializeToString() == snapshot  # the input model is untouched
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    after = float((_run(tuned, x[256:]).argmax(1) == y[256:]).mean())
    assert history.epochs[-1].val_accuracy == pytest.approx(after)
    assert after >= before
    assert [i.name for i in tuned.graph.input] == ["image"] and [o.name for o in tuned.graph.output] == ["logits"]
    onnx.checker.check_model(tuned)


def _weights(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture
def task():
    from tests.helpers import labelled_images, small_classifier

    x, y = labelled_images(96)
    return small_classifier(), ArrayData(x[:64], y[:64], "train"), ArrayData(x[64:], y[64:], "val")


CFG = FinetuneConfig(epochs=3, batch_size=16, lr=3e-3, lr_step=2, seed=3)


@pytest.fixture(params=["ort", "torch"])
def backend(request):
    """The loop's behaviour is the same on both backends (torch: wnc_onnx.finetune.backends.torch.run)."""
    return request.param


def _cfg(backend, **changes):
    return FinetuneConfig(**{**CFG.__dict__, "backend": backend, **changes})


def test_resume_after_an_epoch_equals_an_uninterrupted_run(task, tmp_path, backend):
    model, train, val = task
    cfg = _cfg(backend)
    straight, h1 = finetune(model, train, val, cfg, checkpoint_dir=tmp_path / "a", quiet=True)
    first, _ = finetune(model, train, val, _cfg(backend, epochs=1), checkpoint_dir=tmp_path / "b", quiet=True)
    assert not np.allclose(_weights(first)["fc.w"], _weights(straight)["fc.w"])
    resumed, h2 = finetune(model, train, val, cfg, checkpoint_dir=tmp_path / "b", resume=True, quiet=True)
    for name, w in _weights(straight).items():  # the AdamW moments came back too, or this would drift
        np.testing.assert_allclose(_weights(resumed)[name], w, rtol=1e-5, atol=1e-6, err_msg=name)
    assert [e.epoch for e in h2.epochs] == [1, 2, 3] and h2.resumed_at == [1]
    assert [e.lr for e in h2.epochs] == [e.lr for e in h1.epochs] == pytest.approx([3e-3, 3e-3, 3e-4])
    assert len(list((tmp_path / "b").glob("state-*"))) == 1  # older states are removed
    assert json.loads((tmp_path / "b" / "progress.json").read_text())["backend"] == backend


class _CtrlCAt:
    """ArrayData whose epoch-1 batches send SIGINT to this process at batch ``k`` (once)."""

    def __init__(self, data, k):
        self.data, self.k, self.sent, self.name = data, k, False, data.name
        self.x, self.y = data.x, data.y

    def __len__(self):
        return len(self.data)

    def batches(self, batch_size, shuffle=False, seed=0):
        for i, batch in enumerate(self.data.batches(batch_size, shuffle, seed), 1):
            if i == self.k and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            yield batch


def test_ctrl_c_saves_a_checkpoint_mid_epoch_and_resume_finishes_the_same_run(task, tmp_path, backend):
    model, train, val = task
    cfg = _cfg(backend)
    straight, _ = finetune(model, train, val, cfg, quiet=True)
    with pytest.raises(FinetuneInterrupted) as stop:
        finetune(model, _CtrlCAt(train, 3), val, cfg, checkpoint_dir=tmp_path, quiet=True)
    assert (stop.value.epoch, stop.value.batch) == (1, 3)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert (progress["epochs_done"], progress["batches_done"]) == (0, 3)
    with pytest.raises(WncError, match="in the middle of an epoch with batch-size 16, this run asks for 8"):
        finetune(model, train, val, _cfg(backend, batch_size=8), checkpoint_dir=tmp_path, resume=True)
    other = "torch" if backend == "ort" else "ort"
    with pytest.raises(WncError, match=f"made with backend {backend}, this run asks for {other}"):
        finetune(model, train, val, _cfg(other), checkpoint_dir=tmp_path, resume=True)
    resumed, history = finetune(model, train, val, cfg, checkpoint_dir=tmp_path, resume=True, quiet=True)
    for name, w in _weights(straight).items():
        np.testing.assert_allclose(_weights(resumed)[name], w, rtol=1e-5, atol=1e-6, err_msg=name)
    assert history.resumed_at == [0] and len(history.epochs) == 3


def test_a_checkpoint_resumes_only_its_own_run(task, tmp_path):
    model, train, val = task
    finetune(model, train, None, FinetuneConfig(epochs=1, batch_size=32), checkpoint_dir=tmp_path, quiet=True)
    other = onnx.ModelProto()
    other.CopyFrom(model)
    other.graph.initializer[0].raw_data = np.ones((6, 1, 3, 3), np.float32).tobytes()
    with pytest.raises(WncError, match="made while fine-tuning another model"):
        finetune(other, train, None, FinetuneConfig(epochs=2), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(WncError, match="made with optimizer adamw, this run asks for sgd"):
        finetune(model, train, None, FinetuneConfig(epochs=2, optimizer="sgd"), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(WncError, match="no checkpoint to resume from"):
        finetune(model, train, None, CFG, checkpoint_dir=tmp_path / "empty", resume=True)


def test_any_iterable_of_batches_trains(task, backend):
    model, train, val = task
    cfg = _cfg(backend)
    batches = list(train.batches(16))
    from_list, h_list = finetune(model, batches, list(val.batches(32)), cfg, quiet=True)
    from_fn, h_fn = finetune(model, lambda: iter(batches), val, cfg, quiet=True)
    for name, w in _weights(from_list).items():  # same batches in the same order: same weights
        np.testing.assert_allclose(_weights(from_fn)[name], w, rtol=1e-5, atol=1e-6)
    assert h_list.epochs[-1].val_accuracy == pytest.approx(h_fn.epochs[-1].val_accuracy)
    assert h_list.epochs[-1].train_loss < h_list.epochs[0].train_loss
    with pytest.raises(WncError, match="one-shot iterator"):
        finetune(model, iter(batches), None, cfg)
    with pytest.raises(WncError, match="train data: labels range over 2..9, the model scores 4 classes"):
        finetune(model, [(train.x[:8], np.arange(8) + 2)], None, cfg)


def test_divergence_is_one_clear_error(task, backend):
    model, train, _ = task
    huge = FinetuneConfig(epochs=2, batch_size=16, lr=1e12, optimizer="sgd", backend=backend)
    with pytest.raises(WncError, match="training diverged"):
        finetune(model, train, None, huge, quiet=True)


def test_batchnorm_statistics_stay_frozen_and_the_node_comes_back(task, backend):
    from tests.helpers import with_batchnorm

    model, train, val = task
    bn_model = with_batchnorm(model)
    tuned, history = finetune(bn_model, train, val, _cfg(backend), quiet=True)
    before, after = _weights(bn_model), _weights(tuned)
    if backend == "torch":  # the input graph itself, with new values (ORT's export adds default attributes)
        assert [n.SerializeToString() for n in tuned.graph.node] == [n.SerializeToString() for n in bn_model.graph.node]
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in bn_model.graph.node]
    np.testing.assert_array_equal(after["bn.m"], before["bn.m"])  # ORT training would update these
    np.testing.assert_array_equal(after["bn.v"], before["bn.v"])
    assert not np.allclose(after["bn.s"], before["bn.s"]) and not np.allclose(after["bn.b"], before["bn.b"])
    logits = _run(tuned, val.x)  # the restored BN computes what training evaluated
    shifted = logits - logits.max(1, keepdims=True)
    nll = -(shifted[np.arange(len(val.y)), val.y] - np.log(np.exp(shifted).sum(1)))
    assert float(nll.mean()) == pytest.approx(history.epochs[-1].val_loss, rel=1e-4)


def test_an_op_without_a_gradient_is_one_clear_error(task):
    model, train, _ = task
    g = model.graph
    g.node[-1].output[0] = "raw_logits"
    g.node.append(onnx.helper.make_node("Round", ["raw_logits"], ["logits"], name="round"))
    with pytest.raises(WncError, match="onnxruntime training cannot build the training graph"):
        finetune(model, train, None, CFG, quiet=True)
