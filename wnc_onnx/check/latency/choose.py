"""The latency-aware step of the low-rank pass: time each layer's forms, choose, explain."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Layer
from wnc_onnx.check.latency.allocate import LayerOptions
from wnc_onnx.check.latency.block import ChannelBlock
from wnc_onnx.check.latency.forms import ORIGINAL, Form, ModeSpectra, at_least_as_accurate, ladder
from wnc_onnx.check.latency.isolate import NotTimeable, isolated
from wnc_onnx.check.latency.oracle import Oracle, Target
from wnc_onnx.data.feeds import random_inputs
from wnc_onnx.errors import WncError, one_line

log = logging.getLogger(__name__)


class LatencyChooser:
    """Builds each layer's measured options; ``wide``: also the rank ladder (speed-up target)."""

    def __init__(self, target: Target, speedup: float | None = None, oracle: Oracle | None = None) -> None:
        self.target = target
        self.speedup = speedup
        self.oracle = oracle or Oracle(target)
        self.whole_ms: float | None = None
        self.block: ChannelBlock | None = None  # measured on the target (the policy sets it)

    def options(
        self,
        layer: Layer,
        rule: Any,
        ctx: GraphContext,
        base: Form,
        spectra: ModeSpectra,
        check: Callable[[Form], str | None],
    ) -> LayerOptions | str:
        """The layer's forms, timed; or why it cannot be timed alone."""
        block = self.block.block if self.block is not None else 1
        multiples = (block,) if block > 1 else ()
        forms = at_least_as_accurate(base, layer.s, layer.t, layer.tucker_capable, multiples)
        if self.speedup is not None:
            forms += [f for f in ladder(base, layer.s, layer.t, max(block, 8)) if f not in forms]
        rejected: dict[Form, str] = {}
        candidates = [ORIGINAL]
        for f in forms:
            why = check(f)
            if why is None:
                candidates.append(f)
            else:
                rejected[f] = why
        try:
            cases = [isolated(layer, rule, ctx, f) for f in candidates]
        except NotTimeable as exc:
            return str(exc)
        except Exception as exc:  # a layer onnxruntime cannot run alone keeps the policy's choice
            return f"cannot be timed alone ({one_line(exc, 120)})"
        try:
            measured = self.oracle.measure(cases)
        except Exception as exc:
            return f"onnxruntime cannot run it alone ({one_line(exc, 120)})"
        return LayerOptions(
            layer.name,
            base,
            dict(zip(candidates, measured, strict=True)),
            {f: spectra.rel_error(f) for f in candidates},
            rejected,
        )

    def time_whole(
        self,
        model: onnx.ModelProto,
        input_shapes: Mapping[str, Sequence[int]],
        input_values: Mapping[str, float] | None = None,
    ) -> float:
        """The whole model's time on the target (ms), alone: the base of a speed-up target."""

        t = self.target
        try:
            feeds = random_inputs(model, input_shapes, values=input_values)
            sess = t.open(model)
            sess.run(None, feeds)
        except WncError:
            raise
        except Exception as exc:
            raise WncError(
                f"--target-speedup needs the whole model to run in onnxruntime: {one_line(exc, 150)}",
                "give the sizes of dynamic inputs with --input-shape NAME=D1,D2,..., and the values of inputs random "
                "data cannot stand for with --input-value NAME=V",
            ) from None
        timing = t.time([(sess, feeds)], min_round_seconds=0.1)[0]
        self.whole_ms = timing.median * 1e3
        return self.whole_ms


def mode_spectra(values_out: list[np.ndarray], values_in: list[np.ndarray] | None) -> ModeSpectra:
    return ModeSpectra([np.asarray(v, dtype=np.float64) for v in values_out], values_in)


def describe(opt: LayerOptions, chosen: Form, why: str, rejected: Mapping[Form, str]) -> dict[str, Any]:
    """The report's record of a latency choice."""
    return {
        "chosen": chosen.label,
        "why": why,
        "measured_ms": {f.label: round((opt.alone or opt.times)[f].median * 1e3, 4) for f in opt.times},
        "spread": {f.label: round(opt.times[f].spread, 3) for f in opt.times},
        "kernel_error": {f.label: round(opt.errors[f], 4) for f in opt.times},
        "rejected": {f.label: r for f, r in rejected.items() if f != chosen},
        "cached": all(m.cached for m in opt.times.values()),
    }


def measure_pair(
    target: Target,
    original: onnx.ModelProto,
    compressed: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    rounds: int = 7,
    input_values: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The whole original and compressed models timed side by side on the target (interleaved):
    the speed-up is the median of the rounds' speed-ups (drift hits both models of a round alike),
    with the lowest and highest round's."""
    base, other = measure_models(target, [original, compressed], input_shapes, rounds, input_values)
    return {
        "original_ms": base["ms"],
        "compressed_ms": other["ms"],
        "speedup": other["speedup"],
        "range": other["range"],
        "spread": round(max(base["spread"], other["spread"]), 3),
    }


def measure_models(
    target: Target,
    models: Sequence[onnx.ModelProto],
    input_shapes: Mapping[str, Sequence[int]],
    rounds: int = 7,
    input_values: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Whole models timed side by side on the target (interleaved), each against the first:
    ``ms`` (median), ``speedup`` (median of the rounds' speed-ups), ``range``, ``spread``."""
    feeds = random_inputs(models[0], input_shapes, values=input_values)
    timings = target.time(
        [(target.open(m), feeds) for m in models],
        rounds=max(rounds, target.rounds),
        warmup=3,
        min_round_seconds=0.1,
    )
    base = timings[0]
    out = []
    for t in timings:
        ratios = [x / y for x, y in zip(base.round_medians, t.round_medians, strict=True) if y > 0]
        out.append(
            {
                "ms": round(t.median * 1e3, 4),
                "speedup": round(float(np.median(ratios)), 3) if ratios else round(base.median / t.median, 3),
                "range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
                "spread": round(t.spread, 3),
            }
        )
    return out
