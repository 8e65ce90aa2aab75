"""Ranks and structure of one layer for the low-rank pass: EVBMF ranks of the mode
matricizations, the rank policy, Tucker-2 / Tucker-1 / SVD, and the check that the rewrite
saves weights and MACs. Numbers only: the graph is the rules' business."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from wnc_onnx.analyze.layer import Layer
from wnc_onnx.analyze.numeric.cost import Costs, conv_costs, lowrank_costs
from wnc_onnx.analyze.numeric.gram import (
    RESOLUTION_FLOAT64,
    Spectrum,
    mode_gram,
    precise_top_spectrum,
    resolution,
    sym_eig_top,
    sym_spectrum,
)
from wnc_onnx.analyze.numeric.vbmf import evbmf_from_eigenvalues, evbmf_from_singular_values
from wnc_onnx.analyze.ranks import policy_rank
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError
from wnc_onnx.report import LayerReport

log = logging.getLogger(__name__)


@dataclass
class Plan:
    method: str
    r3: int | None
    r4: int
    before: Costs
    after: Costs
    vbmf: dict[str, int]
    source: str


@dataclass
class LayerState:
    """A planned layer, kept until it is factored (after the latency step, where there is one)."""

    plan: Plan
    kernels: list[np.ndarray]
    grams_in: list[np.ndarray] | None
    grams_out: list[np.ndarray]
    spectra: dict[str, list[Spectrum]]


class Skip(Exception):
    """A layer left unchanged, with the reason."""


def vbmf_rank(
    tensors: list[np.ndarray],
    mode: int,
    grams: list[np.ndarray],
    shape: tuple[int, int],
    spectra: list[Spectrum],
    vectors: bool,
) -> int:
    """EVBMF rank of each group's mode-``mode`` matricization (Gram eigenvalues); the largest wins.

    Where the noise level EVBMF finds sits at the rounding level of a float32 spectrum (an
    exactly low-rank weight), the spectrum is computed again in float64, so such a weight
    gets its exact rank. The spectra (with eigenvectors when ``vectors``: the layer will be
    factored) are appended to ``spectra`` for the factorization."""
    small = min(shape)
    ranks = []
    for tensor, g in zip(tensors, grams, strict=True):
        spec = sym_spectrum(g, vectors)
        ev = spec.values
        level = resolution(g.shape[0], tensor.size // max(g.shape[0], 1))
        found = evbmf_from_eigenvalues(ev[:small], shape, resolution=level * ev[0] if ev.size else 0.0)
        if found.floored and level > RESOLUTION_FLOAT64:
            # The components above float32 rounding, and the energy left below it, in float64.
            k = int(np.sum(ev > level * ev[0]))
            top, rest = precise_top_spectrum(tensor, mode, sym_eig_top(g, k, spec)[1])
            log.debug("EVBMF at the float32 rounding level: %d components resolved in float64", k)
            found = evbmf_from_singular_values(
                np.sqrt(top), shape, residual=rest, resolution=RESOLUTION_FLOAT64 * top[0]
            )
        spectra.append(spec)
        ranks.append(found.rank)
    return max(ranks)


def before_costs(layer: Layer) -> Costs:
    return conv_costs(layer.s, layer.t, layer.window, layer.groups, layer.out_pixels)


def plan_at(layer: Layer, method: str, r3: int | None, r4: int, base: Plan) -> Plan:
    """``base`` with another method and ranks."""
    after = lowrank_costs(layer.s, layer.t, layer.window, layer.groups, layer.in_pixels, layer.out_pixels, r3, r4)
    return Plan(method, r3, r4, base.before, after, base.vbmf, base.source)


def plan_layer(
    layer: Layer,
    cfg: CompressConfig,
    kernels: list[np.ndarray],
    sources: list[np.ndarray],
    grams_out: list[np.ndarray],
    spectra: dict[str, list[Spectrum]],
    vectors: bool,
) -> tuple[Plan, list[np.ndarray] | None]:
    """Method and ranks for one layer, and the in-mode Grams when Tucker-2 needs them.

    ``sources``: the tensors ``grams_out`` were computed from (matrices oriented small
    side first); ``vectors``: keep eigenvectors (the layer will be factored)."""
    spec = cfg.ranks.get(layer.name)
    s, t, p = layer.s, layer.t, layer.window
    vbmf: dict[str, int] = {}

    def plan(method: str, r3: int | None, r4: int) -> Plan:
        after = lowrank_costs(s, t, p, layer.groups, layer.in_pixels, layer.out_pixels, r3, r4)
        source = "file" if spec is not None else "vbmf"
        return checked(layer, Plan(method, r3, r4, before_costs(layer), after, vbmf, source), cfg)

    if not layer.tucker_capable:
        full = min(s, t)
        if isinstance(spec, tuple):
            raise WncError(
                f"--ranks gives [R3, R4] for '{layer.name}', which is a matrix layer",
                f"give one integer rank (1..{full}) for it",
            )
        if spec is not None:
            return plan("svd", None, check_rank(layer.name, "R", spec, full)), None
        vbmf["R"] = vbmf_rank(sources, 0, grams_out, (t, s), spectra["out"], vectors)
        if vbmf["R"] == 0:
            raise Skip("VBMF rank 0: the weights look like noise to EVBMF; set a rank with --ranks")
        return plan("svd", None, policy_rank(vbmf["R"], full, cfg)), None

    if isinstance(spec, tuple):
        r3 = check_rank(layer.name, "R3", spec[0], s)
        r4 = check_rank(layer.name, "R4", spec[1], t)
        return plan("tucker2", r3, r4), [mode_gram(k, 1) for k in kernels]
    if spec is not None:
        return plan("tucker1", None, check_rank(layer.name, "R4", spec, t)), None
    few_in = s <= cfg.tucker1_max_in
    grams_in = None if few_in else [mode_gram(k, 1) for k in kernels]
    vbmf["R4"] = vbmf_rank(kernels, 0, grams_out, (t, s * p), spectra["out"], vectors)
    if grams_in is not None:
        vbmf["R3"] = vbmf_rank(kernels, 1, grams_in, (s, t * p), spectra["in"], vectors)
    if vbmf["R4"] == 0 or vbmf.get("R3", 1) == 0:
        raise Skip(f"VBMF rank 0 ({fmt(vbmf)}): the weights look like noise to EVBMF; set ranks with --ranks")
    r4 = policy_rank(vbmf["R4"], t, cfg)
    t1 = lowrank_costs(s, t, p, layer.groups, layer.in_pixels, layer.out_pixels, None, r4)
    if grams_in is not None:
        # Tucker-2 unless the input side would not shrink enough to pay for its 1x1 conv
        r3 = policy_rank(vbmf["R3"], s, cfg)
        t2 = lowrank_costs(s, t, p, layer.groups, layer.in_pixels, layer.out_pixels, r3, r4)
        if est_macs(layer, t2, r3) < est_macs(layer, t1, None):
            return plan("tucker2", r3, r4), grams_in
    return plan("tucker1", None, r4), None


def checked(layer: Layer, plan: Plan, cfg: CompressConfig) -> Plan:
    """``plan``, or Skip when it would not cut both weights and MACs (unless the policy allows it)."""
    if not cfg.require_savings:
        return plan
    pb, pa = plan.before.total_params, plan.after.total_params
    mb, ma = est_macs(layer, plan.before, None, before=True), est_macs(layer, plan.after, plan.r3)
    if pa >= pb or ma >= mb:
        raise Skip(f"no saving at ranks {fmt(ranks_of(plan))}: weights {pb}->{pa}, MACs/sample {mb}->{ma}")
    return plan


def check_rank(layer: str, which: str, value: object, full: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= full:
        raise WncError(
            f"--ranks gives {which}={value!r} for '{layer}', outside 1..{full}", f"use an integer between 1 and {full}"
        )
    return int(value)


def ranks_of(plan: Plan) -> dict[str, int]:
    return {"R3": plan.r3, "R4": plan.r4} if plan.r3 is not None else {"R": plan.r4}


def fmt(ranks: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ranks.items())


def est_macs(layer: Layer, costs: Costs, r3: int | None, before: bool = False) -> int:
    """MACs per sample; with a dynamic spatial size, per output position (input: stride area)."""
    if costs.macs is not None:
        return sum(costs.macs)
    stride_area = int(np.prod(layer.strides)) if layer.strides else 1
    if before or r3 is None:
        return costs.total_params
    p = costs.params
    return p[0] * stride_area + p[1] + p[2]


def describe_plan(rec: LayerReport, plan: Plan) -> None:
    """The plan's method, ranks and costs in the layer's record."""
    rec.method, rec.rank_source = plan.method, plan.source
    rec.vbmf_ranks = {k: plan.vbmf[k] for k in ("R3", "R4", "R") if k in plan.vbmf}
    rec.ranks = ranks_of(plan) if plan.r3 is not None or plan.method == "svd" else {"R4": plan.r4}
    rec.params_after = plan.after.total_params
    rec.macs_after = plan.after.total_macs
    rec.params_split = list(plan.after.params)
    rec.macs_split = list(plan.after.macs or [])
