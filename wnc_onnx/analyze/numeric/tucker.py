"""Tucker-2 (HOSVD + HOOI) and Tucker-1 decompositions of convolution kernels.

Kernels use the ONNX layout (T, S, *spatial): mode 0 is the output channels,
mode 1 the input channels. Spatial modes are never decomposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wnc_onnx.analyze.numeric.gram import Spectrum, mode_gram, sym_eig_top, work_dtype

# Modes up to this size get an exact eigen-solve per HOOI sweep; larger ones a
# subspace-iteration step warm-started from the previous sweep.
_EXACT_MODE_MAX = 1024


@dataclass(frozen=True)
class Tucker2:
    """K ~= core x_0 u_out x_1 u_in with orthonormal u_in (S x R3), u_out (T x R4)
    (``calibrated.data_fit`` returns an oblique u_in: the data-weighted input map)."""

    core: np.ndarray  # (R4, R3, *spatial)
    u_in: np.ndarray  # (S, R3)
    u_out: np.ndarray  # (T, R4)
    rel_error: float  # ||K - K_hat||_F / ||K||_F
    iterations: int  # HOOI sweeps after the HOSVD start

    def reconstruct(self) -> np.ndarray:
        c = np.tensordot(self.u_out, self.core, axes=(1, 0))  # (T, R3, *sp)
        return np.moveaxis(np.tensordot(self.u_in, c, axes=(1, 1)), 0, 1)


@dataclass(frozen=True)
class Tucker1:
    """K ~= core x_0 u_out: a DxD conv S->R4 then a 1x1 conv R4->T."""

    core: np.ndarray  # (R4, S, *spatial)
    u_out: np.ndarray  # (T, R4)
    rel_error: float

    def reconstruct(self) -> np.ndarray:
        return np.tensordot(self.u_out, self.core, axes=(1, 0))


def _rel_error(norm2: float, kept2: float) -> float:
    if norm2 <= 0.0:
        return 0.0
    return math.sqrt(max(norm2 - kept2, 0.0) / norm2)


def tucker1(
    kernel: np.ndarray, r_out: int, gram_out: np.ndarray | None = None, eig_out: Spectrum | None = None
) -> Tucker1:
    """Optimal output-mode truncation (the truncated SVD of the mode-0 matricization)."""
    k = np.asarray(kernel)
    T = k.shape[0]
    g = mode_gram(k, 0) if gram_out is None else gram_out
    w, u = sym_eig_top(g, r_out, eig_out)
    dt = work_dtype(T, k.size // T)
    flat = k.reshape(T, -1).astype(dt, copy=False)
    core = (u.T.astype(dt) @ flat).reshape((u.shape[1],) + k.shape[1:])
    norm2 = float(np.trace(g))
    return Tucker1(core=core.astype(np.float64), u_out=u, rel_error=_rel_error(norm2, float(w.sum())))


def tucker2(
    kernel: np.ndarray,
    r_in: int,
    r_out: int,
    *,
    gram_in: np.ndarray | None = None,
    gram_out: np.ndarray | None = None,
    eig_in: Spectrum | None = None,
    eig_out: Spectrum | None = None,
    max_iter: int = 20,
    tol: float = 1e-5,
) -> Tucker2:
    """Tucker-2 on the channel modes: HOSVD start, then HOOI sweeps.

    Sweeps stop when the captured energy ||core||^2 / ||K||^2 improves by less than
    ``tol`` or after ``max_iter`` sweeps. A mode kept at full rank uses the identity.
    ``eig_in``/``eig_out``: the Grams' known spectra (the HOSVD start reuses them).
    """
    k = np.asarray(kernel)
    T, S = k.shape[0], k.shape[1]
    spatial = k.shape[2:]
    P = int(np.prod(spatial)) if spatial else 1
    r_in = int(min(max(r_in, 1), S))
    r_out = int(min(max(r_out, 1), T))
    dt = work_dtype(max(T, S), k.size // max(1, min(T, S)))
    k3 = k.reshape(T, S, P).astype(dt, copy=False)
    g_out = mode_gram(k, 0) if gram_out is None else gram_out
    norm2 = float(np.trace(g_out))

    full_in, full_out = r_in == S, r_out == T
    u_in = np.eye(S) if full_in else sym_eig_top(mode_gram(k, 1) if gram_in is None else gram_in, r_in, eig_in)[1]
    u_out = np.eye(T) if full_out else sym_eig_top(g_out, r_out, eig_out)[1]

    def project_in(u: np.ndarray) -> np.ndarray:  # (T, P, R3), in row blocks: no full transposed copy
        ud = u.astype(dt)
        out = np.empty((T, P, ud.shape[1]), dtype=dt)
        step = max(1, (64 << 20) // max(1, S * P * k3.itemsize))
        for t0 in range(0, T, step):
            out[t0 : t0 + step] = k3[t0 : t0 + step].transpose(0, 2, 1) @ ud
        return out

    def refine(u: np.ndarray, mat: np.ndarray, r: int) -> np.ndarray:
        """Leading r-dim left subspace of ``mat`` (n x m): exact for small n, else one
        warm-started subspace-iteration step (keeps ||core|| non-decreasing, far cheaper)."""
        n = mat.shape[0]
        if n <= _EXACT_MODE_MAX:
            return sym_eig_top(mode_gram(mat, 0), r)[1]
        q, _ = np.linalg.qr(np.asarray(mat @ (mat.T @ u.astype(mat.dtype)), dtype=np.float64))
        return np.asarray(q[:, :r])

    z = project_in(u_in)
    core = np.asarray(u_out.T.astype(dt) @ z.reshape(T, -1))  # (R4, P*R3)
    kept = float(np.sum(core.astype(np.float64) ** 2))
    sweeps = 0
    if not (full_in or full_out):
        for sweeps in range(1, max_iter + 1):  # noqa: B007 - value used after the loop
            y = (u_out.T.astype(dt) @ k3.reshape(T, -1)).reshape(r_out, S, P)
            u_in = refine(u_in, np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(S, -1), r_in)
            z = project_in(u_in)
            u_out = refine(u_out, z.reshape(T, -1), r_out)
            core = np.asarray(u_out.T.astype(dt) @ z.reshape(T, -1))
            new_kept = float(np.sum(core.astype(np.float64) ** 2))
            gain = (new_kept - kept) / norm2 if norm2 > 0 else 0.0
            kept = max(kept, new_kept)
            if gain < tol:
                break
    core4 = core.reshape(r_out, P, r_in).transpose(0, 2, 1).reshape((r_out, r_in) + spatial)
    return Tucker2(
        core=core4.astype(np.float64),
        u_in=np.asarray(u_in, dtype=np.float64),
        u_out=np.asarray(u_out, dtype=np.float64),
        rel_error=_rel_error(norm2, kept),
        iterations=sweeps,
    )
