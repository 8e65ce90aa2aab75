"""Factors of one planned layer: Tucker-2 (HOSVD + HOOI), Tucker-1 or SVD of its kernel, or,
with calibration statistics, the factors fitted to its inputs on the data
(``numeric.calibrated``) with the output error of both fits."""

from __future__ import annotations

import math

import numpy as np

from wnc_onnx.analyze.calibration import Reuse
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.analyze.numeric.calibrated import PatchStats, data_fit, error_terms, fit_dtype, relative
from wnc_onnx.analyze.numeric.gram import Spectrum
from wnc_onnx.analyze.numeric.svd import truncated_svd
from wnc_onnx.analyze.numeric.tucker import Tucker2, tucker1, tucker2
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.lowrank_plan import LayerState


def factor(
    layer: Layer, state: LayerState, cfg: CompressConfig, stats: PatchStats | None, cache: Reuse | None
) -> Factors:
    """The layer's factors: fitted to its inputs when ``stats`` are given (a fit at the same
    ranks is taken from ``cache``: --max-error builds the same layer again), else data-free."""
    if stats is None:
        return data_free(layer, state, cfg)
    plan = state.plan
    key = (layer.name, plan.method, plan.r3, plan.r4)
    if cache is not None and key in cache.fits:
        return cache.fits[key]  # type: ignore[no-any-return]
    found = calibrated(layer, state, cfg, stats)
    if cache is not None:
        cache.fits[key] = found
    return found


def data_free(layer: Layer, state: LayerState, cfg: CompressConfig) -> Factors:
    """Each group's kernel approximated at the plan's ranks, reusing the Grams and spectra of the plan."""
    plan, kernels, grams_in, grams_out, spectra = (
        state.plan,
        state.kernels,
        state.grams_in,
        state.grams_out,
        state.spectra,
    )
    groups: list[dict[str, np.ndarray]] = []
    err2 = norm2 = 0.0
    sweeps = 0

    def spectrum(mode: str, gi: int) -> Spectrum | None:
        found = spectra[mode]
        return found[gi] if gi < len(found) else None

    for gi, k in enumerate(kernels):
        n2 = float(np.trace(grams_out[gi]))  # ||K||^2
        if plan.method == "tucker2":
            assert grams_in is not None
            tk = tucker2(
                k,
                plan.r3 or 1,
                plan.r4,
                gram_in=grams_in[gi],
                gram_out=grams_out[gi],
                eig_in=spectrum("in", gi),
                eig_out=spectrum("out", gi),
                max_iter=cfg.hooi_max_iter,
                tol=cfg.hooi_tol,
            )
            groups.append({"core": tk.core, "u_in": tk.u_in, "u_out": tk.u_out})
            e, sweeps = tk.rel_error, max(sweeps, tk.iterations)
        elif layer.rule in ("conv", "flatten_gemm"):
            t1 = tucker1(k, plan.r4, gram_out=grams_out[gi], eig_out=spectrum("out", gi))
            groups.append({"core": t1.core, "u_out": t1.u_out})
            e = t1.rel_error
        else:
            f = truncated_svd(k, plan.r4, gram=grams_out[gi], spectrum=spectrum("out", gi))
            groups.append({"left": f.left, "right": f.right})
            e = f.rel_error
        err2 += e * e * n2
        norm2 += n2
    rel = math.sqrt(err2 / norm2) if norm2 > 0 else 0.0
    return Factors(plan.method, plan.r3, plan.r4, groups, rel, sweeps)


def calibrated(layer: Layer, state: LayerState, cfg: CompressConfig, stats: PatchStats) -> Factors:
    """Factors fitted to the layer's inputs on the calibration data (numeric/calibrated.py),
    with the output error of both them and the data-free factors at the same ranks."""
    plan = state.plan
    free_factors = data_free(layer, state, cfg)
    shift = bool(layer.extra.get("shift_bias"))
    groups: list[dict[str, np.ndarray]] = []
    shifts: list[np.ndarray] = []
    err2 = free2 = den2 = kern2 = norm2 = 0.0
    sweeps = 0
    for gi, k in enumerate(state.kernels):
        st = stats.group(gi, layer.s) if layer.groups > 1 else stats
        dt = fit_dtype(k.size)  # the data-free approximation in the fit's precision (memory)
        free = {name: f.astype(dt, copy=False) for name, f in free_factors.groups[gi].items()}
        tucker = plan.method == "tucker2"
        r_in = (plan.r3 or 1) if tucker else None  # Tucker-1 and SVD: the input side whole
        fit = data_fit(k, r_in, plan.r4, st, centered=shift, max_iter=cfg.hooi_max_iter, tol=cfg.hooi_tol)
        if tucker:  # at full R3 the input side is whole: an identity 1x1
            u_in = np.eye(k.shape[1]) if fit.u_in is None else fit.u_in
            groups.append({"core": fit.core, "u_in": u_in, "u_out": fit.u_out})
            free_hat = Tucker2(free["core"], free["u_in"], free["u_out"], 0.0, 0).reconstruct()
        elif "core" in free:  # Tucker-1, 1x1 convs too
            groups.append({"core": fit.core, "u_out": fit.u_out})
            free_hat = np.tensordot(free["u_out"], free["core"], axes=(1, 0))
        else:  # SVD: left U, right U^T W, balanced
            right = fit.core.reshape(fit.core.shape[0], -1)
            scale = np.sqrt(np.maximum(np.linalg.norm(right, axis=1), 1e-300))
            groups.append({"left": fit.u_out * scale, "right": right / scale[:, None]})
            free_hat = free["left"] @ free["right"]
        if fit.shift is not None:
            shifts.append(fit.shift)
        num, den = fit.terms
        err2, free2, den2 = err2 + num, free2 + error_terms(k, free_hat, st, shifted=False, den=den)[0], den2 + den
        sweeps = max(sweeps, fit.iterations)
        n2 = float(np.trace(state.grams_out[gi]))  # ||K||^2
        kern2, norm2 = kern2 + fit.kernel_error**2 * n2, norm2 + n2
    return Factors(
        plan.method,
        plan.r3,
        plan.r4,
        groups,
        math.sqrt(kern2 / norm2) if norm2 > 0 else 0.0,
        sweeps,
        data_error=relative(err2, den2),
        data_error_free=relative(free2, den2),
        bias_shift=np.concatenate(shifts) if shifts else None,
    )
