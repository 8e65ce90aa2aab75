"""Fine-tuning: what holds in any environment (data checks, the runtime check).

The training loop itself runs in the training environment: tests/test_finetune_train.py,
run by .ci/run's second stage."""

import numpy as np
import pytest

from wnc_onnx.errors import WncError
from wnc_onnx.finetune import ArrayData, FinetuneConfig, load_npz
from wnc_onnx.finetune.backends.ort import runtime as rt
from wnc_onnx.finetune.trainer import check_data
from wnc_onnx.zoo import demo_cnn


def test_runtime_check_names_the_install():
    dists = rt.installed()
    training = any(d in dists for d in rt.TRAINING_DISTS)
    plain = any(d in dists for d in rt.PLAIN_DISTS)
    if training and not plain:
        assert rt.require_training() == next(dists[d] for d in rt.TRAINING_DISTS if d in dists)
        return
    with pytest.raises(WncError) as exc:
        rt.require_training()
    text = str(exc.value)
    if training:
        assert "mixed ONNX Runtime install" in text
    else:
        assert "onnxruntime-training-cpu 1.19.2" in text and ".[train]" in text


def test_mixed_install_is_detected(monkeypatch):
    monkeypatch.setattr(rt, "installed", lambda: {"onnxruntime": "1.32.0", "onnxruntime-training-cpu": "1.19.2"})
    with pytest.raises(WncError, match="mixed ONNX Runtime install: onnxruntime 1.32.0, onnxruntime-training-cpu"):
        rt.require_training()


@pytest.mark.parametrize("has_torch", [True, False])
def test_without_the_training_build_torch_is_offered_when_present(monkeypatch, has_torch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(rt, "installed", lambda: {"onnxruntime": "1.32.0"})
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: (object() if has_torch else None) if n == "torch" else real(n, *a)
    )
    with pytest.raises(WncError) as exc:
        rt.require_training()
    assert ("--backend torch" in str(exc.value)) == has_torch


@pytest.fixture
def model():
    return demo_cnn()  # input (N, 3, 32, 32), output (N, 10)


def data(n=8, shape=(3, 32, 32), labels=None):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10 if labels is None else np.asarray(labels)
    return ArrayData(rng.standard_normal((n, *shape)).astype(np.float64), y, "train.npz")


def test_data_that_fits_is_typed_for_the_model(model):
    ok = check_data(model, data(), FinetuneConfig())
    assert ok.x.dtype == np.float32 and ok.y.dtype == np.int64


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (data(shape=(3, 28, 28)), "samples have shape [3, 28, 28]"),
        (data(labels=[0, 1, 2, 3, 4, 5, 6, 10]), "labels range over 0..10"),
        (data(labels=[0, 1, 2, 3, 4, 5, 6, -1]), "labels range over -1..6"),
        (data(labels=np.linspace(0, 1, 8)), "integer class label"),
    ],
)
def test_data_that_does_not_fit(model, bad, needle):
    with pytest.raises(WncError) as exc:
        check_data(model, bad, FinetuneConfig())
    assert needle in str(exc.value) and "fix:" in str(exc.value)


def test_cross_entropy_needs_class_scores():
    from tests.helpers import conv_model

    conv = conv_model(3, 4, (3, 3), (8, 8))  # output (1, 4, 6, 6): not a score per class
    with pytest.raises(WncError, match="cross-entropy needs a score per class"):
        check_data(conv, data(shape=(3, 8, 8), labels=[0] * 8), FinetuneConfig())
    maps = ArrayData(data(shape=(3, 8, 8)).x, np.zeros((8, 4, 6, 6)))  # MSE takes targets shaped like the output
    assert check_data(conv, maps, FinetuneConfig(loss="mse")).y.dtype == np.float32


def test_npz_loading(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 3)), y=np.zeros(4))
    assert len(load_npz(tmp_path / "ok.npz")) == 4
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0))
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 3)))
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 3)), y=np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    for name, needle in [
        ("empty.npz", "no samples"),
        ("noy.npz", "lacks array(s) ['y']"),
        ("short.npz", "x has 4 samples, y has 3"),
        ("junk.npz", "cannot read"),
        ("missing.npz", "not found"),
    ]:
        with pytest.raises(WncError) as exc:
            load_npz(tmp_path / name)
        assert needle in str(exc.value)


def test_config_is_checked_and_lr_decays_in_steps():
    cfg = FinetuneConfig(lr=1e-2, lr_step=5, lr_gamma=0.1)
    assert [round(cfg.lr_at(e), 8) for e in (0, 4, 5, 9, 10)] == [1e-2, 1e-2, 1e-3, 1e-3, 1e-4]
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"loss": "hinge"}, {"optimizer": "lbfgs"}, {"lr_gamma": 2.0}):
        with pytest.raises(WncError):
            FinetuneConfig(**bad)


