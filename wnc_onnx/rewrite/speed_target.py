"""--target-speedup S met as measured on the target.

The allocation predicts the whole model's time from its layers timed alone; inside the model
the forms run differently (layouts change between layers, caches are shared), so the flow
measures what it built and corrects:

1. the whole original and compressed models are timed side by side (median of the rounds'
   speed-ups);
2. within 10% of S: done. Short of S with the fastest forms already: it cannot be met, and
   the report says the highest speed-up measured and what bounds it;
3. otherwise both models are profiled, and each decomposed layer counts in its times inside
   the model in every later allocation: its original and its chosen form as profiled, its
   other forms scaled by the original's time inside the model over its time alone;
4. the goal handed to the allocation is corrected: by the miss (the first time), along the
   slope of the last two measurements (log-log), or, once a goal that fell short and one
   that overshot are known, between the two (log-linear);
5. the passes run again (timings from the cache) and the loop goes back to 1, at most
   ``MAX_ALLOCATIONS`` times, or until a new goal builds forms already measured (no step
   between). Kept: the result closest to S within 10%; else the slowest that reaches S;
   else the fastest (of results that measured the same within the noise, the one that
   factors the fewest layers).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import onnx

from wnc_onnx.check.latency.allocate import bounds_text
from wnc_onnx.check.latency.forms import ORIGINAL, Form
from wnc_onnx.config import CompressConfig
from wnc_onnx.report import LayerReport, Report
from wnc_onnx.rewrite.pipeline import ModelLike, run_passes
from wnc_onnx.rewrite.state import RunState
from wnc_onnx.rewrite.whole_model import measure_whole, profile_pair

log = logging.getLogger(__name__)

TOLERANCE = 0.10  # the measured speed-up counts as met within this fraction of the target
MAX_ALLOCATIONS = 5
SCALE_LIMITS = (0.2, 5.0)  # the goal handed to the allocation, as a multiple of the target
SLOPE_LIMITS = (0.25, 2.0)  # d log(measured) / d log(goal) used to extrapolate
CHANGED = 0.10  # an in-context time this far from the time alone counts as a correction


def meet_target(
    model: ModelLike,
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    state: RunState,
    threads: int,
) -> tuple[onnx.ModelProto, Report]:
    """Allocate, measure, correct until the measured speed-up is within ``TOLERANCE`` of the target."""
    target = cfg.target_speedup
    assert target is not None
    tried: list[tuple[onnx.ModelProto, Report, dict[str, Any]]] = []
    stop = "allocations"
    while True:
        lat = report.extras.setdefault("latency", {})
        measured = lat.get("measured")
        if not measured and tried:  # a rerun could not be timed: keep to what was measured
            break
        if not measured:  # not timed (external data, an error): the warnings say why; the prediction stands
            if not lat.get("reached", True):
                where = bounds_text(lat["bounds"]) if lat.get("bounds") else "the layers have no faster forms"
                report.warnings.append(
                    f"--target-speedup {target:g} cannot be reached by these layers: the fastest forms measured "
                    f"give x{lat.get('predicted_speedup', 0):.2f} (predicted from the layers alone); {where}"
                )
            return result, report
        got = float(measured["speedup"])
        step = {
            "goal": round(target * state.target_scale, 3),
            "predicted_speedup": lat.get("predicted_speedup"),
            "measured_speedup": got,
            "range": measured.get("range"),
            "spread": measured.get("spread"),
            "decomposed": report.totals.decomposed,
            "fastest_forms": not lat.get("reached", True),
        }
        tried.append((result, report, step))
        log.info(
            "speed-up target x%g: allocation %d (goal x%.2f) measured x%.2f on the target",
            target,
            len(tried),
            step["goal"],
            got,
        )
        if abs(got / target - 1) <= TOLERANCE:
            stop = "met"
            break
        if got < target and step["fastest_forms"]:
            stop = "cannot"
            break
        if len(tried) >= MAX_ALLOCATIONS:
            break
        corrected = correct_in_context(original, result, report, cfg, threads, state)
        steps = [s for _, _, s in tried]
        scale = next_goal(steps, target) / target
        if not corrected and any(abs(scale * target / s["goal"] - 1) < 0.01 for s in steps):
            stop = "converged"
            break
        step["corrected_in_context"] = corrected
        state.target_scale = scale
        result, report = run_passes(model, cfg, state)
        if any(forms_of(report) == forms_of(r) for _, r, _ in tried):  # a goal between gave the same forms
            stop = "gap"
            tried[-1][2]["corrected_in_context"] = corrected
            break
        measure_whole(original, result, report, cfg, threads)
    result, report, best = pick(tried, target)
    state.target_scale = best["goal"] / target  # a later rebuild (int8's choices) allocates as the kept one did
    lat = report.extras.setdefault("latency", {})
    lat["steps"] = [s for _, _, s in tried]
    got = best["measured_speedup"]
    lat["met"] = abs(got / target - 1) <= TOLERANCE
    lat["measured_speedup"] = got
    if lat["met"]:
        return result, report
    if got > target and best["decomposed"] == 0:
        report.warnings.append(
            f"--target-speedup {target:g}: the model measured x{got:.2f} with no layer factored: the graph passes "
            "alone (folding, weights out of the graph inputs, dead code) already run it faster than the target"
        )
    elif stop == "cannot" or got < target and best["fastest_forms"]:
        where = bounds_text(lat["bounds"]) if lat.get("bounds") else "the layers have no faster forms"
        report.warnings.append(
            f"--target-speedup {target:g} cannot be met on this target: the highest measured is x{got:.2f} "
            f"(the fastest forms of every layer); {where}"
        )
    elif stop == "gap":
        below = [s for s in lat["steps"] if s["measured_speedup"] < target]
        above = [s for s in lat["steps"] if s["measured_speedup"] > target]
        if below and above:
            lo = max(below, key=lambda s: s["measured_speedup"])
            hi = min(above, key=lambda s: s["measured_speedup"])
            report.warnings.append(
                f"--target-speedup {target:g} cannot be met within {TOLERANCE:.0%}: the nearest allocations measured "
                f"x{lo['measured_speedup']:.2f} ({lo['decomposed']} layer(s) factored) and "
                f"x{hi['measured_speedup']:.2f} ({hi['decomposed']} factored), and the layers' forms offer no "
                f"step between them; kept x{got:.2f}"
            )
        else:
            report.warnings.append(
                f"--target-speedup {target:g} cannot be met within {TOLERANCE:.0%}: a new goal built the same forms "
                f"again (the layers the allocation can move offer nothing nearer to x{target:g}; layers inside If / "
                f"Loop bodies keep the policy's forms); kept x{got:.2f}"
            )
    else:
        spread = max(s["spread"] or 0 for s in lat["steps"])
        report.warnings.append(
            f"--target-speedup {target:g}: measured x{got:.2f} after {len(tried)} allocation(s), not within "
            f"{TOLERANCE:.0%} (the whole-model timings varied by up to {spread:.0%} between rounds); "
            "rerun on a quiet machine, or with --threads 1"
        )
    return result, report


def pick(
    tried: list[tuple[onnx.ModelProto, Report, dict[str, Any]]], target: float
) -> tuple[onnx.ModelProto, Report, dict[str, Any]]:
    """The allocation to keep: of those within ``TOLERANCE``, the closest to the target; else the
    slowest that reaches the target (the speed asked for, with the least compression); else the
    fastest. Of allocations that measured the same within the noise, the one factoring the fewest layers."""
    speed = [x[2]["measured_speedup"] for x in tried]
    within = [g for g in speed if abs(g / target - 1) <= TOLERANCE]
    if within:
        chosen = min(within, key=lambda g: abs(math.log(g / target)))
    elif any(g >= target for g in speed):
        chosen = min(g for g in speed if g >= target)
    else:
        chosen = max(speed)
    noise = max(0.03, *(x[2]["spread"] or 0 for x in tried))
    pool = [x for x in tried if x[2]["measured_speedup"] in within] if within else tried
    same = [x for x in pool if abs(math.log(x[2]["measured_speedup"] / chosen)) <= noise]
    return min(same, key=lambda x: (x[2]["decomposed"], abs(math.log(x[2]["measured_speedup"] / chosen))))


def forms_of(report: Report) -> list[tuple[str, str, tuple[tuple[str, int], ...]]]:
    """Each layer's outcome (status, ranks): two reports with equal forms built the same model."""
    return [(r.name, r.status, tuple(sorted((r.ranks or {}).items()))) for r in report.layers]


