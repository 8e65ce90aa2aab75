"""Choosing forms from measured times: never slower per layer, and ranks for a speed-up target.

Pure functions over numbers (times and kernel errors), so the rules are tested with
stubbed timings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wnc_onnx.check.latency.forms import ORIGINAL, Form
from wnc_onnx.check.latency.oracle import Measured

MIN_MARGIN = 0.03  # a form must beat the original by at least this fraction (and the noise) to be kept
MAX_MARGIN = 0.10  # the noise counted at most: beyond that the timings say little, and the warning says so


@dataclass
class LayerOptions:
    """One layer's measured forms. ``base``: the form the rank policy chose."""

    name: str
    base: Form
    times: dict[Form, Measured]
    errors: dict[Form, float]
    rejected: dict[Form, str] = field(default_factory=dict)  # forms not timed, and why
    alone: dict[Form, Measured] | None = None  # the times alone where ``times`` hold in-context ones

    def ms(self, f: Form) -> float:
        return self.times[f].median * 1e3


@dataclass
class Choice:
    form: Form
    why: str
    rejected: dict[Form, str]


def margin(a: Measured, b: Measured) -> float:
    return min(MAX_MARGIN, max(MIN_MARGIN, (a.spread + b.spread) / 2))


def never_slower(opt: LayerOptions) -> Choice:
    """The fastest form whose kernel error is at most the policy form's; the original when
    no such form beats it by more than the measured noise."""
    rejected = dict(opt.rejected)
    orig = opt.times[ORIGINAL]
    limit = opt.errors.get(opt.base, 0.0) + 1e-9
    qualifying = []
    for f in opt.times:
        if f == ORIGINAL:
            continue
        if opt.errors[f] > limit:
            rejected[f] = f"kernel error {opt.errors[f]:.3f} above the policy's {opt.errors[opt.base]:.3f}"
        else:
            qualifying.append(f)
    if not qualifying:
        return Choice(ORIGINAL, "no decomposed form to time", rejected)
    best = min(qualifying, key=lambda f: opt.times[f].median)
    for f in qualifying:
        if f != best:
            rejected[f] = f"slower than {best.label} ({opt.ms(f):.3f} vs {opt.ms(best):.3f} ms)"
    m = margin(orig, opt.times[best])
    if opt.times[best].median >= orig.median * (1 - m):
        rejected[best] = (
            f"not faster than the original beyond the noise ({opt.ms(best):.3f} vs {opt.ms(ORIGINAL):.3f} ms, "
            f"margin {m:.0%})"
        )
        return Choice(ORIGINAL, "the original is as fast or faster", rejected)
    rejected[ORIGINAL] = f"slower ({opt.ms(ORIGINAL):.3f} ms)"
    return Choice(best, f"fastest: x{orig.median / opt.times[best].median:.2f} over the original", rejected)


@dataclass
class Allocation:
    forms: dict[str, Form]
    predicted_ms: float
    original_ms: float
    goal_ms: float
    reached: bool

    @property
    def predicted_speedup(self) -> float:
        return self.original_ms / self.predicted_ms if self.predicted_ms > 0 else float("inf")


def allocate(options: Mapping[str, LayerOptions], whole_ms: float, target: float) -> Allocation:
    """Forms per layer so that the predicted model time reaches ``whole_ms / target`` with
    the least kernel error: first the smallest error bound that every layer may use (each
    layer takes its fastest form within the bound, so no single layer is wrecked to spare
    the others), then, while the goal still holds, forms with less error where they cost
    the least time (the most squared error removed per millisecond).

    The prediction is the whole model's measured time less what each layer saves alone.
    The policy's own forms are among the options, so the bound starts from EVBMF's ranks."""
    goal = whole_ms / target

    def saved(name: str, f: Form) -> float:
        o = options[name]
        return o.ms(ORIGINAL) - o.ms(f)

    def err(name: str, f: Form) -> float:
        return options[name].errors.get(f, 0.0)

    def pick(bound: float) -> dict[str, Form]:
        out = {}
        for n, o in options.items():
            allowed = [f for f in o.times if err(n, f) <= bound + 1e-12]
            out[n] = min(allowed, key=lambda f: (o.ms(f), err(n, f)))  # noqa: B023 (used at once)
        return out

    def predict(sel: Mapping[str, Form]) -> float:
        return whole_ms - sum(saved(n, f) for n, f in sel.items())

    bounds = sorted({err(n, f) for n, o in options.items() for f in o.times})
    if not bounds:
        return Allocation({}, whole_ms, whole_ms, goal, whole_ms <= goal)
    lo, hi = 0, len(bounds) - 1
    if predict(pick(bounds[hi])) > goal:
        cur = pick(bounds[hi])
        return Allocation(cur, predict(cur), whole_ms, goal, False)
    while lo < hi:  # the time predicted falls as the bound grows
        mid = (lo + hi) // 2
        if predict(pick(bounds[mid])) <= goal:
            hi = mid
        else:
            lo = mid + 1
    cur = pick(bounds[lo])
    predicted = predict(cur)
    while True:
        best, score = None, -1.0
        for n, o in options.items():
            for f in o.times:
                better = err(n, cur[n]) ** 2 - err(n, f) ** 2
                if better <= 1e-15:
                    continue
                extra = saved(n, cur[n]) - saved(n, f)
                if predicted + extra > goal:
                    continue
                s = better / extra if extra > 1e-12 else float("inf")
                if s > score:
                    best, score = (n, f), s
        if best is None:
            break
        predicted += saved(best[0], cur[best[0]]) - saved(best[0], best[1])
        cur[best[0]] = best[1]
    return Allocation(cur, predicted, whole_ms, goal, True)


def bounds(options: Mapping[str, LayerOptions], alloc: Allocation, top: int = 3) -> dict[str, Any]:
    """What keeps the fastest forms from a speed-up target: the time of the nodes that are not
    timed layers (the whole model less its layers alone) and the layers that take the most
    time in their fastest form."""
    layers_ms = sum(o.ms(ORIGINAL) for o in options.values())
    slowest = sorted(options.items(), key=lambda kv: -kv[1].ms(alloc.forms.get(kv[0], ORIGINAL)))[:top]
    return {
        "other_ms": round(max(0.0, alloc.original_ms - layers_ms), 4),
        "predicted_ms": round(alloc.predicted_ms, 4),
        "layers": [
            {
                "layer": name,
                "form": alloc.forms.get(name, ORIGINAL).label,
                "ms": round(o.ms(alloc.forms.get(name, ORIGINAL)), 4),
                "original_ms": round(o.ms(ORIGINAL), 4),
            }
            for name, o in slowest
        ],
    }


def bounds_text(b: dict[str, Any]) -> str:
    """One phrase naming what bounds the speed-up: the other nodes' time and the slowest layers."""
    layers = b.get("layers") or []
    named = ", ".join(f"{x['layer']} {x['ms']:.2f} ms ({x['form']})" for x in layers)
    return f"the nodes that are not layers take {b['other_ms']:.2f} ms of the {b['predicted_ms']:.2f} ms predicted" + (
        f"; the slowest layers at their fastest forms: {named}" if named else ""
    )
