import numpy as np
import pytest

from wnc_onnx.analyze.numeric import truncated_svd, tucker1, tucker2
from wnc_onnx.zoo import planted_kernel


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (6, 10, 5), (8, 4, 3, 3, 3), (12, 9, 1, 1)])
def test_full_rank_is_exact(shape):
    k = np.random.default_rng(0).standard_normal(shape)
    t = tucker2(k, shape[1], shape[0])
    assert t.rel_error < 1e-6  # sqrt of a difference of norms: ~sqrt(eps) resolution
    np.testing.assert_allclose(t.reconstruct(), k, atol=1e-10)
    t1 = tucker1(k, shape[0])
    np.testing.assert_allclose(t1.reconstruct(), k, atol=1e-10)


def test_reported_error_is_the_reconstruction_error_and_hooi_helps():
    k = np.random.default_rng(1).standard_normal((32, 24, 3, 3))
    hosvd = tucker2(k, 8, 10, max_iter=0)
    hooi = tucker2(k, 8, 10, max_iter=50, tol=1e-9)
    for t in (hosvd, hooi):
        assert t.rel_error == pytest.approx(rel(t.reconstruct(), k), rel=1e-9)
        assert t.core.shape == (10, 8, 3, 3)
        np.testing.assert_allclose(t.u_in.T @ t.u_in, np.eye(8), atol=1e-10)
        np.testing.assert_allclose(t.u_out.T @ t.u_out, np.eye(10), atol=1e-10)
    assert hooi.iterations > 0
    assert hooi.rel_error <= hosvd.rel_error + 1e-12


def test_recovers_planted_tucker_structure():
    rng = np.random.default_rng(2)
    k = planted_kernel(rng, 64, 48, (3, 3), 12, 20, noise=0.0).astype(np.float64)
    assert tucker2(k, 12, 20).rel_error < 1e-6
    assert tucker2(k, 11, 20).rel_error > 1e-3


def test_tucker1_and_svd_are_optimal():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 70))
    s = np.linalg.svd(w, compute_uv=False)
    best = np.sqrt(np.sum(s[10:] ** 2) / np.sum(s**2))
    f = truncated_svd(w, 10)
    assert f.left.shape == (40, 10) and f.right.shape == (10, 70)
    assert rel(f.reconstruct(), w) == pytest.approx(best, rel=1e-9)
    assert f.rel_error == pytest.approx(best, rel=1e-9)
    # balanced split: equal column / row norms
    np.testing.assert_allclose(np.linalg.norm(f.left, axis=0), np.linalg.norm(f.right, axis=1), rtol=1e-9)
    ft = truncated_svd(w.T, 10)
    assert rel(ft.reconstruct(), w.T) == pytest.approx(best, rel=1e-9)
    t1 = tucker1(w.reshape(40, 7, 10), 10)
    assert t1.rel_error == pytest.approx(best, rel=1e-9)