def next_goal(steps: list[dict[str, Any]], target: float) -> float:
    """The speed-up goal for the next allocation: between the nearest goals that fell short and
    overshot (log-linear in the measured speed-ups) when both are known; else along the slope of
    the last two measurements (log-log, the slope kept within ``SLOPE_LIMITS``); else the last
    goal scaled by the miss."""
    short = [s for s in steps if s["measured_speedup"] < target]
    over = [s for s in steps if s["measured_speedup"] > target]
    lo_lim, hi_lim = SCALE_LIMITS[0] * target, SCALE_LIMITS[1] * target

    def clip(goal: float) -> float:
        return min(hi_lim, max(lo_lim, goal))

    if short and over:
        a = max(short, key=lambda s: s["measured_speedup"])
        b = min(over, key=lambda s: s["measured_speedup"])
        ga, gb = math.log(a["measured_speedup"]), math.log(b["measured_speedup"])
        if gb - ga > 1e-9:
            w = (math.log(target) - ga) / (gb - ga)
            return clip(math.exp(math.log(a["goal"]) + w * (math.log(b["goal"]) - math.log(a["goal"]))))
    last = steps[-1]
    miss = math.log(target / max(last["measured_speedup"], 1e-6))
    if len(steps) >= 2:
        prev = steps[-2]
        dx = math.log(last["goal"] / prev["goal"])
        dy = math.log(last["measured_speedup"] / max(prev["measured_speedup"], 1e-6))
        if abs(dx) > 1e-6:
            slope = min(SLOPE_LIMITS[1], max(SLOPE_LIMITS[0], dy / dx))
            return clip(last["goal"] * math.exp(miss / slope))
    return clip(last["goal"] * math.exp(miss))


