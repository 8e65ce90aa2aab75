"""The whole-network low-rank pass (Kim et al. 2016, section 3).

For every Conv/Gemm/MatMul a rule matches: choose ranks (explicit, or EVBMF on the
mode matricizations plus the rank policy), check that the rewrite saves weights and
MACs, factor the weight (Tucker-2 / Tucker-1 / SVD) and splice the new nodes in
place of the old one. Layers are handled one at a time.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from wnc_onnx import external_data
from wnc_onnx.calibration import Reuse
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import NothingToCompressError, WncError
from wnc_onnx.graph import (
    GraphContext,
    add_initializers,
    count_reads,
    infer_shapes,
    mirrors_inputs,
    prune_unread,
    subgraphs,
)
from wnc_onnx.numeric.calibrated import PatchStats, data_fit, data_spectra, error_terms, fit_dtype, relative
from wnc_onnx.numeric.cost import Costs, conv_costs, lowrank_costs
from wnc_onnx.numeric.gram import (
    RESOLUTION_FLOAT64,
    Spectrum,
    mode_gram,
    precise_top_spectrum,
    resolution,
    sym_eig_top,
    sym_spectrum,
)
from wnc_onnx.numeric.svd import truncated_svd
from wnc_onnx.numeric.tucker import Tucker2, tucker1, tucker2
from wnc_onnx.numeric.vbmf import evbmf_from_eigenvalues, evbmf_from_singular_values
from wnc_onnx.passes.base import PassResult, working_copy
from wnc_onnx.passes.calibrate import calibrate
from wnc_onnx.passes.layer import Factors, Layer
from wnc_onnx.passes.rules import DEFAULT_RULES, Rule
from wnc_onnx.ranks import policy_rank
from wnc_onnx.report import LayerReport, Report
from wnc_onnx.threads import limited

if TYPE_CHECKING:
    from wnc_onnx.latency.allocate import Allocation
    from wnc_onnx.latency.forms import Form, ModeSpectra

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    method: str
    r3: int | None
    r4: int
    before: Costs
    after: Costs
    vbmf: dict[str, int]
    source: str


@dataclass
class _State:
    """A planned layer, kept until it is factored (after the latency step, where there is one)."""

    plan: _Plan
    kernels: list[np.ndarray]
    grams_in: list[np.ndarray] | None
    grams_out: list[np.ndarray]
    spectra: dict[str, list[Spectrum]]


def _vbmf_rank(
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


class LowRankPass:
    """Pass: decompose every selected layer; ``plan_only`` chooses ranks and stops there."""

    name = "lowrank"

    def __init__(
        self,
        cfg: CompressConfig,
        rules: tuple[Rule, ...] = DEFAULT_RULES,
        plan_only: bool = False,
        threads: int = 1,
    ):
        self.cfg = cfg
        self.rules = rules
        self.plan_only = plan_only
        self.threads = threads  # layers analyzed at a time (see _analyzed)
        self.chooser = None
        if cfg.timed and not plan_only:
            from wnc_onnx.latency.choose import LatencyChooser
            from wnc_onnx.latency.oracle import Oracle, Target

            target = Target(cfg.provider, max(1, threads), dict(cfg.session_options), cfg.graph_opt)
            self.chooser = LatencyChooser(target, cfg.target_speedup, Oracle(target, cache=cfg.latency_cache))
        self.allocation: Allocation | None = None  # the speed-up target's allocation
        # --calibration: layer -> the second moment of its input channels on the data
        self.calibrated: dict[str, PatchStats] = {}

    # -- discovery -------------------------------------------------------------------
    def find_layers(self, ctx: GraphContext) -> list[tuple[Layer, Rule | None]]:
        found: list[tuple[Layer, Rule | None]] = []
        for index, node in enumerate(ctx.graph.node):
            for rule in self.rules:
                layer = rule.match(node, ctx, self.cfg)
                if layer is not None:
                    layer.name = ctx.prefix + (node.name or f"{node.op_type}_{index}")
                    layer.extra["index"] = index
                    layer.extra["prefix"] = ctx.prefix
                    found.append((layer, rule))
                    break
        return found

    def _check_rank_names(self, layers: list[tuple[Layer, Rule | None]]) -> None:
        names = {layer.name for layer, _ in layers}
        unknown = sorted(set(self.cfg.ranks) - names)
        if unknown:
            shown = ", ".join(sorted(names)[:8]) + (" ..." if len(names) > 8 else "")
            raise WncError(
                f"--ranks names unknown layer(s) {unknown}",
                f"use node names of Conv/Gemm/MatMul layers of this model (run 'wnc-onnx inspect'): {shown}",
            )

    # -- the pass --------------------------------------------------------------------
    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        start = time.perf_counter()
        model = working_copy(model, in_place)
        contexts = self._contexts(model)
        found = [(ctx, self.find_layers(ctx)) for ctx in contexts]
        all_layers = [pair for _, layers in found for pair in layers]
        if not all_layers:
            raise NothingToCompressError(
                "nothing to compress: the model has no Conv, Gemm or MatMul node",
                "pass a CNN or MLP model with constant weights",
            )
        self._check_rank_names(all_layers)
        self.calibrated = {}
        if self.cfg.calibration is not None:  # inspect too: the planned ranks' error on the data
            self.calibrated = calibrate(model, found[0][1], self.cfg, found[0][0], report.warnings)  # main graph
        if self.chooser is not None:
            self._start_latency(model, report)
        total, done, modified = len(all_layers), 0, False
        # Subgraphs first: a parent's splice copies its nodes, subgraph bodies included.
        records: list[LayerReport] = []
        for ctx, layers in reversed(found):
            recs, changed = self._run_graph(ctx, layers, done, total)
            records[:0] = recs
            done += len(layers)
            modified |= changed
        report.layers.extend(records)
        report.passes.append(
            {
                "name": self.name,
                "seconds": round(time.perf_counter() - start, 3),
                "modified": modified,
                "plan_only": self.plan_only,
                "graphs": len(contexts),
            }
        )
        if self.chooser is not None:
            self._finish_latency(report)
        return PassResult(model=model, report=report, modified=modified)

    # -- latency-aware choices ---------------------------------------------------------
    def _start_latency(self, model: onnx.ModelProto, report: Report) -> None:
        assert self.chooser is not None
        oracle, target = self.chooser.oracle, self.chooser.target
        log.info(
            "latency-aware: timing each layer's forms on %s, %d thread(s)%s",
            target.provider,
            target.threads,
            f", options {dict(target.session_options)}" if target.session_options else "",
        )
        if oracle.busy:
            report.warnings.append(
                f"the machine was busy when the layers were timed (load average {oracle.load:.2f}): "
                "the latency-aware choices may be noisy; rerun on a quiet machine"
            )
        if self.cfg.target_speedup is not None:
            whole = self.chooser.time_whole(model, self.cfg.input_shapes)
            log.info("latency-aware: the whole model takes %.3f ms on the target", whole)

    def _finish_latency(self, report: Report) -> None:
        assert self.chooser is not None
        oracle = self.chooser.oracle
        oracle.save()
        info: dict[str, object] = {
            "target": self.chooser.target.key(),
            "timings_cached": oracle.hits,
            "timings_measured": oracle.misses,
            "cache": str(oracle.cache_path) if oracle.cache_path else None,
        }
        alloc = self.allocation
        if alloc is not None:
            info.update(
                {
                    "target_speedup": self.cfg.target_speedup,
                    "calibration": self.cfg.target_calibration,
                    "original_ms": round(alloc.original_ms, 4),
                    "predicted_ms": round(alloc.predicted_ms, 4),
                    "predicted_speedup": round(alloc.predicted_speedup, 3),
                    "reached": alloc.reached,
                }
            )
            if not alloc.reached and self.cfg.target_calibration <= 1.0:
                report.warnings.append(
                    f"--target-speedup {self.cfg.target_speedup:g} cannot be reached by these layers: the fastest "
                    f"forms measured give x{alloc.predicted_speedup:.2f} (predicted); the rest of the model "
                    "(other nodes) bounds it"
                )
        report.extras["latency"] = info

    def _contexts(self, model: onnx.ModelProto) -> list[GraphContext]:
        """The main graph and every nested subgraph, parents before children."""
        reads = count_reads(model.graph)
        top = GraphContext(model, shapes=infer_shapes(model, self.cfg.input_shapes), reads=reads)
        out = [top]
        for ctx in out:  # grows while iterating: breadth-first
            for index, node in enumerate(ctx.graph.node):
                for label, sub in subgraphs(node):
                    owner = node.name or f"{node.op_type}_{index}"
                    prefix = f"{ctx.prefix}{owner}/{label}/"
                    out.append(GraphContext(model, sub, prefix, top.shapes, outer=ctx, reads=reads))
        return out

    def _run_graph(
        self, ctx: GraphContext, layers: list[tuple[Layer, Rule | None]], done: int, total: int
    ) -> tuple[list[LayerReport], bool]:
        used: set[str] = set()
        replaced: dict[int, list[onnx.NodeProto]] = {}
        new_inits: list[onnx.TensorProto] = []
        dead_weights: list[str] = []
        records = []
        for i, (layer, rule), (rec, factors) in zip(
            range(done + 1, done + len(layers) + 1), layers, self._analyzed(ctx, layers), strict=True
        ):
            if factors is not None:
                assert rule is not None
                self._emit(layer, rule, ctx, rec, factors, used, replaced, new_inits, dead_weights)
            records.append(rec)
            # fixed-width columns first, the (any-length) name and details last
            log.info(
                "[%*d/%d] %6.2fs  %-7s  %-10s  %s  %s",
                len(str(total)),
                i,
                total,
                rec.seconds,
                rec.method or "-",
                rec.status,
                layer.name,
                rec.reason or ", ".join(f"{k}={v}" for k, v in rec.ranks.items()),
            )
        if replaced:
            self._splice(ctx, replaced, new_inits, dead_weights, layers)
        return records, bool(replaced)

    def _analyzed(
        self, ctx: GraphContext, layers: list[tuple[Layer, Rule | None]]
    ) -> Iterator[tuple[LayerReport, Factors | None]]:
        """(record, factors) of each layer, in order.

        Most layers are small: one BLAS thread each, several layers at a time, which uses
        the cores far better than threaded BLAS on small matrices (eigen-solvers of order
        512 hardly scale). A layer whose Gram products are large runs alone with all
        threads. At most a few results wait for their turn, so memory stays per layer."""
        if self.chooser is not None:  # plan all, time and choose (alone on the cores), then factor
            planned = [self._planned_timed(layer, rule, ctx) for layer, rule in layers]
            self._choose(ctx, layers, planned)
            for (layer, _), (rec, state) in zip(layers, planned, strict=True):
                t0 = time.perf_counter()
                factors = None if state is None else self._factor(layer, state)
                rec.seconds = round(rec.seconds + time.perf_counter() - t0, 4)
                yield rec, factors
            return
        workers = max(1, self.threads)
        if workers == 1 or len(layers) == 1:
            for layer, rule in layers:
                yield self._analyze(layer, rule, ctx)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wnc-lowrank") as pool:
            i = 0
            while i < len(layers):
                if _work(layers[i][0]) >= _ALONE_WORK:
                    yield self._analyze(layers[i][0], layers[i][1], ctx)  # all BLAS threads
                    i += 1
                    continue
                j = i
                while j < len(layers) and j - i < 4 * workers and _work(layers[j][0]) < _ALONE_WORK:
                    j += 1
                with limited(1):
                    yield from pool.map(lambda pair: self._analyze(pair[0], pair[1], ctx), layers[i:j])
                i = j

    def _record(self, layer: Layer, status: str, reason: str = "") -> LayerReport:
        before = self._before(layer) if layer.t else None
        main = not layer.extra.get("prefix")
        return LayerReport(
            name=layer.name,
            op_type=layer.op_type,
            status=status,
            reason=reason,
            rule=layer.rule,
            S=layer.s or None,
            T=layer.t or None,
            groups=layer.groups,
            kernel=list(layer.spatial),
            params_before=before.total_params if before else None,
            macs_before=before.total_macs if before else None,
            input_tensor=layer.node.input[0] if main and layer.node.input else None,
            output_tensor=layer.node.output[0] if main and layer.node.output else None,
        )

    def _before(self, layer: Layer) -> Costs:
        return conv_costs(layer.s, layer.t, layer.window, layer.groups, layer.out_pixels)

    def _analyze(self, layer: Layer, rule: Rule | None, ctx: GraphContext) -> tuple[LayerReport, Factors | None]:
        """Ranks and factors of one layer (numeric work only: safe to run beside other layers)."""
        t0 = time.perf_counter()
        rec, state = self._planned(layer, rule, ctx)
        factors = None if state is None or self.plan_only else self._factor(layer, state)
        if state is not None and self.plan_only and layer.name in self.calibrated:  # inspect --calibration
            fitted = self._factor(layer, state)
            rec.data_error, rec.data_error_free = fitted.data_error, fitted.data_error_free
        rec.seconds = round(time.perf_counter() - t0, 4)
        return rec, factors

    def _planned_timed(self, layer: Layer, rule: Rule | None, ctx: GraphContext) -> tuple[LayerReport, _State | None]:
        t0 = time.perf_counter()
        rec, state = self._planned(layer, rule, ctx)
        rec.seconds = round(time.perf_counter() - t0, 4)
        return rec, state

    def _planned(self, layer: Layer, rule: Rule | None, ctx: GraphContext) -> tuple[LayerReport, _State | None]:
        if layer.skip:
            return self._record(layer, "skipped", layer.skip), None
        reason = self.cfg.selects(layer.name, layer.op_type)
        if reason:
            return self._record(layer, "skipped", reason), None
        assert rule is not None
        kernels = [np.asarray(k, dtype=np.float32) if k.dtype.itemsize < 4 else k for k in rule.kernels(layer, ctx)]
        if not all(np.isfinite(k).all() for k in kernels):
            return self._record(layer, "skipped", "weight holds NaN or Inf values"), None
        conv_like = layer.rule in _CONV_LIKE
        # Out-mode Gram (conv-like) or the small side's Gram (matrix): shared by VBMF and factoring.
        sources = [k if conv_like or k.shape[0] <= k.shape[1] else k.T for k in kernels]
        grams_out = [mode_gram(k, 0) for k in sources]
        spectra: dict[str, list[Spectrum]] = {"out": [], "in": []}  # Gram spectra, reused to factor
        try:
            plan, grams_in = self._plan(layer, kernels, sources, grams_out, spectra)
        except _Skip as skip:
            return self._record(layer, "skipped", str(skip)), None
        rec = self._record(layer, "planned")
        self._describe_plan(rec, plan)
        return rec, _State(plan, kernels, grams_in, grams_out, spectra)

    def _describe_plan(self, rec: LayerReport, plan: _Plan) -> None:
        rec.method, rec.rank_source = plan.method, plan.source
        rec.vbmf_ranks = {k: plan.vbmf[k] for k in ("R3", "R4", "R") if k in plan.vbmf}
        rec.ranks = _ranks(plan) if plan.r3 is not None or plan.method == "svd" else {"R4": plan.r4}
        rec.params_after = plan.after.total_params
        rec.macs_after = plan.after.total_macs
        rec.params_split = list(plan.after.params)
        rec.macs_split = list(plan.after.macs or [])

    def _choose(
        self,
        ctx: GraphContext,
        layers: list[tuple[Layer, Rule | None]],
        planned: list[tuple[LayerReport, _State | None]],
    ) -> None:
        """Time every planned layer's forms on the target; keep the fastest that is as accurate
        (or, with a speed-up target, the allocation); a layer kept whole is skipped with the reason."""
        from wnc_onnx.latency.allocate import Choice, allocate, never_slower
        from wnc_onnx.latency.choose import describe, mode_spectra
        from wnc_onnx.latency.forms import ORIGINAL, Form

        assert self.chooser is not None
        options = {}
        todo = [(i, layer, rule) for i, (layer, rule) in enumerate(layers) if planned[i][1] is not None]

        def keep_whole(i: int, reason: str) -> None:
            rec = planned[i][0]
            rec.status, rec.reason, rec.method = "skipped", reason, None
            rec.ranks, rec.params_after, rec.macs_after, rec.params_split, rec.macs_split = {}, None, None, [], []
            planned[i] = (rec, None)

        for k, (i, layer, rule) in enumerate(todo, 1):
            rec, state = planned[i]
            assert state is not None
            plan = state.plan
            base = Form(plan.method, plan.r3, plan.r4)
            stats = self.calibrated.get(layer.name)
            if stats is not None:  # the forms' errors as output errors on the calibration data
                spectra = self._data_spectra(layer, state, stats)
            else:
                spectra = mode_spectra(
                    [sp.values for sp in state.spectra["out"]] or [_eigvals(g) for g in state.grams_out],
                    ([sp.values for sp in state.spectra["in"]] or [_eigvals(g) for g in state.grams_in])
                    if state.grams_in is not None
                    else None,
                )
            found = self.chooser.options(
                layer, rule, ctx, base, spectra, functools.partial(self._form_check, layer, base=plan)
            )
            if isinstance(found, str):
                log.info("  [%d/%d] %s: not timed (%s)", k, len(todo), layer.name, found)
                if self.cfg.target_speedup is not None:  # the allocation leaves it as the policy chose
                    rec.latency = {"chosen": base.label, "why": f"not timed: {found}"}
                    continue
                # never slower: what cannot be measured stays as it was
                rec.latency = {"chosen": "original", "why": f"not timed: {found}"}
                keep_whole(i, f"latency-aware: kept whole (not timed alone: {found})")
                continue
            options[layer.name] = found
            log.info(
                "  [%d/%d] %s: %s",
                k,
                len(todo),
                layer.name,
                ", ".join(f"{f.label} {found.ms(f):.3f} ms" for f in list(found.times)[:4])
                + (" ..." if len(found.times) > 4 else ""),
            )
        choices: dict[str, Choice] = {}
        if self.cfg.target_speedup is not None and options and not ctx.prefix and self.chooser.whole_ms:
            alloc = allocate(options, self.chooser.whole_ms, self.cfg.target_speedup * self.cfg.target_calibration)
            self.allocation = alloc
            for name, form in alloc.forms.items():
                opt = options[name]
                why = "speed-up target: " + (
                    "the policy's ranks" if form == opt.base else "kept whole" if form == ORIGINAL else "ranks moved"
                )
                choices[name] = Choice(form, why, dict(opt.rejected))
        else:
            choices = {name: never_slower(opt) for name, opt in options.items()}
        for i, layer, _ in todo:
            rec, state = planned[i]
            choice = choices.get(layer.name)
            if choice is None or state is None:
                continue
            rec.latency = describe(options[layer.name], choice.form, choice.why, choice.rejected)
            if choice.form == ORIGINAL:
                keep_whole(i, f"latency-aware: kept whole ({choice.why})")
                continue
            form = choice.form
            if form != Form(state.plan.method, state.plan.r3, state.plan.r4):
                state.plan = self._plan_for(layer, form, state.plan)
                if form.method == "tucker2" and state.grams_in is None:
                    state.grams_in = [mode_gram(k, 1) for k in state.kernels]
                self._describe_plan(rec, state.plan)
            rec.rank_source = "latency" if state.plan.source == "vbmf" else state.plan.source

    def _data_spectra(self, layer: Layer, state: _State, stats: PatchStats) -> ModeSpectra:
        """Each group's spectra of the output covariance and the whitened input Gram (calibrated.data_spectra)."""
        from wnc_onnx.latency.choose import mode_spectra

        outs: list[np.ndarray] = []
        ins: list[np.ndarray] = []
        for gi, k in enumerate(state.kernels):
            st = stats.group(gi, layer.s) if layer.groups > 1 else stats
            o, i = data_spectra(k, st, centered=bool(layer.extra.get("shift_bias")))
            outs.append(o)
            if i is not None:
                ins.append(i)
        known = state.grams_in is not None and len(ins) == len(outs)
        return mode_spectra(outs, ins if known else None)

    def _plan_for(self, layer: Layer, form: Form, base: _Plan) -> _Plan:
        """``base`` with the method and ranks of ``form``."""
        r3, r4 = form.r3, form.r4
        after = lowrank_costs(layer.s, layer.t, layer.window, layer.groups, layer.in_pixels, layer.out_pixels, r3, r4)
        return _Plan(form.method, r3, r4, base.before, after, base.vbmf, base.source)

    def _form_check(self, layer: Layer, form: Form, base: _Plan) -> str | None:
        """None when ``form`` saves weights and MACs as the policy requires, else why not."""
        try:
            self._checked(layer, self._plan_for(layer, form, base))
        except _Skip as skip:
            return str(skip)
        return None

    def _emit(
        self,
        layer: Layer,
        rule: Rule,
        ctx: GraphContext,
        rec: LayerReport,
        factors: Factors,
        used: set[str],
        replaced: dict[int, list[onnx.NodeProto]],
        new_inits: list[onnx.TensorProto],
        dead_weights: list[str],
    ) -> None:
        """The replacement nodes of a factored layer (in layer order: names stay deterministic)."""
        emitter = rule.rewrite(layer, factors, ctx, used)
        if ctx.is_external(layer.weight):  # weights read from disk go back to disk, not to memory
            emitter.initializers[:] = [external_data.spill(t) for t in emitter.initializers]
        replaced[int(layer.extra["index"])] = emitter.nodes  # type: ignore[call-overload]
        new_inits.extend(emitter.initializers)
        dead_weights.extend(ctx.chain(layer.weight))
        bias = layer.node.input[2] if len(layer.node.input) > 2 else ""
        if factors.bias_shift is not None and bias:  # replaced by the shifted bias
            dead_weights.extend(ctx.chain(bias))
        rec.status = "decomposed"
        rec.rel_error = factors.rel_error
        rec.data_error, rec.data_error_free = factors.data_error, factors.data_error_free
        rec.hooi_iterations = factors.hooi_iterations if factors.method == "tucker2" else None
        rec.nodes = [n.name for n in emitter.nodes]

    # -- ranks and structure --------------------------------------------------------
    def _plan(
        self,
        layer: Layer,
        kernels: list[np.ndarray],
        sources: list[np.ndarray],
        grams_out: list[np.ndarray],
        spectra: dict[str, list[Spectrum]],
    ) -> tuple[_Plan, list[np.ndarray] | None]:
        """Method and ranks for one layer, and the in-mode Grams when Tucker-2 needs them.

        ``sources``: the tensors ``grams_out`` were computed from (matrices oriented small
        side first)."""
        cfg = self.cfg
        spec = cfg.ranks.get(layer.name)
        s, t, p = layer.s, layer.t, layer.window
        vbmf: dict[str, int] = {}

        def plan(method: str, r3: int | None, r4: int) -> _Plan:
            after = lowrank_costs(s, t, p, layer.groups, layer.in_pixels, layer.out_pixels, r3, r4)
            return self._checked(
                layer, _Plan(method, r3, r4, self._before(layer), after, vbmf, "file" if spec is not None else "vbmf")
            )

        if not layer.tucker_capable:
            full = min(s, t)
            if isinstance(spec, tuple):
                raise WncError(
                    f"--ranks gives [R3, R4] for '{layer.name}', which is a matrix layer",
                    f"give one integer rank (1..{full}) for it",
                )
            if spec is not None:
                return plan("svd", None, _check_rank(layer.name, "R", spec, full)), None
            vbmf["R"] = _vbmf_rank(sources, 0, grams_out, (t, s), spectra["out"], not self.plan_only)
            if vbmf["R"] == 0:
                raise _Skip("VBMF rank 0: the weights look like noise to EVBMF; set a rank with --ranks")
            return plan("svd", None, policy_rank(vbmf["R"], full, cfg)), None

        if isinstance(spec, tuple):
            r3 = _check_rank(layer.name, "R3", spec[0], s)
            r4 = _check_rank(layer.name, "R4", spec[1], t)
            return plan("tucker2", r3, r4), [mode_gram(k, 1) for k in kernels]
        if spec is not None:
            return plan("tucker1", None, _check_rank(layer.name, "R4", spec, t)), None
        few_in = s <= cfg.tucker1_max_in
        grams_in = None if few_in else [mode_gram(k, 1) for k in kernels]
        vectors = not self.plan_only
        vbmf["R4"] = _vbmf_rank(kernels, 0, grams_out, (t, s * p), spectra["out"], vectors)
        if grams_in is not None:
            vbmf["R3"] = _vbmf_rank(kernels, 1, grams_in, (s, t * p), spectra["in"], vectors)
        if vbmf["R4"] == 0 or vbmf.get("R3", 1) == 0:
            raise _Skip(f"VBMF rank 0 ({_fmt(vbmf)}): the weights look like noise to EVBMF; set ranks with --ranks")
        r4 = policy_rank(vbmf["R4"], t, cfg)
        t1 = lowrank_costs(s, t, p, layer.groups, layer.in_pixels, layer.out_pixels, None, r4)
        if grams_in is not None:
            # Tucker-2 unless the input side would not shrink enough to pay for its 1x1 conv
            r3 = policy_rank(vbmf["R3"], s, cfg)
            t2 = lowrank_costs(s, t, p, layer.groups, layer.in_pixels, layer.out_pixels, r3, r4)
            if _est_macs(layer, t2, r3) < _est_macs(layer, t1, None):
                return plan("tucker2", r3, r4), grams_in
        return plan("tucker1", None, r4), None

    def _checked(self, layer: Layer, plan: _Plan) -> _Plan:
        if not self.cfg.require_savings:
            return plan
        pb, pa = plan.before.total_params, plan.after.total_params
        mb, ma = _est_macs(layer, plan.before, None, before=True), _est_macs(layer, plan.after, plan.r3)
        if pa >= pb or ma >= mb:
            raise _Skip(f"no saving at ranks {_fmt(_ranks(plan))}: weights {pb}->{pa}, MACs/sample {mb}->{ma}")
        return plan

    # -- factorization ----------------------------------------------------------------
    def _factor(self, layer: Layer, state: _State, skip_calibration: bool = False) -> Factors:
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

        stats = None if skip_calibration else self.calibrated.get(layer.name)
        if stats is not None:
            reuse = self.cfg.calibration if isinstance(self.cfg.calibration, Reuse) else None
            key = (layer.name, plan.method, plan.r3, plan.r4)
            if reuse is not None and key in reuse.fits:  # --max-error builds the same layer at the same ranks again
                return reuse.fits[key]
            factors = self._factor_calibrated(layer, state, stats)
            if reuse is not None:
                reuse.fits[key] = factors
            return factors
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
                    max_iter=self.cfg.hooi_max_iter,
                    tol=self.cfg.hooi_tol,
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

    def _factor_calibrated(self, layer: Layer, state: _State, stats: PatchStats) -> Factors:
        """Factors fitted to the layer's inputs on the calibration data (numeric/calibrated.py),
        with the output error of both them and the data-free factors at the same ranks."""
        plan = state.plan
        data_free = self._factor(layer, state, skip_calibration=True)
        shift = bool(layer.extra.get("shift_bias"))
        groups: list[dict[str, np.ndarray]] = []
        shifts: list[np.ndarray] = []
        err2 = free2 = den2 = kern2 = norm2 = 0.0
        sweeps = 0
        for gi, k in enumerate(state.kernels):
            st = stats.group(gi, layer.s) if layer.groups > 1 else stats
            dt = fit_dtype(k.size)  # the data-free approximation in the fit's precision (memory)
            free = {name: f.astype(dt, copy=False) for name, f in data_free.groups[gi].items()}
            tucker = plan.method == "tucker2"
            r_in = (plan.r3 or 1) if tucker else None  # Tucker-1 and SVD: the input side whole
            fit = data_fit(k, r_in, plan.r4, st, centered=shift, max_iter=self.cfg.hooi_max_iter, tol=self.cfg.hooi_tol)
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

    # -- graph surgery ---------------------------------------------------------------
    def _splice(
        self,
        ctx: GraphContext,
        replaced: dict[int, list[onnx.NodeProto]],
        new_inits: list[onnx.TensorProto],
        dead_weights: list[str],
        layers: list[tuple[Layer, Rule | None]],
    ) -> None:
        """Put the new nodes where the old ones were (order stays topological), then drop
        what only the old nodes used: their weights, and a Flatten/Reshape bypassed by a
        Tucker-2 FC together with its shape constant."""
        g, model = ctx.graph, ctx.model
        nodes: list[onnx.NodeProto] = []
        for i, node in enumerate(g.node):
            nodes.extend(replaced.get(i, [node]))
        bypassed = [
            ctx.producers[layer.node.input[0]]
            for layer, _ in layers
            if layer.rule == "flatten_gemm" and layer.node.input[0] in ctx.producers
        ]
        # The replaced weights (and the Constant / Identity nodes that made them), a bypassed
        # Flatten / Reshape and its shape input go when nothing reads them any more.
        candidates = set(dead_weights) | {name for n in bypassed for name in n.input[1:]}
        candidates |= {n.output[0] for n in bypassed}
        del g.node[:]
        g.node.extend(nodes)
        prune_unread(g, candidates, mirrors_inputs(model, g))
        add_initializers(model, g, new_inits)


