"""The latency policy of the low-rank pass (--latency-aware, --target-speedup).

The pass plans every layer of a graph first; this policy then times each planned layer's
forms on the target (``check.latency``) and, per layer, keeps the fastest form that is as
accurate as the plan (never-slower), or, for a speed-up target, allocates forms over the
network. A layer kept whole is skipped with the reason. The pass factors what is left.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Layer
from wnc_onnx.analyze.numeric.calibrated import PatchStats, data_spectra
from wnc_onnx.analyze.numeric.gram import mode_gram, sym_eigvals
from wnc_onnx.check.latency.allocate import Allocation, Choice, LayerOptions, allocate, bounds, never_slower
from wnc_onnx.check.latency.block import ChannelBlock, measure_block, rounded_note
from wnc_onnx.check.latency.choose import LatencyChooser, describe, mode_spectra
from wnc_onnx.check.latency.forms import ORIGINAL, Form, ModeSpectra
from wnc_onnx.check.latency.isolate import runtime_shapes, unknown_sizes
from wnc_onnx.check.latency.memo import LatencyMemo
from wnc_onnx.check.latency.oracle import Measured, Oracle, Target
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import one_line
from wnc_onnx.report import LayerReport, Report
from wnc_onnx.rewrite.passes.lowrank_plan import LayerState, Skip, checked, describe_plan, plan_at

log = logging.getLogger(__name__)


@dataclass
class Planned:
    """One layer as the pass planned it: ``state`` is None once it is left whole."""

    layer: Layer
    rule: Any
    rec: LayerReport
    state: LayerState | None
    stats: PatchStats | None = None  # its calibration statistics, if any

    def keep_whole(self, reason: str) -> None:
        rec = self.rec
        rec.status, rec.reason, rec.method = "skipped", reason, None
        rec.ranks, rec.params_after, rec.macs_after, rec.params_split, rec.macs_split = {}, None, None, [], []
        self.state = None

    def base(self) -> Form:
        assert self.state is not None
        plan = self.state.plan
        return Form(plan.method, plan.r3, plan.r4)

    def spectra(self) -> ModeSpectra:
        """Each group's spectra: of the output covariance and the whitened input Gram on the
        calibration data (the forms' errors as output errors), else of the kernel's modes."""
        state = self.state
        assert state is not None
        if self.stats is None:
            return mode_spectra(
                [sp.values for sp in state.spectra["out"]] or [sym_eigvals(g) for g in state.grams_out],
                ([sp.values for sp in state.spectra["in"]] or [sym_eigvals(g) for g in state.grams_in])
                if state.grams_in is not None
                else None,
            )
        layer, outs, ins = self.layer, [], []
        for gi, k in enumerate(state.kernels):
            st = self.stats.group(gi, layer.s) if layer.groups > 1 else self.stats
            o, i = data_spectra(k, st, centered=bool(layer.extra.get("shift_bias")))
            outs.append(o)
            if i is not None:
                ins.append(i)
        known = state.grams_in is not None and len(ins) == len(outs)
        return mode_spectra(outs, ins if known else None)

    def check(self, form: Form, cfg: CompressConfig) -> str | None:
        """None when ``form`` saves weights and MACs as the policy requires, else why not."""
        assert self.state is not None
        try:
            checked(self.layer, plan_at(self.layer, form.method, form.r3, form.r4, self.state.plan), cfg)
        except Skip as skip:
            return str(skip)
        return None

    def adopt(self, form: Form) -> None:
        """Factor the layer in ``form`` instead of the plan's."""
        state = self.state
        assert state is not None
        if form != self.base():
            state.plan = plan_at(self.layer, form.method, form.r3, form.r4, state.plan)
            if form.method == "tucker2" and state.grams_in is None:
                state.grams_in = [mode_gram(k, 1) for k in state.kernels]
            describe_plan(self.rec, state.plan)
        self.rec.rank_source = "latency" if state.plan.source == "vbmf" else state.plan.source


class LatencyPolicy:
    """Chooses each layer's form by its time on the target. ``memo``: what the runs of one
    compression share (the timer and its counts, the original's time, the channel block,
    in-context corrections); ``target_scale`` multiplies a speed-up target (the flow's
    corrections after a measured miss)."""

    def __init__(
        self, cfg: CompressConfig, threads: int, memo: LatencyMemo | None = None, target_scale: float = 1.0
    ) -> None:
        self.cfg = cfg
        self.target_scale = target_scale
        self.memo = memo or LatencyMemo()
        target = Target.of(cfg, threads)
        if self.memo.oracle is None or self.memo.oracle.target != target:
            self.memo.oracle = Oracle(target, cache=cfg.latency_cache)
        self.chooser = LatencyChooser(target, cfg.target_speedup, self.memo.oracle)
        self.chooser.whole_ms = self.memo.whole_ms
        self.allocation: Allocation | None = None
        self.options: dict[str, LayerOptions] = {}

    def start(self, model: onnx.ModelProto, report: Report) -> None:
        oracle, target, memo = self.chooser.oracle, self.chooser.target, self.memo
        first = memo.block is None
        (log.info if first else log.debug)(
            "latency-aware: timing each layer's forms on %s, %d thread(s)%s",
            target.provider,
            target.threads,
            f", options {dict(target.session_options)}" if target.session_options else "",
        )
        if oracle.busy:
            note = (
                f"the machine was busy when the layers were timed (load average {oracle.load:.2f}): "
                "the latency-aware choices may be noisy; rerun on a quiet machine"
            )
            if note not in report.warnings:
                report.warnings.append(note)
        if first:
            try:
                memo.block = measure_block(oracle)
            except Exception as exc:  # rounding is a refinement: without the probe, no rounded forms
                log.warning(
                    "the channel block could not be measured (%s); no rounded ranks offered", one_line(exc, 120)
                )
                memo.block = ChannelBlock(1, 1.0)
            b = memo.block
            log.info(
                "latency-aware: channel block %s",
                f"{b.block} (ranks rounded up to it ran x{b.gain:.2f} faster, measured)"
                if b.block > 1
                else f"none (rounding ranks up was not faster: x{b.gain:.2f})",
            )
        self.chooser.block = memo.block
        if self.cfg.target_speedup is not None and memo.whole_ms is None:
            memo.whole_ms = self.chooser.time_whole(model, self.cfg.input_shapes, self.cfg.input_values)
            log.info("latency-aware: the whole model takes %.3f ms on the target", memo.whole_ms)
        self.chooser.whole_ms = memo.whole_ms

    def fill_shapes(self, model: onnx.ModelProto, ctx: GraphContext, layers: list[Layer]) -> None:
        """Sizes shape inference left open at the layers' inputs and outputs, from one run of
        the model (once per compression): every layer with a static size in the run is timed."""
        memo = self.memo
        if memo.shapes is None:
            names = [n for layer in layers for n in (layer.node.input[0], layer.node.output[0])]
            todo = unknown_sizes(ctx, list(dict.fromkeys(names)))
            memo.shapes = runtime_shapes(model, todo, self.cfg.input_shapes, self.cfg.input_values)
            if todo:
                log.info(
                    "latency-aware: %d of %d layer input/output sizes found by running the model (shape inference "
                    "left them open)",
                    len(memo.shapes),
                    len(todo),
                )
        for name, dims in memo.shapes.items():
            if name in ctx.tensor_names:
                ctx.shapes[name] = list(dims)

    def choose(self, ctx: GraphContext, planned: list[Planned]) -> None:
        """Time every planned layer's forms on the target; keep the fastest that is as accurate
        (or, with a speed-up target, the allocation); a layer kept whole is skipped with the reason."""
        cfg, memo = self.cfg, self.memo
        options = {}
        todo = [p for p in planned if p.state is not None]
        for k, p in enumerate(todo, 1):
            assert p.state is not None
            base = p.base()
            shown = p.layer.name in memo.logged  # one progress line per layer per compression
            say = log.debug if shown else log.info
            memo.logged.add(p.layer.name)
            found = self.chooser.options(p.layer, p.rule, ctx, base, p.spectra(), functools.partial(_check, p, cfg=cfg))
            if isinstance(found, str):
                say("  [%d/%d] %s: not timed (%s)", k, len(todo), p.layer.name, found)
                if cfg.target_speedup is not None:  # the allocation leaves it as the policy chose
                    p.rec.latency = {"chosen": base.label, "why": f"not timed: {found}"}
                    continue
                # never slower: what cannot be measured stays as it was
                p.rec.latency = {"chosen": "original", "why": f"not timed: {found}"}
                p.keep_whole(f"latency-aware: kept whole (not timed alone: {found})")
                continue
            scale = memo.context_scale.get(p.layer.name)
            if scale is not None:  # inside the model (a speed-up target's correction): see speed_target
                inside = memo.in_context.get(p.layer.name, {})
                found.alone = dict(found.times)
                for f, m in found.alone.items():
                    found.times[f] = Measured(inside.get(f, m.median * scale), m.spread, m.cached)
            options[p.layer.name] = found
            say(
                "  [%d/%d] %s: %s",
                k,
                len(todo),
                p.layer.name,
                ", ".join(f"{f.label} {found.ms(f):.3f} ms" for f in list(found.times)[:4])
                + (" ..." if len(found.times) > 4 else ""),
            )
        self.options.update(options)
        choices: dict[str, Choice] = {}
        if cfg.target_speedup is not None and options and not ctx.prefix and self.chooser.whole_ms:
            alloc = allocate(options, self.chooser.whole_ms, cfg.target_speedup * self.target_scale)
            self.allocation = alloc
            for name, form in alloc.forms.items():
                opt = options[name]
                why = "speed-up target: " + (
                    "the policy's ranks" if form == opt.base else "kept whole" if form == ORIGINAL else "ranks moved"
                )
                choices[name] = Choice(form, why, dict(opt.rejected))
        else:
            choices = {name: never_slower(opt) for name, opt in options.items()}
        block = memo.block
        for p in todo:
            choice = choices.get(p.layer.name)
            if choice is None or p.state is None:
                continue
            opt = options[p.layer.name]
            p.rec.latency = describe(opt, choice.form, choice.why, choice.rejected)
            if block is not None:
                rounded = rounded_note(opt, choice.form, block, p.layer.s, p.layer.t)
                if rounded:
                    p.rec.latency["rounded"] = rounded
            if opt.alone is not None:  # what the allocation counted: profiled inside the model, or scaled
                p.rec.latency["in_context_ms"] = {f.label: round(opt.ms(f), 4) for f in opt.times}
            if choice.form == ORIGINAL:
                p.keep_whole(f"latency-aware: kept whole ({choice.why})")
                continue
            p.adopt(choice.form)

    def finish(self, report: Report) -> None:
        oracle, memo = self.chooser.oracle, self.memo
        oracle.save()
        info: dict[str, object] = {
            "target": self.chooser.target.key(),
            "timings_cached": oracle.hits,  # over every run of this compression
            "timings_measured": oracle.misses,
            "cache": str(oracle.cache_path) if oracle.cache_path else None,
        }
        if memo.block is not None:
            info["channel_block"] = memo.block.to_dict()
        alloc = self.allocation
        if alloc is not None:
            info.update(
                {
                    "target_speedup": self.cfg.target_speedup,
                    "calibration": self.target_scale,
                    "original_ms": round(alloc.original_ms, 4),
                    "predicted_ms": round(alloc.predicted_ms, 4),
                    "predicted_speedup": round(alloc.predicted_speedup, 3),
                    "reached": alloc.reached,
                }
            )
            if not alloc.reached:
                info["bounds"] = bounds(self.options, alloc)
        report.extras["latency"] = info


def _check(p: Planned, form: Form, cfg: CompressConfig) -> str | None:
    return p.check(form, cfg)
