"""Empirical variational Bayesian matrix factorization (EVBMF), global analytic solution.

Rank selection of Nakajima, Sugiyama, Babacan and Tomioka (JMLR 14, 2013) with the
shrinkage threshold of Nakajima et al. (NIPS 2012). Only the singular values of the
matrix are needed; callers that already hold a Gram matrix pass its eigenvalues.

The noise variance minimizes the free energy Omega(sigma^2), which is not convex: it
bends at every sigma^2 where a singular value crosses the threshold, and real layers
give it tens to hundreds of local minima a few thousandths apart. ``_estimate_noise``
therefore finds the global minimum exactly: the bends split the search interval into
pieces on which Omega is smooth, each piece's minimum is a root of the derivative (found
with brentq), and the lowest of those and of the interval ends wins. A bend itself is
never a minimum (the derivative drops there by tau_bar), so no other point can be lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq

# Evaluations of the per-component terms are done in blocks of at most this many values.
_BLOCK = 1 << 21


@lru_cache(maxsize=4096)
def tau_bar(alpha: float) -> float:
    """The positive root t of log(1 + t) + alpha log(1 + t / alpha) = t (0 < alpha <= 1).

    At alpha = 1 it is 2.5129; the usual shortcut 2.5129 sqrt(alpha) drifts for small
    alpha (0.420 instead of 0.454 at alpha = 0.028)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")

    def h(t: float) -> float:
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t

    hi = 4.0
    while h(hi) > 0.0:
        hi *= 2.0
    # h > 0 just above 0 (h ~ t^2 (1 - 1/alpha) / 2 ... plus t), so bracket from a small t
    lo = 1e-9 * alpha
    return float(brentq(h, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200))


@dataclass(frozen=True)
class EVBMFResult:
    """Outcome of EVBMF on an L x M matrix (L <= M after transposition)."""

    rank: int
    sigma2: float  # estimated noise variance, in the units of the input matrix
    threshold: float  # singular values above this are kept
    singular_values: np.ndarray  # descending
    shape: tuple[int, int]
    floored: bool = False  # the noise variance sits at the resolution floor (see ``resolution``)

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


def evbmf_from_eigenvalues(
    eigenvalues: np.ndarray, shape: tuple[int, int], sigma2: float | None = None, resolution: float = 0.0
) -> EVBMFResult:
    """EVBMF from the eigenvalues of the small Gram matrix (Y Y^T with Y of ``shape``).

    ``resolution``: eigenvalues below it are not resolved by the computation that made
    them (rounding); see ``evbmf_from_singular_values``."""
    ev = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    return evbmf_from_singular_values(np.sqrt(ev), shape, sigma2=sigma2, resolution=resolution)


