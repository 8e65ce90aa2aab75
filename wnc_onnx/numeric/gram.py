"""Gram matrices of tensor matricizations and symmetric eigen-solvers.

Both VBMF (all eigenvalues) and the Tucker/SVD factors (top eigenvectors) come from
the Gram matrix of the small side, which is far cheaper than an SVD of the wide
matricization. Large problems are computed in float32 blocks, accumulated in float64.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

# Above this many multiply-adds a Gram product runs in float32 (error ~1e-7 relative).
_FLOAT64_FLOPS = 2e10
# Above this order, eigenvectors are computed in float32 (twice as fast here).
_FLOAT64_EIG_MAX = 2048
_BLOCK_BYTES = 64 << 20


def work_dtype(rows: int, cols: int) -> type[np.floating]:
    """float64 for small products, float32 where the cost would dominate the run."""
    return np.float64 if float(rows) * rows * cols <= _FLOAT64_FLOPS else np.float32


def mode_gram(tensor: np.ndarray, mode: int) -> np.ndarray:
    """Gram matrix X_(mode) X_(mode)^T of the mode-``mode`` matricization (float64).

    Computed block by block so the matricization is never materialized whole.
    """
    t = np.asarray(tensor)
    n = t.shape[mode]
    other = t.size // max(n, 1)
    dt = work_dtype(n, other)
    g = np.zeros((n, n), dtype=np.float64)
    if t.size == 0:
        return g
    moved = np.moveaxis(t, mode, 0)  # view: (n, a0, a1, ...)
    if mode == 0:
        flat = moved.reshape(n, other)
        step = max(1, _BLOCK_BYTES // (n * 8))
        for c0 in range(0, other, step):
            blk = flat[:, c0 : c0 + step].astype(dt, copy=False)
            g += blk @ blk.T
        return g
    # Iterate over the leading axis of the original tensor: each slice is (n, rest).
    lead = t.shape[0]
    per = other // lead
    step = max(1, _BLOCK_BYTES // max(1, n * per * 8))
    for a0 in range(0, lead, step):
        sl = np.moveaxis(t[a0 : a0 + step], mode, 0)
        blk = np.ascontiguousarray(sl, dtype=dt).reshape(n, -1)
        g += blk @ blk.T
    return g


def sym_eigvals(gram: np.ndarray) -> np.ndarray:
    """All eigenvalues of a symmetric PSD matrix, descending, clipped at zero."""
    w = scipy.linalg.eigh(gram, eigvals_only=True, driver="ev", check_finite=False)
    return np.clip(w[::-1], 0.0, None)


def sym_eig_top(gram: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``r`` eigenpairs (descending) of a symmetric PSD matrix: values, vectors (n x r)."""
    n = gram.shape[0]
    r = int(min(max(r, 0), n))
    if r == 0:
        return np.zeros(0), np.zeros((n, 0))
    g = gram if n <= _FLOAT64_EIG_MAX else gram.astype(np.float32)
    if r == n:
        w, v = scipy.linalg.eigh(g, driver="evd", check_finite=False)
    else:
        w, v = scipy.linalg.eigh(
            g, subset_by_index=[n - r, n - 1], driver="evr", check_finite=False
        )
    return np.clip(w[::-1].astype(np.float64), 0.0, None), np.asarray(v[:, ::-1], dtype=np.float64)
