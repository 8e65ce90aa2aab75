"""--latency-aware / --target-speedup after the first build: the whole models on the target.

Layers are timed alone by the pass's latency policy; inside the model, layout changes
between layers can make a chosen form slower. So the flow profiles both models and keeps
such layers whole (and builds again), and times the whole models side by side. A speed-up
target is then met as measured (``speed_target``).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from wnc_onnx.config import SUPPORTED_OPS, CompressConfig
from wnc_onnx.report import Report
from wnc_onnx.rewrite.pipeline import ModelLike, run_passes
from wnc_onnx.rewrite.speed_target import meet_target
from wnc_onnx.rewrite.state import RunState
from wnc_onnx.rewrite.whole_model import measure_whole, profile_pair

log = logging.getLogger(__name__)

CONTEXT_ROUNDS = 3  # reruns at most: keeping a layer whole changes its neighbours' layouts
CONTEXT_SLOWER = 0.05  # slower inside the model by more than this fraction ...
CONTEXT_SLOWER_MS = 0.002  # ... and this many milliseconds (profiled medians)
KEPT_WHOLE = "latency-aware: kept whole (its chosen form ran slower inside the model, profiled)"


def on_target(
    model: ModelLike,
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    state: RunState,
) -> tuple[onnx.ModelProto, Report]:
    """Latency-aware checks of the whole compressed model, which may compress again."""
    threads = int(report.config.get("threads_used") or 1)
    if cfg.latency_aware and cfg.target_speedup is None:
        # Layers are chosen alone; in the model, layout changes between layers can make a
        # chosen form slower there. Profile both models; keep such layers whole and redo.
        kept: list[dict[str, Any]] = []
        for attempt in range(CONTEXT_ROUNDS + 1):
            slower = slower_in_context(original, result, report, cfg, threads)
            if not slower:
                break
            if attempt == CONTEXT_ROUNDS:
                report.warnings.append(
                    f"{len(slower)} layer(s) still ran slower inside the model after {CONTEXT_ROUNDS} reruns: "
                    + ", ".join(x["layer"] for x in slower)
                    + "; exclude them with --exclude if that holds on a quiet machine"
                )
                break
            log.info(
                "latency-aware: %d layer(s) slower inside the model than alone; kept whole: %s",
                len(slower),
                ", ".join(x["layer"] for x in slower),
            )
            kept += slower
            timed = {r.name: r.latency for r in report.layers if r.latency}
            state.keep_whole.update({x["layer"]: KEPT_WHOLE for x in slower})
            result, report = run_passes(model, cfg, state)
            _keep_timings(report, timed, kept)
        if kept:
            report.extras.setdefault("latency", {})["kept_whole_in_context"] = kept
    measure_whole(original, result, report, cfg, threads)
    if cfg.target_speedup is not None:
        result, report = meet_target(model, original, result, report, cfg, state, threads)
    return result, report


def _keep_timings(report: Report, timed: dict[str, dict[str, Any]], kept: list[dict[str, Any]]) -> None:
    """A layer kept whole in context is skipped by the rerun before it is timed: its record
    keeps the timings of the run that chose it, with the choice now the original and why."""
    profiled = {x["layer"]: x for x in kept}
    for r in report.layers:
        if r.latency is None and r.name in profiled and r.name in timed:
            x = profiled[r.name]
            r.latency = {
                **timed[r.name],
                "chosen": "original",
                "why": f"ran slower inside the model than alone (profiled: {x['compressed_ms']:.3f} ms "
                f"compressed against {x['original_ms']:.3f} ms original)",
            }


def slower_in_context(
    original: onnx.ModelProto, result: onnx.ModelProto, report: Report, cfg: CompressConfig, threads: int
) -> list[dict[str, Any]]:
    """Decomposed layers that onnxruntime's profiler finds slower inside the compressed model."""
    comp = profile_pair(original, result, report, cfg, threads)
    if comp is None:
        return []
    decomposed = {r.name for r in report.decomposed}
    slower = [x for x in comp.layers if x.clearly_slower(CONTEXT_SLOWER, CONTEXT_SLOWER_MS)]
    out = {}
    for x in slower:
        # a layer left whole that got slower pays for a neighbour's layout: blame the decomposed layer feeding it
        name = x.layer if x.layer in decomposed else decomposed_neighbour(original, x.layer, decomposed)
        if name is not None and name not in out:
            out[name] = {"layer": name, "original_ms": round(x.before_ms, 4), "compressed_ms": round(x.after_ms, 4)}
            if name != x.layer:
                out[name]["slower_neighbour"] = x.layer
    return list(out.values())


def decomposed_neighbour(model: onnx.ModelProto, layer: str, decomposed: set[str]) -> str | None:
    """The decomposed layer next to ``layer`` (feeding it, else fed by it): a reorder that
    onnxruntime inserts between two layers runs, and is counted, with the one before."""
    return decomposed_upstream(model, layer, decomposed) or _decomposed_downstream(model, layer, decomposed)


def _decomposed_downstream(model: onnx.ModelProto, layer: str, decomposed: set[str], depth: int = 4) -> str | None:
    """The decomposed layer that ``layer``'s output reaches through at most ``depth`` nodes that are not layers."""
    return _nearest_decomposed(model, layer, decomposed, upstream=False, depth=depth)


def decomposed_upstream(model: onnx.ModelProto, layer: str, decomposed: set[str], depth: int = 4) -> str | None:
    """The decomposed layer whose output reaches ``layer``'s data input through at most
    ``depth`` nodes that are not layers (activations, pools, adds)."""
    return _nearest_decomposed(model, layer, decomposed, upstream=True, depth=depth)


def _nearest_decomposed(
    model: onnx.ModelProto, layer: str, decomposed: set[str], upstream: bool, depth: int
) -> str | None:
    """Breadth-first from ``layer`` against or along the data flow; the walk passes through
    nodes that are not layers and stops at a layer left whole (it is not the cause)."""
    nodes = list(model.graph.node)
    writer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            readers.setdefault(name, []).append(n)

    def step(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        if not upstream:
            return [r for out in node.output for r in readers.get(out, [])]
        data = node.input[:1] if node.op_type in SUPPORTED_OPS else node.input  # not a layer's weights
        return [writer[name] for name in data if name in writer]

    frontier = [n for n in nodes if n.name == layer]
    for _ in range(depth):
        nxt = []
        for node in frontier:
            for near in step(node):
                if near.name in decomposed:
                    return near.name
                if near.op_type not in SUPPORTED_OPS:
                    nxt.append(near)
        frontier = nxt
    return None