_CONV_LIKE = ("conv", "flatten_gemm")  # rules whose kernels are (T, S, *spatial); others give matrices
# Multiply-adds of a layer's two Gram products above which it runs alone with all threads.
_ALONE_WORK = 2e10


def _eigvals(gram: np.ndarray) -> np.ndarray:
    from wnc_onnx.numeric.gram import sym_eigvals

    return sym_eigvals(gram)


def _work(layer: Layer) -> float:
    """Multiply-adds of the layer's Gram products (both channel modes), the bulk of its cost."""
    size = float(layer.s) * layer.t * layer.window * layer.groups
    return size * (layer.s + layer.t)


class _Skip(Exception):
    """A layer left unchanged, with the reason."""


def _check_rank(layer: str, which: str, value: object, full: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= full:
        raise WncError(
            f"--ranks gives {which}={value!r} for '{layer}', outside 1..{full}", f"use an integer between 1 and {full}"
        )
    return int(value)


def _ranks(plan: _Plan) -> dict[str, int]:
    return {"R3": plan.r3, "R4": plan.r4} if plan.r3 is not None else {"R": plan.r4}


def _fmt(ranks: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ranks.items())


def _est_macs(layer: Layer, costs: Costs, r3: int | None, before: bool = False) -> int:
    """MACs per sample; with a dynamic spatial size, per output position (input: stride area)."""
    if costs.macs is not None:
        return sum(costs.macs)
    stride_area = int(np.prod(layer.strides)) if layer.strides else 1
    if before or r3 is None:
        return costs.total_params
    p = costs.params
    return p[0] * stride_area + p[1] + p[2]