def form_of(rec: LayerReport) -> Form | None:
    """The form a decomposed layer's record describes."""
    r = rec.ranks or {}
    if rec.method == "tucker2" and "R3" in r and "R4" in r:
        return Form("tucker2", int(r["R3"]), int(r["R4"]))
    if rec.method == "tucker1" and "R4" in r:
        return Form("tucker1", None, int(r["R4"]))
    if rec.method == "svd" and "R" in r:
        return Form("svd", None, int(r["R"]))
    return None


def correct_in_context(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    threads: int,
    state: RunState,
) -> int:
    """Profile both models; each decomposed layer then counts in its times inside the model: its
    original and its chosen form as profiled, its other forms scaled by how the original's time
    inside the model compares with its time alone. Returns how many layers' chosen forms ran
    differently inside the model than alone (by more than ``CHANGED``, relative to the original)."""
    comp = profile_pair(original, result, report, cfg, threads)
    if comp is None:
        return 0
    inside = {x.layer: x for x in comp.layers}
    memo = state.latency
    changed = 0
    for rec in report.decomposed:
        x, lat, form = inside.get(rec.name), rec.latency or {}, form_of(rec)
        alone = lat.get("measured_ms") or {}
        if x is None or form is None or x.before_ms <= 0 or x.after_ms <= 0 or not alone.get("original"):
            continue
        memo.context_scale[rec.name] = x.before_ms / alone["original"]
        times = memo.in_context.setdefault(rec.name, {})
        times[ORIGINAL] = x.before_ms / 1e3
        times[form] = x.after_ms / 1e3
        timed = alone.get(form.label)
        if timed and abs(x.after_ms / x.before_ms - timed / alone["original"]) > CHANGED:
            changed += 1
    log.info("speed-up target: %d layer(s) ran differently inside the model than alone", changed)
    return changed
