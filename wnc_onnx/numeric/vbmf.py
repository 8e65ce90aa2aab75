"""Empirical variational Bayesian matrix factorization (EVBMF), global analytic solution.

Rank selection of Nakajima, Sugiyama, Babacan and Tomioka (JMLR 14, 2013) with the
shrinkage threshold of Nakajima et al. (NIPS 2012). Only the singular values of the
matrix are needed; callers that already hold a Gram matrix pass its eigenvalues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

# Numerical constant of the analytic solution: tau_bar = TAU_CONST * sqrt(alpha).
TAU_CONST = 2.5129


@dataclass(frozen=True)
class EVBMFResult:
    """Outcome of EVBMF on an L x M matrix (L <= M after transposition)."""

    rank: int
    sigma2: float  # estimated noise variance, in the units of the input matrix
    threshold: float  # singular values above this are kept
    singular_values: np.ndarray  # descending
    shape: tuple[int, int]

    @property
    def shrunk(self) -> np.ndarray:
        """Posterior-mean singular values of the kept components (the EVB shrinkage)."""
        L, M = self.shape
        g = self.singular_values[: self.rank]
        s2 = self.sigma2
        a = 1.0 - (L + M) * s2 / g**2
        disc = np.maximum(a**2 - 4.0 * L * M * s2**2 / g**4, 0.0)
        return np.asarray(g / 2.0 * (a + np.sqrt(disc)))


def evbmf(matrix: np.ndarray, sigma2: float | None = None) -> EVBMFResult:
    """EVBMF rank of ``matrix`` (any orientation). Rank 0 is a valid answer."""
    y = np.asarray(matrix, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"evbmf needs a 2-D matrix, got shape {y.shape}")
    L, M = sorted(y.shape)
    s = np.linalg.svd(y, compute_uv=False)
    return evbmf_from_singular_values(s, (L, M), sigma2=sigma2)


def evbmf_from_eigenvalues(eigenvalues: np.ndarray, shape: tuple[int, int], sigma2: float | None = None) -> EVBMFResult:
    """EVBMF from the eigenvalues of the small Gram matrix (Y Y^T with Y of ``shape``)."""
    ev = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    return evbmf_from_singular_values(np.sqrt(ev), shape, sigma2=sigma2)


def evbmf_from_singular_values(
    singular_values: np.ndarray,
    shape: tuple[int, int],
    sigma2: float | None = None,
    residual: float = 0.0,
) -> EVBMFResult:
    """EVBMF from singular values of a matrix of ``shape``.

    ``residual`` is the squared Frobenius norm not captured by the given values
    (zero when all min(shape) values are given).
    """
    L, M = sorted(int(d) for d in shape)
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)))[::-1]
    if L == 0 or s.size == 0:
        return EVBMFResult(0, 0.0, 0.0, s, (L, M))
    H = min(s.size, L)
    s = s[:H]
    total = float(np.sum(s**2)) + float(residual)
    if total <= 0.0 or not np.isfinite(total):
        return EVBMFResult(0, 0.0, 0.0, s, (L, M))

    # Ranks do not depend on the scale of Y: work on Y / sqrt(total / (L M)).
    scale2 = total / (L * M)
    s2 = s**2 / scale2
    res = float(residual) / scale2

    alpha = L / M
    tau_bar = TAU_CONST * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    sig2 = _estimate_noise(s2, L, M, H, res, alpha, x_bar) if sigma2 is None else float(sigma2) / scale2

    threshold2 = M * sig2 * x_bar
    rank = int(np.sum(s2 > threshold2))
    return EVBMFResult(
        rank=rank,
        sigma2=sig2 * scale2,
        threshold=math.sqrt(threshold2 * scale2),
        singular_values=s,
        shape=(L, M),
    )


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1.0 + alpha)
    return np.asarray(0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0))))


def _estimate_noise(s2: np.ndarray, L: int, M: int, H: int, res: float, alpha: float, x_bar: float) -> float:
    """Minimize the EVBMF free energy over the noise variance (bounded 1-D search)."""
    upper = (float(np.sum(s2)) + res) / (L * M)
    k = min(math.ceil(L / (1.0 + alpha)) - 1, H) - 1
    k1 = min(max(k + 1, 0), H - 1)
    lower = max(s2[k1] / (M * x_bar), float(np.mean(s2[k1:])) / M)
    # Exactly low-rank matrices push the noise level to zero: keep the log finite.
    tiny = upper * 1e-12
    lower = max(lower, tiny)
    if lower >= upper:
        return upper
    floor = np.finfo(np.float64).tiny

    def objective(log_sig2: float) -> float:
        sig2 = math.exp(log_sig2)
        x = np.maximum(s2 / (M * sig2), floor)
        big = x > x_bar
        xs = x[~big]
        xb = x[big]
        f = float(np.sum(xs - np.log(xs)))
        if xb.size:
            t = _tau(xb, alpha)
            f += float(np.sum(xb - t + np.log((t + 1.0) / xb) + alpha * np.log(t / alpha + 1.0)))
        f += res / (M * sig2) + (L - H) * log_sig2
        return f

    lo, hi = math.log(lower), math.log(upper)
    opt = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    best = float(opt.x)
    # The objective may be flat or multimodal near the bounds; keep the best end point.
    for cand in (lo, hi):
        if objective(cand) < objective(best):
            best = cand
    return math.exp(best)
