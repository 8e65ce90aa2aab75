"""The fine-tuning loop on ONNX Runtime training (runs in the training environment).

.ci/run's second stage installs onnxruntime-training-cpu 1.19.2 + torch 2.13.0 in their
own venv and runs this file there; in the main environment (plain onnxruntime) it is
skipped; stage 2 sets WNC_REQUIRE_TRAINING=1, so there it cannot be skipped."""

import os

import numpy as np
import onnx
import pytest

if os.environ.get("WNC_REQUIRE_TRAINING") == "1":  # .ci/run stage 2: a missing runtime is a failure
    import onnxruntime.training.api  # noqa: F401
else:
    pytest.importorskip("onnxruntime.training.api", reason="needs the training environment (.ci/run stage 2)")

import onnxruntime as ort  # noqa: E402

import wnc_onnx  # noqa: E402
from wnc_onnx.finetune import ArrayData, FinetuneConfig, finetune  # noqa: E402
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
