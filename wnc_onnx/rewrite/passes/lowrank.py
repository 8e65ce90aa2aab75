"""The whole-network low-rank pass (Kim et al. 2016, section 3).

For every Conv/Gemm/MatMul a rule matches: choose ranks (explicit, or EVBMF on the
mode matricizations plus the rank policy: ``lowrank_plan``), check that the rewrite saves
weights and MACs, factor the weight (Tucker-2 / Tucker-1 / SVD, fitted to calibration data
when there are some: ``lowrank_factor``) and splice the new nodes in place of the old one.
With a latency policy (``lowrank_latency``) every layer of a graph is planned first, the
policy times and chooses forms, then the layers are factored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from wnc_onnx.analyze.graph import (
    GraphContext,
    add_initializers,
    count_reads,
    infer_shapes,
    mirrors_inputs,
    prune_unread,
    subgraphs,
)
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.analyze.numeric.calibrated import PatchStats
from wnc_onnx.analyze.numeric.gram import Spectrum, mode_gram
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import NothingToCompressError, WncError
from wnc_onnx.io import external_data
from wnc_onnx.io.threads import limited
from wnc_onnx.report import LayerReport, Report
from wnc_onnx.rewrite.passes.base import PassResult, working_copy
from wnc_onnx.rewrite.passes.calibrate import calibrate
from wnc_onnx.rewrite.passes.lowrank_factor import factor
from wnc_onnx.rewrite.passes.lowrank_latency import LatencyPolicy, Planned
from wnc_onnx.rewrite.passes.lowrank_plan import LayerState, Skip, before_costs, describe_plan, plan_layer
from wnc_onnx.rewrite.passes.rules import DEFAULT_RULES, Rule
from wnc_onnx.rewrite.state import RunState

log = logging.getLogger(__name__)


class LowRankPass:
    """Pass: decompose every selected layer; ``plan_only`` chooses ranks and stops there.

    ``state``: the run's state (calibration statistics, layers to keep whole); ``latency``:
    the policy that times forms on the target, or None."""

    name = "lowrank"

    def __init__(
        self,
        cfg: CompressConfig,
        state: RunState | None = None,
        rules: tuple[Rule, ...] = DEFAULT_RULES,
        plan_only: bool = False,
        threads: int = 1,
        latency: LatencyPolicy | None = None,
    ):
        self.cfg = cfg
        self.state = state or RunState()
        self.rules = rules
        self.plan_only = plan_only
        self.threads = threads  # layers analyzed at a time (see _analyzed)
        self.latency = latency
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
            self.calibrated = calibrate(
                model, found[0][1], self.cfg, self.state.calibration, found[0][0], report.warnings
            )  # main graph
        if self.latency is not None:
            self.latency.start(model, report)
            self.latency.fill_shapes(model, found[0][0], [layer for layer, _ in found[0][1]])
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
        if self.latency is not None:
            self.latency.finish(report)
        return PassResult(model=model, report=report, modified=modified)

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
            # one line per layer per compression: a rerun (a flow building again) shows the layers whose outcome changed
            outcome = f"{rec.status} {rec.method} {rec.ranks} {rec.reason}"
            unchanged = self.state.shown.get(layer.name) == outcome
            self.state.shown[layer.name] = outcome
            # fixed-width columns first, the (any-length) name and details last
            (log.debug if unchanged else log.info)(
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
        if self.latency is not None:  # plan all, time and choose (alone on the cores), then factor
            planned = [self._planned_timed(layer, rule, ctx) for layer, rule in layers]
            self.latency.choose(ctx, planned)
            for p in planned:
                t0 = time.perf_counter()
                factors = None if p.state is None else self._factor(p.layer, p.state)
                p.rec.seconds = round(p.rec.seconds + time.perf_counter() - t0, 4)
                yield p.rec, factors
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
        before = before_costs(layer) if layer.t else None
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

    def _planned_timed(self, layer: Layer, rule: Rule | None, ctx: GraphContext) -> Planned:
        t0 = time.perf_counter()
        rec, state = self._planned(layer, rule, ctx)
        rec.seconds = round(time.perf_counter() - t0, 4)
        return Planned(layer, rule, rec, state, self.calibrated.get(layer.name))

    def _planned(self, layer: Layer, rule: Rule | None, ctx: GraphContext) -> tuple[LayerReport, LayerState | None]:
        if layer.skip:
            return self._record(layer, "skipped", layer.skip), None
        reason = self.state.keep_whole.get(layer.name) or self.cfg.selects(layer.name, layer.op_type)
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
            plan, grams_in = plan_layer(layer, self.cfg, kernels, sources, grams_out, spectra, not self.plan_only)
        except Skip as skip:
            return self._record(layer, "skipped", str(skip)), None
        rec = self._record(layer, "planned")
        describe_plan(rec, plan)
        return rec, LayerState(plan, kernels, grams_in, grams_out, spectra)

    def _factor(self, layer: Layer, state: LayerState) -> Factors:
        return factor(layer, state, self.cfg, self.calibrated.get(layer.name), self.state.calibration)

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


def _work(layer: Layer) -> float:
    """Multiply-adds of the layer's Gram products (both channel modes), the bulk of its cost."""
    size = float(layer.s) * layer.t * layer.window * layer.groups
    return size * (layer.s + layer.t)
