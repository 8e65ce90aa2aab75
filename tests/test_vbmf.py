import numpy as np
import pytest

from wnc_onnx.numeric import evbmf, evbmf_from_eigenvalues, mode_gram, sym_eigvals


def planted(rng, L, M, r, noise):
    signal = rng.standard_normal((L, r)) @ rng.standard_normal((r, M)) if r else np.zeros((L, M))
    return signal + noise * rng.standard_normal((L, M))


@pytest.mark.parametrize("L,M,r", [(20, 40, 3), (64, 200, 7), (200, 64, 11), (96, 3 * 3 * 64, 25), (128, 128, 40)])
def test_recovers_planted_rank(L, M, r):
    rng = np.random.default_rng(L + M + r)
    y = planted(rng, L, M, r, noise=0.5)
    res = evbmf(y)
    assert res.rank == r
    # the estimated noise variance is near the planted one (biased up when the rank is a large fraction)
    assert res.sigma2 == pytest.approx(0.25, rel=0.3)


@pytest.mark.parametrize("shape", [(10, 10), (30, 500), (500, 30), (256, 2304)])
def test_pure_noise_is_rank_zero(shape):
    rng = np.random.default_rng(sum(shape))
    assert evbmf(rng.standard_normal(shape)).rank == 0


def test_degenerate_inputs_do_not_crash():
    assert evbmf(np.zeros((5, 8))).rank == 0
    assert evbmf(np.ones((1, 6))).rank in (0, 1)
    exact = np.outer(np.arange(1, 7), np.arange(1, 9)).astype(float)  # rank 1, no noise
    assert evbmf(exact).rank == 1


def test_scale_invariance_and_orientation():
    rng = np.random.default_rng(3)
    y = planted(rng, 40, 90, 6, 0.3)
    ranks = {evbmf(y * s).rank for s in (1e-6, 1.0, 1e5)} | {evbmf(y.T).rank}
    assert ranks == {6}


def test_gram_route_matches_svd_route():
    rng = np.random.default_rng(4)
    y = planted(rng, 50, 300, 9, 0.4)
    direct = evbmf(y)
    via_gram = evbmf_from_eigenvalues(sym_eigvals(mode_gram(y, 0)), y.shape)
    assert via_gram.rank == direct.rank == 9
    assert via_gram.sigma2 == pytest.approx(direct.sigma2, rel=1e-6)


def test_known_noise_variance_and_shrinkage():
    rng = np.random.default_rng(5)
    y = planted(rng, 30, 60, 4, 0.2)
    res = evbmf(y, sigma2=0.04)
    assert res.rank == 4
    shrunk = res.shrunk
    assert shrunk.shape == (4,)
    assert np.all(shrunk < res.singular_values[:4]) and np.all(shrunk > 0)


def test_mode_gram_matches_matricization():
    rng = np.random.default_rng(6)
    k = rng.standard_normal((12, 7, 3, 3))
    for mode in (0, 1):
        m = np.moveaxis(k, mode, 0).reshape(k.shape[mode], -1)
        np.testing.assert_allclose(mode_gram(k, mode), m @ m.T, rtol=1e-10, atol=1e-10)
