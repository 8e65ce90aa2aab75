"""Data-aware factorizations (issue 12): fitted to the inputs' second moment, they beat the
data-free ones on the output error of held-out inputs, and are exact at full rank."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from wnc_onnx.numeric.calibrated import data_svd, data_tucker2, output_error, sqrt_psd
from wnc_onnx.numeric.svd import truncated_svd
from wnc_onnx.numeric.tucker import tucker2


def correlated(n, dim, rng, decay=0.7):
    """Inputs with a decaying spectrum in a random basis (as real activations have)."""
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    return (rng.standard_normal((n, dim)) * decay ** np.arange(dim) * 3) @ basis.T


def test_sqrt_psd_and_its_pseudo_inverse():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 3))
    c = a @ a.T  # rank 3
    half, inv = sqrt_psd(c)
    np.testing.assert_allclose(half @ half, c, atol=1e-10)
    np.testing.assert_allclose(half @ inv @ half, half, atol=1e-8)


def test_data_svd_exact_at_full_rank_and_plain_svd_under_white_inputs():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 20))
    c = np.cov(correlated(500, 20, rng).T)
    full = data_svd(w, c, 12)
    np.testing.assert_allclose(full.factors.reconstruct(), w, atol=1e-9)
    assert full.out_error < 1e-9
    white = data_svd(w, 3.0 * np.eye(20), 5)
    assert white.factors.rel_error == pytest.approx(truncated_svd(w, 5).rel_error, rel=1e-9)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_data_svd_lowers_the_held_out_output_error(shape):
    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape)
    x = correlated(2000, shape[1], rng)
    fit, held = x[:1000], x[1000:]
    c = fit.T @ fit / len(fit)
    ours = data_svd(w, c, 6).factors.reconstruct()
    plain = truncated_svd(w, 6).reconstruct()

    def err(wh):
        return np.linalg.norm(held @ (w - wh).T) / np.linalg.norm(held @ w.T)

    assert err(ours) < 0.5 * err(plain)
    assert data_svd(w, c, 6).out_error == pytest.approx(output_error(w, ours, c))
    assert data_svd(w, c, 6).out_error == pytest.approx(err(ours), rel=0.2)  # the fit set predicts held-out


def conv(x, k):
    """Valid 2-d convolution (cross-correlation) of x (N, S, H, W) with k (T, S, kh, kw)."""
    win = sliding_window_view(x, k.shape[2:], axis=(2, 3))  # (N, S, H', W', kh, kw)
    return np.einsum("nshwij,tsij->nthw", win, k)


def images(n, s, rng, size=12):
    """Channel-correlated, spatially smooth inputs."""
    base = correlated(n * size * size, s, rng).reshape(n, size, size, s).transpose(0, 3, 1, 2)
    return (base + np.roll(base, 1, axis=2) + np.roll(base, 1, axis=3)) / 3


def test_data_tucker2_exact_at_full_rank_and_hooi_under_white_inputs():
    rng = np.random.default_rng(3)
    k = rng.standard_normal((10, 8, 3, 3))
    c = np.cov(correlated(400, 8, rng).T)
    full = data_tucker2(k, 8, 10, c)
    np.testing.assert_allclose(full.factors.reconstruct(), k, atol=1e-9)
    white = data_tucker2(k, 4, 5, np.eye(8))
    hooi = tucker2(k, 4, 5)
    assert white.factors.rel_error == pytest.approx(hooi.rel_error, rel=1e-3)
    assert white.out_error == pytest.approx(white.factors.rel_error, rel=1e-9)


def test_data_tucker2_lowers_the_held_out_output_error_of_a_real_convolution():
    rng = np.random.default_rng(4)
    k = rng.standard_normal((24, 16, 3, 3))
    x = images(64, 16, rng)
    fit, held = x[:32], x[32:]
    flat = fit.transpose(0, 2, 3, 1).reshape(-1, 16)
    c_in = flat.T @ flat / len(flat)
    ours = data_tucker2(k, 6, 8, c_in)
    plain = tucker2(k, 6, 8)
    ref = conv(held, k)

    def err(kh):
        return np.linalg.norm(conv(held, kh) - ref) / np.linalg.norm(ref)

    assert err(ours.factors.reconstruct()) < 0.7 * err(plain.reconstruct())  # 0.51 against 0.85
    assert ours.out_error == pytest.approx(err(ours.factors.reconstruct()), rel=0.1)  # the model predicts held-out data
    assert ours.out_error == pytest.approx(output_error(k, ours.factors.reconstruct(), c_in))
    assert ours.out_error < output_error(k, plain.reconstruct(), c_in)


# -- gathering the moments on calibration data ---------------------------------------------


def _demo_taps():
    import onnx

    from wnc_onnx import inspect, zoo
    from wnc_onnx.calibration import Tap

    model = zoo.demo_cnn()
    plan = inspect(model)
    taps = [Tap(r.name, r.input_tensor, 1 if r.op_type == "Conv" else -1) for r in plan.layers if r.input_tensor]
    assert len(taps) >= 4
    return onnx.load_from_string(model.SerializeToString()), taps


def test_gathered_moments_equal_numpy_on_all_the_data_at_once(tmp_path):
    import onnxruntime as ort

    from wnc_onnx.calibration import gather

    model, taps = _demo_taps()
    x = np.random.default_rng(5).standard_normal((37, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", image=x)
    cal = gather(model, tmp_path / "cal.npz", taps)
    assert cal.samples == 37 and cal.batches == 3  # batches of 16: memory bounded by the statistics
    probe = onnx_with_outputs(model, [tap.tensor for tap in taps])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x}), strict=True))
    for tap in taps:
        v = np.moveaxis(values[tap.tensor].astype(np.float64), tap.channel_axis, -1)
        flat = v.reshape(-1, v.shape[-1])
        np.testing.assert_allclose(cal.layers[tap.layer].second, flat.T @ flat / len(flat), rtol=1e-6, atol=1e-9)
    # an iterable of feed dicts gives the same sums
    again = gather(model, [{"image": x[:20]}, {"image": x[20:]}], taps)
    for name, st in cal.layers.items():
        np.testing.assert_allclose(again.layers[name].outer, st.outer, rtol=1e-6, atol=1e-6)
    # fc1 reads 8192 features: 37 samples cannot estimate its moment, and it says how many it needs
    assert cal.needed().get("fc1") == 8192


def onnx_with_outputs(model, names):
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(names) if t not in have)
    return probe


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"image": np.zeros((4, 3, 16, 16), np.float32)}, "has shape [4, 3, 16, 16], the model takes [?,3,32,32]"),
        ({"image": np.zeros((4, 3, 32, 32), np.complex64)}, "is complex64"),
        ({"a": np.zeros((4, 3, 32, 32), np.float32), "b": np.zeros(4)}, "lacks input(s) ['image']"),
        ({"image": np.zeros((0, 3, 32, 32), np.float32)}, "hold no samples"),
    ],
)
def test_calibration_data_that_do_not_fit_are_one_error(tmp_path, data, needle):
    from wnc_onnx.calibration import gather
    from wnc_onnx.errors import WncError

    model, taps = _demo_taps()
    np.savez(tmp_path / "cal.npz", **data)
    with pytest.raises(WncError) as err:
        gather(model, tmp_path / "cal.npz", taps)
    assert needle in str(err.value) and "fix:" in str(err.value)


# -- the low-rank pass with --calibration ------------------------------------------------------


def _images(n, seed):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((3, 3)))[0]  # one distribution
    x = ((rng.standard_normal((n, 32, 32, 3)) * [3.0, 1.0, 0.2]) @ basis.T).transpose(0, 3, 1, 2)
    return ((x + np.roll(x, 1, 2) + np.roll(x, 1, 3)) / 3).astype(np.float32)


def _held_out_error(original, compressed, x):
    import onnxruntime as ort

    def run(m):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"image": x})[0].astype(np.float64)

    a, b = run(original), run(compressed)
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a**2)))


def test_calibration_lowers_the_held_out_output_error_at_the_same_ranks(tmp_path):
    from wnc_onnx import compress, zoo

    model = zoo.demo_cnn()
    np.savez(tmp_path / "cal.npz", image=_images(300, 1))
    held = _images(100, 2)
    ranks = {"conv2": [6, 10], "conv3": [10, 16], "conv4": [12, 16]}
    plain, _ = compress(model, exclude="^fc", ranks=ranks)
    fitted, rep = compress(model, exclude="^fc", ranks=ranks, calibration=tmp_path / "cal.npz")
    free_err, data_err = _held_out_error(model, plain, held), _held_out_error(model, fitted, held)
    assert data_err < 0.75 * free_err  # 0.50 against 0.82
    convs = [r for r in rep.layers if r.status == "decomposed"]
    assert len(convs) == 4
    for r in convs:
        assert r.data_error is not None and r.data_error <= 1.001 * r.data_error_free
    assert rep.to_dict()["config"]["calibration"] == str(tmp_path / "cal.npz")
    # full rank stays exact
    full = {"conv1": 32, "conv2": [32, 64], "conv3": [64, 128], "conv4": [128, 128]}
    exact, _ = compress(model, exclude="^fc", ranks=full, require_savings=False, calibration=tmp_path / "cal.npz")
    assert _held_out_error(model, exact, held) < 1e-4


def test_cli_calibration_table_and_bad_data(tmp_path, capsys):
    import onnx

    from wnc_onnx import zoo
    from wnc_onnx.cli import main

    onnx.save(zoo.demo_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", image=_images(300, 1))
    out = tmp_path / "o.onnx"
    assert main([str(tmp_path / "m.onnx"), str(out), "--calibration", str(tmp_path / "cal.npz"), "-q"]) == 0
    table = capsys.readouterr().out
    assert "data err (free)" in table
    conv3 = next(ln for ln in table.splitlines() if ln.startswith("conv3"))
    assert "(" in conv3.split("decomposed")[0]
    np.savez(tmp_path / "few.npz", image=_images(20, 1))
    np.savez(tmp_path / "bad.npz", image=_images(20, 1)[:, :, :16])
    for data, needle in (("few.npz", "too few"), ("bad.npz", "has shape")):
        bad = tmp_path / "bad.onnx"
        assert main([str(tmp_path / "m.onnx"), str(bad), "--calibration", str(tmp_path / data), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "fix:" in err[0]
        assert not bad.exists()


def test_a_pointwise_conv_and_a_fixed_batch_model_calibrate(tmp_path):
    """A 1x1 conv takes the Tucker-1 form as in the data-free pass (its kernel is 4-d), and a
    model whose batch size is fixed at 1 reads an .npz of many samples one batch at a time."""
    from tests.helpers import conv_model
    from wnc_onnx import compress
    from wnc_onnx.calibration import Tap, gather

    model = conv_model(16, 32, (1, 1), (12, 12))  # input x: [1, 16, 12, 12]
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((40, 12, 12, 16)) * 0.8 ** np.arange(16)).transpose(0, 3, 1, 2).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    out, rep = compress(model, ranks={"conv": 8}, calibration=tmp_path / "cal.npz")
    (layer,) = rep.layers
    assert layer.status == "decomposed" and layer.data_error < layer.data_error_free
    assert _conv_output_error(model, out, x) < _conv_output_error(model, compress(model, ranks={"conv": 8})[0], x)
    assert gather(model, tmp_path / "cal.npz", [Tap("conv", "x", 1)]).batches == 40


def _conv_output_error(original, compressed, x):
    import onnxruntime as ort

    def run(m):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]).astype(np.float64)

    a, b = run(original), run(compressed)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))
