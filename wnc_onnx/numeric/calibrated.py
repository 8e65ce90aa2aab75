"""Data-aware factorizations: approximate a layer's response to its inputs, not its kernel.

With the second moment C = E[x x^T] of a layer's input (gathered on calibration data), the
error that matters is the output's, E||(W - W') x||^2 = ||(W - W') C^(1/2)||_F^2, not the
kernel's ||W - W'||_F^2 (Zhang et al. 2016; Denton et al. 2014). Plain numpy, like the rest
of ``numeric``.

* Matrices (Gemm, MatMul, 1x1 convs; y = W x): the best rank-r W' is P P^T W, P the top-r
  left singular vectors of W C^(1/2). Exact at full rank; equal to the truncated SVD when
  C is a multiple of the identity.
* Tucker-2 kernels (T, S, *spatial): the error model treats every tap's input as having
  the channel moment C and ignores the taps' cross-correlation:
  sum_p ||(K_p - K'_p) C^(1/2)||_F^2. In the whitened kernel Kw_p = K_p C^(1/2) that is the
  Frobenius error, so Tucker-2 (HOSVD + HOOI) of Kw is its optimum; mapped back, the input
  1x1 conv is the oblique B = V^T C^(-1/2) (not orthonormal), the core G_p = U^T Kw_p V and
  the output 1x1 conv U. With C = I this is the data-free Tucker-2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from wnc_onnx.numeric.gram import sym_eig_top
from wnc_onnx.numeric.svd import LowRankFactors
from wnc_onnx.numeric.tucker import Tucker2, tucker2

RIDGE = 1e-6  # eigenvalues of C below RIDGE * its largest count as zero (channels the data never excites)


def sqrt_psd(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C^(1/2) and its pseudo-inverse for a symmetric PSD matrix (float64)."""
    c = np.asarray(c, dtype=np.float64)
    c = (c + c.T) / 2
    vals, vecs = np.linalg.eigh(c)
    top = float(vals.max()) if vals.size else 0.0
    keep = vals > RIDGE * top if top > 0 else np.zeros_like(vals, dtype=bool)
    root = np.sqrt(np.where(keep, vals, 0.0))
    inv = np.divide(1.0, root, out=np.zeros_like(root), where=keep)
    return (vecs * root) @ vecs.T, (vecs * inv) @ vecs.T


def error_terms(kernel: np.ndarray, approx: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """(sum_p ||(K_p - K'_p) C^(1/2)||^2, sum_p ||K_p C^(1/2)||^2) over the taps p of a kernel
    (T, S, *spatial), or of a matrix (T, S) with y = W x: E||(W - W') x||^2 and E||W x||^2."""
    k = np.asarray(kernel, dtype=np.float64)
    k3 = k.reshape(k.shape[0], k.shape[1], -1)
    d3 = k3 - np.asarray(approx, dtype=np.float64).reshape(k3.shape)
    return float(np.einsum("tsp,su,tup->", d3, c, d3)), float(np.einsum("tsp,su,tup->", k3, c, k3))


def output_error(kernel: np.ndarray, approx: np.ndarray, c: np.ndarray) -> float:
    """The relative output error sqrt(num / den) of ``error_terms``."""
    num, den = error_terms(kernel, approx, c)
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


@dataclass(frozen=True)
class DataLowRank:
    factors: LowRankFactors  # left (m x r) @ right (r x n); rel_error is the kernel error
    out_error: float  # the output error under C (output_error)


def data_svd(matrix: np.ndarray, c: np.ndarray, rank: int) -> DataLowRank:
    """Rank-``rank`` W' minimizing E||(W - W') x||^2 for y = W x (W: m x n, C: n x n)."""
    w = np.asarray(matrix, dtype=np.float64)
    m, n = w.shape
    r = int(min(max(rank, 1), m, n))
    half, _ = sqrt_psd(c)
    mw = w @ half  # (m, n)
    if m <= n:
        vals, p = sym_eig_top(mw @ mw.T, r)
    else:  # the small side: right vectors, then P = M V / s
        vals, v = sym_eig_top(mw.T @ mw, r)
        s = np.sqrt(np.maximum(vals, 0.0))
        p = np.divide(mw @ v, s, out=np.zeros((m, r)), where=s > 0)
    right = p.T @ w  # (r, n)
    scale = np.sqrt(np.maximum(np.linalg.norm(right, axis=1), 1e-300))
    left, right = p * scale, right / scale[:, None]
    approx = left @ right
    norm = float(np.linalg.norm(w))
    kernel = float(np.linalg.norm(w - approx)) / norm if norm > 0 else 0.0
    return DataLowRank(LowRankFactors(left=left, right=right, rel_error=kernel), output_error(w, approx, c))


@dataclass(frozen=True)
class DataTucker2:
    factors: Tucker2  # its u_in (S x R3) is the transposed input 1x1 conv: oblique, not orthonormal
    out_error: float  # the output error under the model (output_error)


def data_tucker2(
    kernel: np.ndarray,
    r_in: int,
    r_out: int,
    c_in: np.ndarray,
    *,
    max_iter: int = 20,
    tol: float = 1e-5,
) -> DataTucker2:
    """Tucker-2 of a conv kernel fitted to its inputs' channel second moment ``c_in`` (S x S).

    In the whitened kernel Kw_p = K_p C^(1/2) the error model is the plain Frobenius
    error, so HOOI of Kw (``tucker.tucker2``: orthonormal U, V) is its optimum; mapped back,
    the input 1x1 conv is B = V^T C^(-1/2) and the core G_p = U^T Kw_p V.
    """
    k = np.asarray(kernel, dtype=np.float64)
    T, S = k.shape[:2]
    half, inv_half = sqrt_psd(c_in)
    kw = np.einsum("tup,us->tsp", k.reshape(T, S, -1), half).reshape(k.shape)
    tw = tucker2(kw, r_in, r_out, max_iter=max_iter, tol=tol)
    if r_in >= S:  # the input side whole: only U is fitted, core = U^T K (exact on every input at full rank)
        fit = Tucker2(np.tensordot(tw.u_out.T, k, axes=(1, 0)), np.eye(S), tw.u_out, 0.0, 0)
    else:
        fit = Tucker2(tw.core, inv_half @ tw.u_in, tw.u_out, 0.0, tw.iterations)  # u_in = B^T
    approx = fit.reconstruct()
    norm = float(np.linalg.norm(k))
    fit = replace(fit, rel_error=float(np.linalg.norm(k - approx)) / norm if norm > 0 else 0.0)
    return DataTucker2(fit, output_error(k, approx, c_in))