def evbmf_from_singular_values(
    singular_values: np.ndarray,
    shape: tuple[int, int],
    sigma2: float | None = None,
    residual: float = 0.0,
    resolution: float = 0.0,
) -> EVBMFResult:
    """EVBMF from singular values of a matrix of ``shape``.

    ``residual`` is the squared Frobenius norm not captured by the given values
    (zero when all min(shape) values are given). ``resolution`` is the smallest squared
    singular value the computation resolves (its rounding level): the noise variance is
    never put below the level at which the threshold would sit inside the rounding, so an
    exactly low-rank matrix gets its exact rank rather than one read from rounding noise.
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
    tb = tau_bar(alpha)
    x_bar = (1.0 + tb) * (1.0 + alpha / tb)

    floor = float(resolution) / scale2 / (M * x_bar)
    sig2 = _estimate_noise(s2, L, M, res, alpha, x_bar, floor) if sigma2 is None else float(sigma2) / scale2

    threshold2 = M * sig2 * x_bar
    rank = int(np.sum(s2 > threshold2))
    return EVBMFResult(
        rank=rank,
        sigma2=sig2 * scale2,
        threshold=math.sqrt(threshold2 * scale2),
        singular_values=s,
        shape=(L, M),
        floored=sigma2 is None and floor > 0.0 and sig2 <= floor * (1.0 + 1e-9),
    )


def search_interval(s2: np.ndarray, L: int, M: int, res: float, alpha: float, x_bar: float) -> tuple[float, float]:
    """The admissible interval of sigma^2 (Nakajima et al. 2013, used in practice).

    ``s2``: squared singular values, descending, scaled so that the mean squared entry is 1."""
    H = s2.size
    upper = (float(np.sum(s2)) + res) / (L * M)
    k = min(math.ceil(L / (1.0 + alpha)) - 1, H) - 1
    k1 = min(max(k + 1, 0), H - 1)
    lower = max(float(s2[k1]) / (M * x_bar), float(np.mean(s2[k1:])) / M)
    # Exactly low-rank matrices push the noise level to zero: keep the log finite.
    return max(lower, upper * 1e-12), upper


class _Objective:
    """Omega (up to a constant) and its derivative as functions of u = log sigma^2.

    With x_h = s2_h / (M sigma^2) and the top ``k`` components above the threshold:
        Omega(u) = e^-u (sum_{h>=k} s2_h + res) / M + (L - k) u + sum_{h<k} [g(x_h) + log(s2_h / M)]
    where g(x) = x - tau + log((tau + 1) / x) + alpha log(tau / alpha + 1), tau = tau(x).
    The constant sum_h log(s2_h / M) is added, which keeps exact zeros finite.
    dOmega/du = -e^-u (sum_{h>=k} s2_h + res) / M + (L - k) - sum_{h<k} (x_h - 1 - tau(x_h)).
    """

    def __init__(self, s2: np.ndarray, L: int, M: int, res: float, alpha: float) -> None:
        self.s2, self.L, self.M, self.alpha = s2, L, M, alpha
        # tail[k] = sum_{h>=k} s2_h + res
        self.tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]]) + res
        with np.errstate(divide="ignore"):
            self.log_s2 = np.log(s2 / M)

    def _tau(self, x: np.ndarray) -> np.ndarray:
        b = x - (1.0 + self.alpha)
        return np.asarray(0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * self.alpha, 0.0))))

    def big_terms(self, u: float, k: int) -> tuple[float, float]:
        """(sum_{h<k} g(x_h) + log(s2_h / M), sum_{h<k} x_h - 1 - tau_h) at u."""
        if k == 0:
            return 0.0, 0.0
        x = self.s2[:k] * math.exp(-u) / self.M
        t = self._tau(x)
        a = self.alpha
        value = float(np.sum(x - t + np.log1p(t) - np.log(x) + a * np.log1p(t / a) + self.log_s2[:k]))
        return value, float(np.sum(x - 1.0 - t))

    def value(self, u: float, k: int) -> float:
        big, _ = self.big_terms(u, k)
        return math.exp(-u) * self.tail[k] / self.M + (self.L - k) * u + big

    def slope(self, u: float, k: int) -> float:
        _, d = self.big_terms(u, k)
        return -math.exp(-u) * self.tail[k] / self.M + (self.L - k) - d

    def slopes(self, us: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """``slope`` at many (u, k) pairs, vectorized in blocks."""
        out = -np.exp(-us) * self.tail[ks] / self.M + (self.L - ks)
        if not ks.size or ks.max() == 0:
            return out
        kmax = int(ks.max())
        rows = max(1, _BLOCK // kmax)
        h = np.arange(kmax)
        for i0 in range(0, us.size, rows):
            u, k = us[i0 : i0 + rows], ks[i0 : i0 + rows]
            x = self.s2[None, :kmax] * np.exp(-u)[:, None] / self.M
            mask = h[None, :] < k[:, None]
            x = np.where(mask, x, 10.0)  # any value above x_bar; masked out below
            t = self._tau(x)
            out[i0 : i0 + rows] -= np.sum(np.where(mask, x - 1.0 - t, 0.0), axis=1)
        return out


def _estimate_noise(
    s2: np.ndarray, L: int, M: int, res: float, alpha: float, x_bar: float, floor: float = 0.0
) -> float:
    """The sigma^2 (scaled units) of the global minimum of the EVBMF free energy.

    ``floor``: sigma^2 is not taken below it (rounding level of the singular values)."""
    lower, upper = search_interval(s2, L, M, res, alpha, x_bar)
    lower = max(lower, floor)
    if lower >= upper:
        return upper
    lo, hi = math.log(lower), math.log(upper)
    obj = _Objective(s2, L, M, res, alpha)
    # Bends: u_h = log(s2_h / (M x_bar)); component h is above the threshold for u < u_h.
    with np.errstate(divide="ignore"):
        bends = np.log(s2 / (M * x_bar))
    inside = np.sort(bends[(bends > lo) & (bends < hi)])
    edges = np.concatenate([[lo], inside, [hi]])
    # Components above the threshold on each piece (between edges[i] and edges[i + 1]).
    mids = 0.5 * (edges[:-1] + edges[1:])
    ks = np.searchsorted(-bends, -mids, side="left")  # count of bends > mid (bends descending)
    left = obj.slopes(edges[:-1], ks)
    right = obj.slopes(edges[1:], ks)
    candidates = [(lo, int(ks[0])), (hi, int(ks[-1]))]
    for i in np.flatnonzero((left < 0.0) & (right > 0.0)):
        k = int(ks[i])
        u = brentq(obj.slope, edges[i], edges[i + 1], args=(k,), xtol=1e-13, rtol=1e-14, maxiter=200)
        candidates.append((float(u), k))
    best = min(candidates, key=lambda c: obj.value(*c))
    return math.exp(best[0])
