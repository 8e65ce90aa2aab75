"""Data-aware factorizations (issue 12): fitted to the inputs' second moment, they beat the
data-free ones on the output error of held-out inputs, and are exact at full rank."""

import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from wnc_onnx.analyze.numeric.calibrated import PatchStats, data_fit, error_terms, sqrt_psd
from wnc_onnx.analyze.numeric.svd import truncated_svd
from wnc_onnx.analyze.numeric.tucker import tucker2


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


def stats_of(rows, channels, taps=1):
    """PatchStats of (M, channels * taps) rows, as the gathering computes them."""
    mean = rows.mean(axis=0)
    cov = rows.T @ rows / len(rows) - np.outer(mean, mean)
    return PatchStats(cov, mean, channels, taps, len(rows))


def test_matrix_fit_exact_at_full_rank_and_plain_svd_under_white_inputs():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 20))
    st = stats_of(correlated(500, 20, rng) + 2.0, 20)
    full = data_fit(w, None, 12, st)
    np.testing.assert_allclose(full.reconstruct(), w, atol=1e-9)
    assert full.out_error < 1e-9 and np.abs(full.shift).max() < 1e-9
    white = data_fit(w, None, 5, PatchStats(3.0 * np.eye(20), np.zeros(20), 20, 1))
    assert white.kernel_error == pytest.approx(truncated_svd(w, 5).rel_error, rel=1e-9)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_matrix_fit_lowers_the_held_out_output_error(shape):
    """Inputs with a mean (as after a ReLU): the covariance fit plus the bias shift beats both
    the plain SVD and the fit to the uncentered second moment."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape)
    x = correlated(2000, shape[1], rng) + rng.uniform(1, 3, shape[1])
    fit, held = x[:1000], x[1000:]
    st = stats_of(fit, shape[1])
    ours = data_fit(w, None, 6, st)
    uncentered = data_fit(w, None, 6, st, centered=False)
    plain = truncated_svd(w, 6).reconstruct()

    def err(wh, shift=None):
        out = held @ wh.T + (0 if shift is None else shift)
        return np.linalg.norm(held @ w.T - out) / np.linalg.norm(held @ w.T)

    assert err(ours.reconstruct(), ours.shift) < 0.5 * err(plain)
    assert err(ours.reconstruct(), ours.shift) < err(uncentered.reconstruct())
    assert uncentered.shift is None
    assert ours.out_error == pytest.approx(err(ours.reconstruct(), ours.shift), rel=0.2)  # predicts held-out


def conv(x, k):
    """Valid 2-d convolution (cross-correlation) of x (N, S, H, W) with k (T, S, kh, kw)."""
    win = sliding_window_view(x, k.shape[2:], axis=(2, 3))  # (N, S, H', W', kh, kw)
    return np.einsum("nshwij,tsij->nthw", win, k)


def images(n, s, rng, size=12):
    """Channel-correlated, spatially smooth inputs."""
    base = correlated(n * size * size, s, rng).reshape(n, size, size, s).transpose(0, 3, 1, 2)
    return (base + np.roll(base, 1, axis=2) + np.roll(base, 1, axis=3)) / 3


def test_patches_are_the_convolution_s_view_of_its_input():
    """Patches at every position reproduce the convolution (pads, strides, dilations, SAME)."""
    from wnc_onnx.analyze.calibration import Window

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 8))
    k = rng.standard_normal((4, 3, 3, 2))
    for window in (
        Window((3, 2), (1, 1), (1, 0, 1, 1), (1, 1)),
        Window((3, 2), (2, 1), (0, 1, 2, 0), (2, 1)),
        Window((3, 2), (2, 2), (0, 0, 0, 0), (1, 1), "SAME_UPPER"),
    ):
        rows = window.patches(x, 10**6, rng)
        out = rows @ k.reshape(4, -1).T  # (N * positions, T)
        import onnx
        import onnxruntime as ort
        from onnx import helper

        attrs = {"strides": list(window.strides), "dilations": list(window.dilations)}
        if window.auto_pad == "NOTSET":
            attrs["pads"] = list(window.pads)
        else:
            attrs["auto_pad"] = window.auto_pad
        node = helper.make_node("Conv", ["x", "k"], ["y"], **attrs)
        g = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", 1, list(x.shape))],
            [helper.make_tensor_value_info("y", 1, None)],
            [onnx.numpy_helper.from_array(k.astype(np.float32), "k")],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x.astype(np.float32)}
        )[0]
        np.testing.assert_allclose(out, y.transpose(0, 2, 3, 1).reshape(-1, 4), rtol=1e-4, atol=1e-4)
        few = window.patches(x, 5, np.random.default_rng(0))  # a random subset of the same rows
        assert len(few) == 5 and all(any(np.allclose(r, q) for q in rows) for r in few)


def conv_stats(x, kernel_hw, full=True):
    from wnc_onnx.analyze.calibration import Window

    s = x.shape[1]
    rows = Window(kernel_hw, (1, 1), (1, 1, 1, 1), (1, 1)).patches(x, 10**7, np.random.default_rng(0))
    st = stats_of(rows, s, int(np.prod(kernel_hw)))
    if full:
        return st
    return PatchStats(st.channel(True), st.mean.reshape(s, -1).mean(1), s, st.taps, st.count)


def test_tucker2_fit_exact_at_full_rank_and_hooi_under_white_inputs():
    rng = np.random.default_rng(3)
    k = rng.standard_normal((10, 8, 3, 3))
    st = conv_stats(images(20, 8, rng) + 1.0, (3, 3))
    full = data_fit(k, 8, 10, st)
    np.testing.assert_allclose(full.reconstruct(), k, atol=1e-9)
    white = data_fit(k, 4, 5, PatchStats(np.eye(8), np.zeros(8), 8, 9))
    hooi = tucker2(k, 4, 5)
    assert white.kernel_error == pytest.approx(hooi.rel_error, rel=1e-3)
    assert white.out_error == pytest.approx(white.kernel_error, rel=1e-9)


def test_tucker2_fit_lowers_the_held_out_output_error_of_a_real_convolution():
    """Spatially smooth, channel-correlated inputs with a mean: the full patch covariance beats the
    channel-only model, which beats the data-free HOOI; the modelled error predicts held-out data."""
    rng = np.random.default_rng(4)
    k = rng.standard_normal((24, 16, 3, 3))
    x = images(64, 16, rng) + rng.uniform(0.5, 2, 16)[None, :, None, None]
    fit, held = x[:32], x[32:]
    xp = np.pad(held, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = conv(xp, k)

    def err(f):
        out = conv(xp, f.reconstruct()) + f.shift[None, :, None, None]
        return np.linalg.norm(out - ref) / np.linalg.norm(ref)

    full = data_fit(k, 6, 8, conv_stats(fit, (3, 3)))
    channel = data_fit(k, 6, 8, conv_stats(fit, (3, 3), full=False))
    plain = tucker2(k, 6, 8).reconstruct()
    plain_err = np.linalg.norm(conv(xp, plain) - ref) / np.linalg.norm(ref)
    assert err(full) < err(channel) < 0.7 * plain_err
    assert full.out_error == pytest.approx(err(full), rel=0.1)
    num, den = error_terms(k, plain, conv_stats(fit, (3, 3)), shifted=False)
    assert full.out_error < np.sqrt(num / den)


# -- gathering the moments on calibration data ---------------------------------------------


def _demo_taps():
    import onnx

    from wnc_onnx import inspect, zoo
    from wnc_onnx.analyze.calibration import Tap

    model = zoo.demo_cnn()
    plan = inspect(model)
    taps = [
        Tap(r.name, r.input_tensor, 1 if r.op_type == "Conv" else -1)
        for r in plan.layers
        if r.input_tensor and r.name != "fc1"  # 8192 features: slow to check, nothing new
    ]
    assert len(taps) >= 4
    return onnx.load_from_string(model.SerializeToString()), taps


def test_gathered_moments_equal_numpy_on_all_the_data_at_once(tmp_path):
    import onnxruntime as ort

    from wnc_onnx.analyze.calibration import gather

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
        st = cal.layers[tap.layer].stats()
        np.testing.assert_allclose(st.mean, flat.mean(axis=0), rtol=1e-5, atol=1e-6)
        cov = np.cov(flat, rowvar=False, bias=True)
        np.testing.assert_allclose(st.cov, cov, rtol=1e-4, atol=1e-5 * np.abs(cov).max())
    # an iterable of feed dicts, cut differently, gives the same statistics
    again = gather(model, [{"image": x[:20]}, {"image": x[20:]}], taps)
    for name, m in cal.layers.items():
        a, b = again.layers[name].stats(), m.stats()
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.cov, b.cov, rtol=1e-4, atol=1e-5 * np.abs(b.cov).max())
    # fc2 reads 256 features: 37 samples cannot estimate their covariance, and it says how many it needs
    assert cal.needed().get("fc2") == 257


def test_patch_moments_full_and_channel_only_agree(monkeypatch):
    """Wide patches keep only the channel covariance (MAX_FULL); it equals the full one's average
    diagonal block, and few patches fall back to it too."""
    from wnc_onnx.analyze import calibration
    from wnc_onnx.analyze.calibration import Moments, Window

    rng = np.random.default_rng(9)
    x = images(6, 5, rng) + 1.5
    rows = Window((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)).patches(x, 10**6, rng)
    full = Moments.empty(5, 9)
    full.add(rows)
    monkeypatch.setattr(calibration, "MAX_FULL", 8)
    narrow = Moments.empty(5, 9)
    narrow.add(rows)
    assert full.full and not narrow.full
    a, b = full.stats(), narrow.stats()
    m = a.mean.reshape(5, 9).mean(1)  # pooled over the taps
    np.testing.assert_allclose(b.patch_mean(), m[:, None].repeat(9, 1), rtol=1e-6)
    np.testing.assert_allclose(b.cov, a.channel(False) - np.outer(m, m), rtol=1e-5, atol=1e-5)
    few = Moments.empty(5, 9)
    few.add(rows[:20])  # 20 patches cannot estimate a 45 x 45 covariance: the channel one it is
    assert not few.stats().full and few.stats().cov.shape == (5, 5)


def test_float32_moments_keep_a_small_spread_under_a_large_mean():
    """The sums are float32, taken about the first batch's mean: inputs of mean 300 and
    spread 1 (where E[x x^T] - m m^T would cancel 5 digits) still give the covariance."""
    from wnc_onnx.analyze.calibration import Moments

    rng = np.random.default_rng(4)
    mix = rng.standard_normal((6, 6))
    rows = (rng.standard_normal((3000, 6)) @ mix + 300.0).astype(np.float32)
    m = Moments.empty(6, 1)
    for part in np.array_split(rows, 7):
        m.add(part)
    st = m.stats()
    want = np.cov(rows.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(st.cov, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.mean, rows.mean(axis=0, dtype=np.float64), rtol=1e-7)


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
    from wnc_onnx.analyze.calibration import gather
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
        args = [str(tmp_path / "m.onnx"), str(bad), "--calibration", str(tmp_path / data), "-q", "--include", "^fc2$"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "fix:" in err[0]
        assert not bad.exists()
    # too few for fc2 alone: the others are fitted to the data, fc2 without, and a note says so
    assert main([str(tmp_path / "m.onnx"), str(out), "--calibration", str(tmp_path / "few.npz"), "-q"]) == 0
    table = capsys.readouterr().out
    assert "1 layer(s) fitted without data" in table and "'fc2': 20 for 256 channels; give at least 257" in table
    fc2 = next(ln for ln in table.splitlines() if ln.startswith("fc2"))
    assert not re.search(r"\d\.\d{3} \(\d", fc2)  # no "data err (free)": fitted data-free


def test_a_pointwise_conv_and_a_fixed_batch_model_calibrate(tmp_path):
    """A 1x1 conv takes the Tucker-1 form as in the data-free pass (its kernel is 4-d), and a
    model whose batch size is fixed at 1 reads an .npz of many samples one batch at a time."""
    from tests.helpers import conv_model
    from wnc_onnx import compress
    from wnc_onnx.analyze.calibration import Tap, gather

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


# -- --max-error: ranks chosen for an output-error budget on the data ----------------------------


def _demo_split(tmp_path):
    from wnc_onnx import zoo

    model = zoo.demo_cnn()
    np.savez(tmp_path / "cal.npz", image=_images(96, 1))
    return model, _images(64, 2)


def test_max_error_holds_on_held_out_inputs_with_fewer_macs_for_a_looser_budget(tmp_path, monkeypatch):
    """... and each layer is fitted once per ranks, however many builds reuse them."""
    from wnc_onnx import compress
    from wnc_onnx.check.verify import verify
    from wnc_onnx.rewrite.budget import SCALES
    from wnc_onnx.rewrite.passes import lowrank_factor as lowrank

    fits = []
    real = lowrank.data_fit
    monkeypatch.setattr(
        lowrank,
        "data_fit",
        lambda k, r_in, r_out, *a, **kw: fits.append((k.shape, r_in, r_out)) or real(k, r_in, r_out, *a, **kw),
    )
    model, held = _demo_split(tmp_path)
    macs = []
    for budget in (0.05, 0.2):
        fits.clear()
        out, rep = compress(model, calibration=tmp_path / "cal.npz", max_error=budget, exclude="^fc")
        assert len(fits) == len(set(fits)) and rep.extras["max_error"]["builds"] > len(SCALES)
        info = rep.extras["max_error"]
        assert info["target"] == budget and info["measured"] <= budget
        assert verify(model, out, inputs={"image": held}).worst_rel <= budget  # inputs never seen
        assert rep.totals.decomposed >= 1
        assert set(info["layers"]) == {r.name for r in rep.layers if r.data_error is not None} | set(
            n for n, v in info["layers"].items() if v["scale"] is None
        )
        macs.append(rep.totals.to_dict()["macs_ratio"])
    assert macs[1] > macs[0]  # a looser budget buys more compression


def test_max_error_bad_use_is_one_line_and_exit_2(tmp_path, capsys):
    import onnx

    from wnc_onnx import zoo
    from wnc_onnx.cli import main

    onnx.save(zoo.demo_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", image=_images(96, 1))
    out = tmp_path / "o.onnx"
    for args, needle in (
        (["--max-error", "0.05"], "--max-error measures the error on calibration data: give --calibration"),
        (["--max-error", "-1", "--calibration", str(tmp_path / "cal.npz")], "must be > 0"),
        (["--max-error", "1e-9", "--calibration", str(tmp_path / "cal.npz")], "cannot be met"),
    ):
        assert main([str(tmp_path / "m.onnx"), str(out), "-q", "--exclude", "^fc", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "fix:" in err[0], err
        assert not out.exists()


def test_an_image_folder_calibrates_like_the_same_pixels_in_an_npz(tmp_path):
    """Unlabeled images (nested or not) are read, resized and normalized as finetune reads them."""
    from PIL import Image

    from wnc_onnx import compress, zoo

    model = zoo.demo_cnn()  # image: [N, 3, 32, 32]
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "imgs" / ("sub" if i % 2 else "") / f"{i:03d}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    order = [int(f.stem) for f in files]
    x = ((pixels[order].astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2)
    np.savez(tmp_path / "same.npz", image=x)
    ranks = {"conv2": [6, 10]}
    a, rep_a = compress(
        model,
        include="^conv2$",
        ranks=ranks,
        calibration=tmp_path / "imgs",
        calibration_mean=(0.5,),
        calibration_std=(0.25,),
    )
    b, rep_b = compress(model, include="^conv2$", ranks=ranks, calibration=tmp_path / "same.npz")
    assert rep_a.layers[1].data_error == pytest.approx(rep_b.layers[1].data_error, rel=1e-5)
    empty = tmp_path / "empty"
    empty.mkdir()
    from wnc_onnx.errors import WncError

    with pytest.raises(WncError, match="holds no images"):
        compress(model, calibration=empty)


def test_batches_from_a_generator_are_read_once_and_measured_on_the_kept_samples(tmp_path):
    """A one-shot iterator is read once: its first 64 samples and the original's outputs on
    them are kept while the statistics are gathered, and the report's error is measured on
    them (the figure onnxruntime gives for both models on those samples); --max-error, which
    builds many times, measures on all of them (up to 256) without a second read."""
    import onnxruntime as ort

    from wnc_onnx import compress, zoo
    from wnc_onnx.check.verify import compare_output, output_kind

    model = zoo.demo_cnn()
    x = _images(96, 1)

    def gen():
        for i in range(0, 96, 32):
            yield {"image": x[i : i + 32]}

    small, rep = compress(model, exclude="^fc", calibration=gen())
    assert not any("read once" in w for w in rep.warnings) and rep.extras["calibration"]["samples"] == 64
    assert all(r.data_error is not None for r in rep.layers if r.status == "decomposed")
    name = model.graph.output[0].name
    a, b = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x[:64]})[0]
        for m in (model, small)
    )
    want = compare_output(name, output_kind(model, name, a), a, b).error
    assert rep.extras["calibration"]["output_error"] == pytest.approx(want, rel=1e-4)
    _, rep = compress(model, exclude="^fc", calibration=gen(), max_error=0.1)
    assert rep.extras["calibration"]["samples"] == 96 and rep.extras["calibration"]["output_error"] <= 0.1


def test_data_spectra_give_the_output_error_of_the_best_output_projection():
    """The output covariance's eigenvalues past R are the output error of the data fit at R
    output channels with the input side whole (Tucker-1; the mean's error moved into the bias):
    what --target-speedup weighs with data, relative to the output's variance."""
    from wnc_onnx.analyze.numeric.calibrated import data_spectra

    rng = np.random.default_rng(6)
    k = rng.standard_normal((20, 8, 3, 3))
    x = images(32, 8, rng) + 0.7
    st = conv_stats(x, (3, 3))
    out, inner = data_spectra(k, st, centered=True)
    assert inner is not None and len(inner) == 8 and len(out) == 20 and np.all(np.diff(out) <= 1e-9)
    for r in (3, 8, 15):
        fit = data_fit(k, None, r, st)
        assert fit.terms[0] == pytest.approx(out[r:].sum(), rel=1e-4)


def test_max_error_on_an_argmax_model_is_measured_at_its_scores():
    """A model ending in ArgMax: --max-error used to measure the class indices (an error of 1.55
    on a recognizer, no ranks could meet any budget); it measures the scores ArgMax reads."""
    from tests.test_figures import argmax_head
    from wnc_onnx import compress
    from wnc_onnx.check.verify import verify
    from wnc_onnx.zoo import demo_cnn

    model = argmax_head(demo_cnn())
    small, rep = compress(model, calibration=[{"image": _images(96, 1)}], max_error=0.1, exclude="^fc")
    cal = rep.extras["calibration"]
    assert cal["measured_at"] == {"label": "logits"} and 0 < cal["output_error"] <= 0.1
    assert rep.totals.decomposed > 0 and "(at 'logits' for 'label')" in rep.to_table()
    held = verify(model, small, inputs={"image": _images(64, 2)})
    assert held.outputs[0].measured_at == "logits" and held.worst_rel < 0.15
    assert small.graph.node[-1].op_type == "ArgMax" and small.graph.output[0].type.tensor_type.elem_type == 7


def test_an_unreachable_max_error_is_said_before_the_search(monkeypatch):
    """An unreachable budget used to take the whole search (500 s on a recognizer); a few probes
    (the least-error layers alone, at the largest ranks) say so first."""
    from wnc_onnx import compress
    from wnc_onnx.errors import WncError
    from wnc_onnx.rewrite import budget
    from wnc_onnx.zoo import demo_cnn

    builds = []
    real = budget._Runner.compress
    monkeypatch.setattr(budget._Runner, "compress", lambda self, *a, **k: builds.append(k) or real(self, *a, **k))
    with pytest.raises(WncError, match=r"cannot be met .* the least error found is .* were each tried alone"):
        compress(demo_cnn(), calibration=[{"image": _images(96, 1)}], max_error=1e-9, exclude="^fc")
    # EVBMF's ranks, then the probes' builds (per probe, scales down to the largest that saves something)
    assert builds[0] == {} and all(set(k["keep_whole"].values()) == {"probe"} for k in builds[1:])
    assert len(builds) <= 1 + budget.PROBES * len(budget.SCALES)


def test_arrays_in_memory_calibrate_like_the_same_npz(tmp_path):
    """The Python API takes the arrays finetune takes (InputArrays, or {input: array}) as
    calibration data, cut into batches as an .npz is; anything else is one error."""
    from wnc_onnx import compress, zoo
    from wnc_onnx.data.arrays import InputArrays
    from wnc_onnx.errors import WncError

    model = zoo.demo_cnn()
    x = _images(80, 4)
    np.savez(tmp_path / "cal.npz", image=x)
    ranks = {"conv2": [6, 10]}
    errors = []
    for data in (tmp_path / "cal.npz", InputArrays({"image": x}), {"image": x}, {"any_name": x}):
        _, rep = compress(model, include="^conv2$", ranks=ranks, calibration=data)
        errors.append((rep.layers[1].data_error, rep.extras["calibration"]["output_error"]))
    assert errors[0][0] is not None and errors[0][1] > 0
    for got in errors[1:]:
        assert got == pytest.approx(errors[0], rel=1e-6)
    assert rep.to_dict()["config"]["calibration"] == "<arrays>"
    for bad, needle in ((42, "cannot read a int"), ({"image": [1.0, 2.0]}, "one numpy array per model input")):
        with pytest.raises(WncError, match=needle):
            compress(model, include="^conv2$", ranks=ranks, calibration=bad)