def test_finetune_cli_without_the_training_build_is_one_line(tmp_path, monkeypatch, capsys):
    from tests.helpers import small_classifier
    from wnc_onnx.cli import main

    monkeypatch.setattr(rt, "installed", lambda: {"onnxruntime": "1.32.0"})  # the plain install, in any env
    onnx_path = tmp_path / "m.onnx"
    import onnx

    onnx.save(small_classifier(), onnx_path)
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4))
    code = main(["finetune", str(onnx_path), str(tmp_path / "out.onnx"), "--train", str(tmp_path / "t.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "fine-tuning needs onnxruntime-training-cpu 1.19.2" in err[0] and ".[train]" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "t.npz"]


def test_batch_sources_take_data_sets_reiterables_and_functions(model):
    from wnc_onnx.finetune.sources import BatchSource, model_spec

    spec = model_spec(model, "cross_entropy")
    arrays = data(n=10)
    src = BatchSource(arrays, spec, 4, shuffle=True, label="train data")
    first, again = list(src.epoch(0, seed=1)), list(src.epoch(0, seed=1))
    xs = [feeds["image"] for feeds, _ in first]  # batches come as (feeds by input name, labels)
    assert [len(x) for x in xs] == [4, 4, 2] and all(x.dtype == np.float32 for x in xs)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))  # a seeded order
    assert sorted(np.concatenate([y for _, y in first]).tolist()) == sorted(arrays.y.tolist())
    listed = [(arrays.x[:5], arrays.y[:5]), (arrays.x[5:], arrays.y[5:])]
    assert len(list(BatchSource(listed, spec, 4, shuffle=True, label="l").epoch(1))) == 2
    assert len(list(BatchSource(lambda: iter(listed), spec, 4, shuffle=True, label="f").epoch(1))) == 2
    for bad, needle in [
        (iter(listed), "one-shot iterator"),
        (42, "is a int"),
        (ArrayData(np.zeros((0, 3, 32, 32)), np.zeros(0)), "holds no samples"),
    ]:
        with pytest.raises(WncError, match=needle):
            BatchSource(bad, spec, 4, shuffle=False, label="train data")
    with pytest.raises(WncError, match="yielded no batches in epoch 1"):
        list(BatchSource([], spec, 4, shuffle=False, label="empty").epoch(0))
    with pytest.raises(WncError, match="x only has no labels, and this run trains on them"):
        list(BatchSource([arrays.x], spec, 4, shuffle=False, label="x only").epoch(0))
    with pytest.raises(WncError, match="not \\(x, y\\), \\(feeds, y\\), x or feeds"):
        list(BatchSource([42], spec, 4, shuffle=False, label="odd").epoch(0))


def test_frozen_batchnorm_round_trip_is_exact():
    import onnx

    from tests.helpers import run, small_classifier, with_batchnorm
    from wnc_onnx.finetune import frozen_bn

    model = with_batchnorm(small_classifier())
    affine = onnx.ModelProto()
    affine.CopyFrom(model)
    records = frozen_bn.to_affine(affine)
    assert [n.op_type for n in affine.graph.node][:3] == ["Conv", "Mul", "Add"]
    assert not {"bn.m", "bn.v"} & {t.name for t in affine.graph.initializer}  # nothing left to update them
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(affine, {"image": x})[0], run(model, {"image": x})[0], rtol=1e-5, atol=1e-5)
    frozen_bn.restore(affine, records, model)
    assert [n.op_type for n in affine.graph.node] == [n.op_type for n in model.graph.node]
    np.testing.assert_allclose(run(affine, {"image": x})[0], run(model, {"image": x})[0], rtol=1e-5, atol=1e-5)


def test_mse_targets_must_be_shaped_like_the_output(model):
    mse = FinetuneConfig(loss="mse")
    assert check_data(model, ArrayData(data().x, np.zeros((8, 10))), mse).y.dtype == np.float32
    with pytest.raises(WncError, match=r"targets have shape \[\], the model output 'logits' gives \['N', 10\]"):
        check_data(model, data(), mse)


def test_runtime_errors_become_one_line_and_nothing_else_is_caught():
    one_line = "^training step failed at batch 3: Invalid rank for input: target; fix: check"
    with pytest.raises(WncError, match=one_line), rt.runtime_errors("training step failed at batch 3", "check"):
        raise RuntimeError("Invalid rank for input:\n  target")  # what onnxruntime's bindings raise
    with pytest.raises(ValueError, match="a bug elsewhere"), rt.runtime_errors("training step failed", "check it"):
        raise ValueError("a bug elsewhere")


def test_scoring_a_model_too_large_to_serialize_goes_through_external_data(monkeypatch):
    """evaluate builds its session with the one session builder: above protobuf's 2 GB (here a
    limit lowered to a few KB) the model is written with external data instead of serialized."""
    from wnc_onnx.finetune.evaluate import evaluate
    from wnc_onnx.io import external_data, session

    model = demo_cnn()
    model.ir_version = 10  # the training environment's onnxruntime 1.19.2 reads IR <= 10
    rng = np.random.default_rng(0)
    data = ArrayData(rng.standard_normal((40, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 40))
    written = []
    real = external_data.write_data_file

    def spy(m, path, location):
        written.append(path)
        real(m, path, location)

    monkeypatch.setattr(session.external_data, "write_data_file", spy)
    inline = evaluate(model, data)
    assert written == []  # small: serialized in memory
    monkeypatch.setattr(external_data, "INLINE_LIMIT", 4096)
    assert evaluate(model, data) == inline and len(written) == 1
