"""A brute-force EVBMF noise search, independent of wnc_onnx.analyze.numeric.vbmf's piecewise solver.

The free energy Omega(sigma^2) is written out term by term as in evbmf.md (no dropped
constants, no derivative), evaluated on a dense log-spaced grid over the admissible
interval, and the best grid points are refined with a bounded scalar search. Slow, but
it can only miss a minimum narrower than the grid step.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq, minimize_scalar


def tau_bar(alpha: float) -> float:
    return brentq(lambda t: math.log(1 + t) + alpha * math.log(1 + t / alpha) - t, 1e-6, 100.0, xtol=1e-14)


def omega(log_sig2: np.ndarray, s2: np.ndarray, L: int, M: int, alpha: float, x_bar: float) -> np.ndarray:
    """Omega at each log sigma^2 (vectorized over the grid)."""
    u = np.atleast_1d(np.asarray(log_sig2, dtype=np.float64))
    x = s2[None, :] / (M * np.exp(u)[:, None])
    x = np.maximum(x, 1e-300)
    big = x > x_bar
    b = x - (1 + alpha)
    t = 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))
    t = np.where(big, t, 1.0)
    big_term = x - t + np.log((t + 1) / x) + alpha * np.log(t / alpha + 1)
    small_term = x - np.log(x)
    return np.sum(np.where(big, big_term, small_term), axis=1) + (L - s2.size) * u


def brute_force(singular_values: np.ndarray, shape: tuple[int, int], grid: int = 20000) -> tuple[int, float, float]:
    """(rank, sigma^2 in the matrix's units, Omega at the optimum) by exhaustive search."""
    L, M = sorted(shape)
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)))[::-1][:L]
    scale2 = float(np.sum(s**2)) / (L * M)
    s2 = s**2 / scale2
    alpha = L / M
    tb = tau_bar(alpha)
    x_bar = (1 + tb) * (1 + alpha / tb)
    # the admissible interval (evbmf.md, "Bounds that are used in practice")
    upper = float(np.sum(s2)) / (L * M)
    k = min(math.ceil(L / (1 + alpha)) - 1, s2.size) - 1
    k1 = min(max(k + 1, 0), s2.size - 1)
    lower = max(float(s2[k1]) / (M * x_bar), float(np.mean(s2[k1:])) / M, upper * 1e-12)
    us = np.linspace(math.log(lower), math.log(upper), grid)
    vals = np.concatenate([omega(us[i : i + 512], s2, L, M, alpha, x_bar) for i in range(0, grid, 512)])
    best_u, best_v = float(us[np.argmin(vals)]), float(vals.min())
    step = us[1] - us[0]
    for i in np.argsort(vals)[:30]:
        r = minimize_scalar(
            lambda u: float(omega(u, s2, L, M, alpha, x_bar)[0]),
            bounds=(us[i] - step, us[i] + step),
            method="bounded",
            options={"xatol": 1e-12},
        )
        if r.fun < best_v and lower <= math.exp(r.x) <= upper:
            best_u, best_v = float(r.x), float(r.fun)
    sig2 = math.exp(best_u)
    return int(np.sum(s2 > M * sig2 * x_bar)), sig2 * scale2, best_v


def omega_at(singular_values: np.ndarray, shape: tuple[int, int], sigma2: float) -> float:
    """Omega (same units as ``brute_force``'s) at a noise variance given in the matrix's units."""
    L, M = sorted(shape)
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)))[::-1][:L]
    scale2 = float(np.sum(s**2)) / (L * M)
    alpha = L / M
    tb = tau_bar(alpha)
    x_bar = (1 + tb) * (1 + alpha / tb)
    return float(omega(math.log(sigma2 / scale2), s**2 / scale2, L, M, alpha, x_bar)[0])


def kernel_matricizations(model_id: str) -> list[tuple[str, np.ndarray]]:
    """(name, matrix) for both channel-mode matricizations of every spatial conv kernel with
    more than 4 input channels of a corpus model, BatchNorm folded in as the pass does."""
    import onnx

    from tests.corpus import fetch
    from wnc_onnx.analyze.graph import GraphContext
    from wnc_onnx.config import CompressConfig
    from wnc_onnx.report import Report
    from wnc_onnx.rewrite.passes import build_passes

    model = onnx.load(fetch(model_id))
    report = Report()
    for p in build_passes(CompressConfig(), plan_only=True):
        if p.name == "lowrank":
            break
        model = p(model, report).model
    ctx = GraphContext(model)
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or ctx.constant_reason(node.input[1]) is not None:
            continue
        k = ctx.array(node.input[1]).astype(np.float64)
        if k.ndim == 4 and k.shape[2] * k.shape[3] > 1 and k.shape[1] > 4:
            out.append((f"{node.name}:R4", k.reshape(k.shape[0], -1)))
            out.append((f"{node.name}:R3", np.moveaxis(k, 1, 0).reshape(k.shape[1], -1)))
    return out
