"""Gram matrices of tensor matricizations and symmetric eigen-solvers.

Both VBMF (all eigenvalues) and the Tucker/SVD factors (top eigenvectors) come from
the Gram matrix of the small side, which is far cheaper than an SVD of the wide
matricization. Large problems are computed in float32 blocks, accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg

# Above this many multiply-adds a Gram product runs in float32 (error ~1e-7 relative).
_FLOAT64_FLOPS = 1e9
# Above this order, eigenvectors are computed in float32 (twice as fast here).
_FLOAT64_EIG_MAX = 2048
_BLOCK_BYTES = 64 << 20
# Rounding level of a computed spectrum, relative to its largest eigenvalue: eigenvalues
# below it are not resolved. float32 Grams of real and planted matrices put their rounding
# eigenvalues near 1e-8; float64 ones near 1e-15. Both figures keep a wide margin.
RESOLUTION_FLOAT32 = 1e-5
RESOLUTION_FLOAT64 = 1e-12


def work_dtype(rows: int, cols: int) -> type[np.floating]:
    """float64 for small products, float32 where the cost would dominate the run."""
    return np.float64 if float(rows) * rows * cols <= _FLOAT64_FLOPS else np.float32


def resolution(rows: int, cols: int) -> float:
    """Relative rounding level of ``sym_eigvals(mode_gram(...))`` for a rows x cols matricization."""
    exact = work_dtype(rows, cols) is np.float64 and rows <= _FLOAT64_EIG_MAX
    return RESOLUTION_FLOAT64 if exact else RESOLUTION_FLOAT32


def _blocks(t: np.ndarray, mode: int, dt: type[np.floating]) -> Iterator[np.ndarray]:
    """Column blocks (n x chunk, in ``dt``) of the mode-``mode`` matricization, never all at once.

    Their column order is not the matricization's, which Gram products do not mind."""
    n = t.shape[mode]
    other = t.size // max(n, 1)
    if mode == 0:
        flat = t.reshape(n, other)
        step = max(1, _BLOCK_BYTES // (n * 8))
        for c0 in range(0, other, step):
            yield flat[:, c0 : c0 + step].astype(dt, copy=False)
        return
    # Iterate over the leading axis of the original tensor: each slice is (n, rest).
    lead = t.shape[0]
    per = other // lead
    step = max(1, _BLOCK_BYTES // max(1, n * per * 8))
    for a0 in range(0, lead, step):
        yield np.ascontiguousarray(np.moveaxis(t[a0 : a0 + step], mode, 0), dtype=dt).reshape(n, -1)


def mode_gram(tensor: np.ndarray, mode: int, dtype: type[np.floating] | None = None) -> np.ndarray:
    """Gram matrix X_(mode) X_(mode)^T of the mode-``mode`` matricization (float64).

    Computed block by block so the matricization is never materialized whole; products
    run in ``dtype`` (default: ``work_dtype``).
    """
    t = np.asarray(tensor)
    n = t.shape[mode]
    dt = work_dtype(n, t.size // max(n, 1)) if dtype is None else dtype
    g = np.zeros((n, n), dtype=np.float64)
    if t.size == 0:
        return g
    if mode == 0:
        flat = t.reshape(n, -1)
        if flat.dtype == dt and flat.flags.c_contiguous:  # one SYRK call, no copies
            return np.asarray(flat @ flat.T, dtype=np.float64)
    for blk in _blocks(t, mode, dt):
        g += blk @ blk.T
    return g


def precise_top_spectrum(tensor: np.ndarray, mode: int, basis: np.ndarray) -> tuple[np.ndarray, float]:
    """Top eigenvalues of the mode-``mode`` Gram in float64, and the energy left outside them.

    ``basis`` (n x k) approximately spans the top-k eigenvectors (from a float32 solve);
    one float64 power step refines it. Returns (k eigenvalues descending, residual energy
    ||X||^2 minus their sum), both resolved to float64 rounding, at the cost of a few
    passes over the tensor instead of a float64 Gram and eigen-solve of order n."""
    t = np.asarray(tensor)
    k = basis.shape[1]
    if k == 0:
        return np.zeros(0), float(np.sum(np.square(t, dtype=np.float64)))
    z = np.zeros_like(basis, dtype=np.float64)
    norm2 = 0.0
    for blk in _blocks(t, mode, np.float64):
        z += blk @ (blk.T @ basis)
        norm2 += float(np.sum(blk * blk))
    q, _ = np.linalg.qr(z)
    c = np.zeros((k, k))
    for blk in _blocks(t, mode, np.float64):
        p = q.T @ blk
        c += p @ p.T
    top = np.clip(np.linalg.eigvalsh(c)[::-1], 0.0, None)
    return top, max(norm2 - float(top.sum()), 0.0)


@dataclass(frozen=True)
class Spectrum:
    """A symmetric matrix's eigenvalues (descending) and, where computed, all its eigenvectors."""

    values: np.ndarray
    vectors: np.ndarray | None = None  # (n, n), columns in the order of ``values``


def sym_spectrum(gram: np.ndarray, vectors: bool = False) -> Spectrum:
    """Eigenvalues, and with ``vectors`` the eigenvectors too where the order allows a full
    float64 solve (n <= 2048: there a full divide-and-conquer solve costs less than the
    values alone plus a later solve for the top vectors)."""
    if vectors and gram.shape[0] <= _FLOAT64_EIG_MAX:
        w, v = scipy.linalg.eigh(gram, driver="evd", check_finite=False)
        return Spectrum(np.clip(w[::-1], 0.0, None), np.asarray(v[:, ::-1]))
    return Spectrum(sym_eigvals(gram))


def sym_eigvals(gram: np.ndarray) -> np.ndarray:
    """All eigenvalues of a symmetric PSD matrix, descending, clipped at zero.

    Large matrices are solved in float32 (absolute error ~1e-7 of the largest value, far
    below the noise level that EVBMF estimates on real weights; see ``resolution``).
    """
    g = gram if gram.shape[0] <= _FLOAT64_EIG_MAX else gram.astype(np.float32)
    w = scipy.linalg.eigh(g, eigvals_only=True, driver="ev", check_finite=False)
    return np.clip(w[::-1].astype(np.float64), 0.0, None)


def _subspace_top(
    gram: np.ndarray, r: int, target: float, max_iter: int = 12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Block power iteration with Rayleigh-Ritz until the captured energy trace(V^T G V)
    is within tolerance of ``target`` (the sum of the top-r eigenvalues, known from
    the spectrum). None if it does not get there: the caller solves exactly."""
    n = gram.shape[0]
    total = float(np.trace(gram))
    slack = max(1e-3 * max(total - target, 0.0), 1e-6 * target)
    q = np.random.default_rng(seed).standard_normal((n, min(n, r + 16)))
    for _ in range(max_iter):
        q, _ = np.linalg.qr(gram @ q)
        h = q.T @ gram @ q
        w, v = np.linalg.eigh((h + h.T) / 2)
        w, v = w[::-1][:r], v[:, ::-1][:, :r]
        if float(w.sum()) >= target - slack:
            return np.clip(w, 0.0, None), q @ v
    return None


def sym_eig_top(gram: np.ndarray, r: int, known: Spectrum | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``r`` eigenpairs (descending) of a symmetric PSD matrix: values, vectors (n x r).

    ``known``: the matrix's spectrum, already computed. With its vectors, the answer is a
    slice. With values only, large matrices use subspace iteration checked against them,
    several times faster than a second tridiagonal solve (falling back to the exact solver
    when it lags). Orders up to 2048 are solved whole (divide and conquer), which is faster
    there than computing a subset.
    """
    n = gram.shape[0]
    r = int(min(max(r, 0), n))
    if r == 0:
        return np.zeros(0), np.zeros((n, 0))
    if known is not None and known.vectors is not None:
        return known.values[:r].copy(), np.ascontiguousarray(known.vectors[:, :r])
    if known is not None and n > _FLOAT64_EIG_MAX and r < n // 2:
        found = _subspace_top(gram, r, float(np.sum(known.values[:r])))
        if found is not None:
            return found
    if n <= _FLOAT64_EIG_MAX or r == n:
        g = gram if n <= _FLOAT64_EIG_MAX else gram.astype(np.float32)
        w, v = scipy.linalg.eigh(g, driver="evd", check_finite=False)
        w, v = w[::-1][:r], v[:, ::-1][:, :r]
    else:
        w, v = scipy.linalg.eigh(
            gram.astype(np.float32), subset_by_index=[n - r, n - 1], driver="evr", check_finite=False
        )
        w, v = w[::-1], v[:, ::-1]
    return np.clip(w.astype(np.float64), 0.0, None), np.asarray(v, dtype=np.float64)
