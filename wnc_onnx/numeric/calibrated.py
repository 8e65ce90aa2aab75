"""Data-aware factorizations: approximate a layer's response to its inputs, not its kernel.

With the second moment C = E[x x^T] of a layer's input (gathered on calibration data), the
error that matters is the output's, E||(W - W') x||^2 = ||(W - W') C^(1/2)||_F^2, not the
kernel's ||W - W'||_F^2 (Zhang et al. 2016; Denton et al. 2014). Plain numpy, like the rest
of ``numeric``.

* Matrices (Gemm, MatMul, 1x1 convs; y = W x): the best rank-r W' is P P^T W, P the top-r
  left singular vectors of W C^(1/2). Exact at full rank; equal to the truncated SVD when
  C is a multiple of the identity.
* Tucker-2 kernels (T, S, *spatial): the input-side 1x1 conv is an oblique projection
  B (R3 x S) with its back-map A (S x R3), the output side orthonormal U (T x R4), and the
  core G_p = U^T K_p A for every tap p. The error model treats the taps' inputs as sharing
  the channel moment C and ignores their cross-correlation:
  sum_p ||(K_p - U U^T K_p A B) C^(1/2)||_F^2. Alternating sweeps as HOOI does: for fixed U
  the input side is a reduced-rank regression (A = C^(1/2) V, B = V^T C^(-1/2), V the top
  right singular vectors of the stacked U^T K_p C^(1/2)); for fixed A, B the output side is
  the top eigenvectors of sum_p K_p A B C B^T A^T K_p^T. With C = I this is HOOI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wnc_onnx.numeric.gram import sym_eig_top
from wnc_onnx.numeric.svd import LowRankFactors

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


def output_error(w: np.ndarray, w_hat: np.ndarray, c: np.ndarray) -> float:
    """sqrt(E||(W - W') x||^2 / E||W x||^2) for y = W x with E[x x^T] = C."""
    w = np.asarray(w, dtype=np.float64)
    d = w - np.asarray(w_hat, dtype=np.float64)
    num, den = float(np.einsum("ij,jk,ik->", d, c, d)), float(np.einsum("ij,jk,ik->", w, c, w))
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
    """K ~= core x_0 u_out x_1 u_in: u_in^T (R3 x S) is the input 1x1 conv (not orthonormal)."""

    core: np.ndarray  # (R4, R3, *spatial)
    u_in: np.ndarray  # (S, R3)
    u_out: np.ndarray  # (T, R4), orthonormal
    rel_error: float  # kernel error ||K - K'|| / ||K||
    out_error: float  # output error under the model above
    iterations: int

    def reconstruct(self) -> np.ndarray:
        c = np.tensordot(self.u_out, self.core, axes=(1, 0))
        return np.moveaxis(np.tensordot(self.u_in, c, axes=(1, 1)), 0, 1)


def tap_error(kernel: np.ndarray, approx: np.ndarray, c: np.ndarray) -> float:
    """The Tucker-2 error model: sqrt(sum_p ||D_p C^(1/2)||^2 / sum_p ||K_p C^(1/2)||^2)."""
    k = np.asarray(kernel, dtype=np.float64)
    T, S = k.shape[:2]
    k3 = k.reshape(T, S, -1)
    d3 = k3 - np.asarray(approx, dtype=np.float64).reshape(T, S, -1)
    num = float(np.einsum("tsp,su,tup->", d3, c, d3))
    den = float(np.einsum("tsp,su,tup->", k3, c, k3))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def data_tucker2(
    kernel: np.ndarray,
    r_in: int,
    r_out: int,
    c_in: np.ndarray,
    *,
    c_out: np.ndarray | None = None,
    max_iter: int = 20,
    tol: float = 1e-5,
) -> DataTucker2:
    """Tucker-2 of a conv kernel fitted to its inputs' channel second moment ``c_in`` (S x S).

    ``c_out`` (T x T), the measured second moment of the layer's output (less its bias),
    seeds the output side when given (it holds the taps' cross-correlations the model
    ignores); otherwise the model's output moment does.
    """
    k = np.asarray(kernel, dtype=np.float64)
    T, S = k.shape[:2]
    spatial = k.shape[2:]
    k3 = k.reshape(T, S, -1)  # (T, S, P)
    r_in, r_out = int(min(max(r_in, 1), S)), int(min(max(r_out, 1), T))
    c = np.asarray(c_in, dtype=np.float64)
    half, inv_half = sqrt_psd(c)
    den = float(np.einsum("tsp,su,tup->", k3, c, k3))

    def out_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if r_out == T:
            return np.eye(T)
        kq = np.einsum("tsp,sr,ru->tup", k3, a, b)  # K_p A B
        return sym_eig_top(np.einsum("tsp,su,vup->tv", kq, c, kq), r_out)[1]

    def in_side(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if r_in == S:
            return np.eye(S), np.eye(S)
        m = np.einsum("tr,tsp,su->rpu", u, k3, half).reshape(-1, S)  # stacked U^T K_p C^(1/2)
        v = sym_eig_top(m.T @ m, r_in)[1]  # (S, R3)
        return half @ v, v.T @ inv_half

    def err2(u: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        approx = np.einsum("tr,vsp,vr,su,uw->twp", u, k3, u, a, b, optimize=True)
        d = k3 - approx
        return float(np.einsum("tsp,su,tup->", d, c, d))

    if c_out is not None and r_out < T:
        u = sym_eig_top(np.asarray(c_out, dtype=np.float64), r_out)[1]
    else:
        u = out_side(np.eye(S), np.eye(S))
    a, b = in_side(u)
    best = err2(u, a, b)
    sweeps = 0
    if r_in < S and r_out < T:
        for sweeps in range(1, max_iter + 1):  # noqa: B007 - value used after the loop
            u_new = out_side(a, b)
            a_new, b_new = in_side(u_new)
            e = err2(u_new, a_new, b_new)
            gain = (best - e) / den if den > 0 else 0.0
            if e < best:
                u, a, b, best = u_new, a_new, b_new, e
            if gain < tol:
                break
    core = np.einsum("tr,tsp,sq->rqp", u, k3, a).reshape((u.shape[1], a.shape[1]) + spatial)
    result = DataTucker2(core=core, u_in=b.T, u_out=u, rel_error=0.0, out_error=0.0, iterations=sweeps)
    approx = result.reconstruct()
    norm = float(np.linalg.norm(k))
    kernel_err = float(np.linalg.norm(k - approx)) / norm if norm > 0 else 0.0
    out_err = math.sqrt(max(best, 0.0) / den) if den > 0 else 0.0
    return DataTucker2(core, b.T, u, kernel_err, out_err, sweeps)
