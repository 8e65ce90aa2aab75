"""Per-layer times from onnxruntime's profiler, mapped back to the layers of the original model.

onnxruntime renames what it optimizes: a Conv fused with its Relu is named after the
Relu's output, the NCHWc layout pass adds ``_nchwc``, and it inserts reorder nodes that
no model node matches. A profiled node is matched to a model node by name, then by the
name of a tensor the node writes, then by the longest node or tensor name it starts
with. A Conv/Gemm/MatMul kernel matched to an activation belongs to the layer that feeds
it. Inserted nodes count toward the layer that ran just before them: they exist
because of that layer's layout (e.g. a rank that is not a multiple of the SIMD block).
A node the compression pass wrote names its layer in ``metadata_props`` (``wnc.source``)
or in its name (``<layer>/wnc/<role>``)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from wnc_onnx.analyze.graph import infer_shapes
from wnc_onnx.bench.feeds import model_feeds
from wnc_onnx.bench.result import LayerComparison, LayerTime
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io.session import default_threads, session

log = logging.getLogger(__name__)

LAYER_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})
KERNEL_OPS = frozenset({"Conv", "FusedConv", "NhwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose"})
_SUFFIXES = ("_kernel_time", "_nchwc", "_fused", "_token")
_PREFIXES = ("fused ",)


class NodeMap:
    """Profiled node name -> (layer key, role) for one model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.nodes = {n.name: n for n in g.node if n.name}
        self.writer = {o: n for n in g.node for o in n.output if o}
        self.model = model
        self._resolved: dict[tuple[str, str], tuple[tuple[str, str] | None, bool]] = {}

    def layer_of(self, node: onnx.NodeProto) -> tuple[str, str] | None:
        """(layer, role) of a model node, or None when it is not part of a layer."""
        meta = {e.key: e.value for e in node.metadata_props}
        if "wnc.source" in meta:
            return meta["wnc.source"], meta.get("wnc.role", node.op_type)
        if "/wnc/" in node.name:
            layer, _, role = node.name.partition("/wnc/")
            return layer, role
        if node.op_type in LAYER_OPS:
            return node.name or node.output[0], node.op_type
        return None

    def match(self, profiled: str) -> onnx.NodeProto | None:
        for prefix in _PREFIXES:  # "fused fc6": a Gemm fused with its activation
            if profiled.startswith(prefix):
                profiled = profiled[len(prefix) :]
        name = profiled
        for _ in range(4):
            if name in self.nodes:
                return self.nodes[name]
            if name in self.writer:
                return self.writer[name]
            stripped = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)
            if stripped is None:
                break
            name = stripped
        best = max(
            (k for k in [*self.nodes, *self.writer] if profiled.startswith(k + "_") or profiled.startswith(k + "/")),
            key=len,
            default=None,
        )
        if best is None:
            return None
        return self.nodes.get(best) or self.writer.get(best)

    def lookup(self, profiled: str, op_name: str) -> tuple[tuple[str, str] | None, bool]:
        """(layer and role or None, whether any model node matched): memoized, names repeat every run."""
        key = (profiled, op_name)
        if key not in self._resolved:
            node = self.match(profiled)
            self._resolved[key] = (None if node is None else self._layer_for(node, op_name), node is not None)
        return self._resolved[key]

    def _layer_for(self, node: onnx.NodeProto, op_name: str) -> tuple[str, str] | None:
        found = self.layer_of(node)
        if found is None and op_name in KERNEL_OPS:  # e.g. Conv + Relu fused under the Relu's name
            walk = node
            for _ in range(3):
                producer = self.writer.get(walk.input[0]) if walk.input else None
                if producer is None:
                    break
                found = self.layer_of(producer)
                if found is not None:
                    break
                walk = producer
        return found


def layer_macs(model: onnx.ModelProto, shapes_in: dict[str, list[int]]) -> dict[str, int]:
    """MACs per layer key at the given input sizes (Conv/Gemm/MatMul of static size only)."""
    shapes = infer_shapes(model, shapes_in)
    nm = NodeMap(model)
    out: dict[str, int] = {}
    unknown: set[str] = set()
    for node in model.graph.node:
        found = nm.layer_of(node)
        if found is None or node.op_type not in LAYER_OPS:  # a Flatten or Cast inside a layer costs no MACs
            continue
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown.add(found[0])
        else:
            out[found[0]] = out.get(found[0], 0) + macs
    return {k: v for k, v in out.items() if k not in unknown}


def _static(dims: Any) -> list[int] | None:
    if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return [int(d) for d in dims]


def _node_macs(node: onnx.NodeProto, shapes: dict[str, Any]) -> int | None:
    out = _static(shapes.get(node.output[0]))
    if out is None or len(node.input) < 2:
        return None
    if node.op_type == "Conv":
        w = _static(shapes.get(node.input[1]))
        return None if w is None else int(np.prod(out)) * int(np.prod(w[1:]))
    if node.op_type == "Gemm":
        a = _static(shapes.get(node.input[0]))
        if a is None:
            return None
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
        return int(np.prod(out)) * k
    if node.op_type == "MatMul":
        a = _static(shapes.get(node.input[0]))
        return None if a is None else int(np.prod(out)) * a[-1]
    return None


def _events(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _per_run(events: list[dict[str, Any]], skip: int) -> list[list[dict[str, Any]]]:
    """Node events grouped by model run (in order), the first ``skip`` runs dropped."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )[skip:]
    nodes = sorted(
        (e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    out: list[list[dict[str, Any]]] = [[] for _ in runs]
    i = 0
    for e in nodes:
        while i < len(runs) and e["ts"] > runs[i]["ts"] + runs[i]["dur"]:
            i += 1
        if i == len(runs):
            break
        if e["ts"] >= runs[i]["ts"]:
            out[i].append(e)
    return [r for r in out if r]


def attribute(events: list[list[dict[str, Any]]], nm: NodeMap) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """{layer: {role: [ms per run]}} with ``(other)`` for nodes outside layers; and the
    profiled names no model node explains (counted with the layer that ran before)."""
    table: dict[str, dict[str, list[float]]] = {}
    unmapped: list[str] = []
    for k, run in enumerate(events):
        previous: tuple[str, str] | None = None
        for e in run:
            name = str(e["name"])[: -len("_kernel_time")]
            op = str(e.get("args", {}).get("op_name", ""))
            found, matched = nm.lookup(name, op)
            if found is None and not matched:
                if name not in unmapped:
                    unmapped.append(name)
                found = (previous[0], f"{op or 'inserted'} (added by onnxruntime)") if previous else None
            key, role = found if found is not None else ("(other)", "other")
            roles = table.setdefault(key, {})
            series = roles.setdefault(role, [])
            while len(series) <= k:
                series.append(0.0)
            series[k] += float(e["dur"]) / 1e3
            previous = found
    for roles in table.values():
        for series in roles.values():
            series.extend([0.0] * (len(events) - len(series)))
    return table, unmapped


def _median_total(roles: dict[str, list[float]]) -> float:
    return float(np.median(np.sum([np.array(v) for v in roles.values()], axis=0)))


def _iqr(roles: dict[str, list[float]]) -> list[float]:
    if not roles:
        return []
    totals = np.sum([np.array(v) for v in roles.values()], axis=0)
    return [float(np.percentile(totals, 25)), float(np.percentile(totals, 75))]


def profile_layers(
    paths: Sequence[str | onnx.ModelProto],
    protos: Sequence[onnx.ModelProto],
    labels: Sequence[str],
    cfg: Any,
    provider: str,
) -> list[LayerComparison]:
    """Profile every model (runs interleaved) and compare each later one with the first, layer by layer."""
    threads = cfg.threads[0] or default_threads()
    batch = cfg.batches[0]
    warm, runs = 3, cfg.profile_runs
    if any(has_loops(m) for m in protos):  # every iteration of a body is an event: keep the profile small
        warm, runs = 1, min(runs, 3)
    with tempfile.TemporaryDirectory(prefix="wnc-onnx-profile-") as folder:
        sessions, feeds = [], []
        for i, (p, m, lab) in enumerate(zip(paths, protos, labels, strict=True)):
            prefix = os.path.join(folder, f"m{i}")
            try:
                sessions.append(
                    session(p, provider, threads, cfg.session_options, cfg.graph_opt, profile_prefix=prefix)
                )
            except Exception as exc:
                raise WncError(f"onnxruntime cannot load {p}: {one_line(exc, 200)}", "check the model") from None
            feeds.append(model_feeds(m, cfg, batch, lab))
        log.info("profiling %d model(s): %d runs each", len(paths), runs)
        for _ in range(warm + runs):
            for s, f in zip(sessions, feeds, strict=True):
                s.run(None, f)
        files = [s.end_profiling() for s in sessions]
        per_model = [_per_run(_events(f), warm) for f in files]
    maps = [NodeMap(m) for m in protos]
    tables = [attribute(ev, nm) for ev, nm in zip(per_model, maps, strict=True)]
    sizes = {k: list(v.shape) for k, v in feeds[0].items()}
    macs = [_safe_macs(m, {k: v for k, v in sizes.items() if k in {i.name for i in m.graph.input}}) for m in protos]
    base, base_unmapped = tables[0]
    ops = {}
    for n in protos[0].graph.node:
        found = maps[0].layer_of(n)
        if found is not None:
            ops[found[0]] = n.op_type
    out = []
    for j in range(1, len(paths)):
        table, unmapped = tables[j]
        comp = LayerComparison(
            baseline=labels[0],
            model=labels[j],
            threads=threads,
            runs=runs,
            unmapped=sorted(set(unmapped) | set(base_unmapped)),
        )
        for key in [k for k in base if k != "(other)"]:
            before = _median_total(base[key])
            after_roles = table.get(key, {})
            parts = [[role, float(np.median(v))] for role, v in after_roles.items()]
            comp.layers.append(
                LayerTime(
                    layer=key,
                    op_type=ops.get(key, "?"),
                    before_ms=before,
                    after_ms=_median_total(after_roles) if after_roles else 0.0,
                    parts=parts,
                    macs_before=macs[0].get(key),
                    macs_after=macs[j].get(key),
                    before_iqr=_iqr(base[key]),
                    after_iqr=_iqr(after_roles),
                )
            )
        comp.other_before_ms = _median_total(base["(other)"]) if "(other)" in base else 0.0
        comp.other_after_ms = _median_total(table["(other)"]) if "(other)" in table else 0.0
        # layers that exist only in the later model (none, for a compressed model) join (other)
        for key in set(table) - set(base) - {"(other)"}:
            comp.other_after_ms += _median_total(table[key])
        comp.layers.sort(key=lambda x: (-(x.after_ms - x.before_ms) if x.after_ms > x.before_ms else 0, -x.before_ms))
        comp.layers.sort(key=lambda x: x.after_ms <= x.before_ms)
        out.append(comp)
    return out


def has_loops(model: onnx.ModelProto) -> bool:
    """Whether the main graph runs a Loop or Scan (their bodies' nodes are profiled per iteration)."""
    return any(n.op_type in ("Loop", "Scan") for n in model.graph.node)


def _safe_macs(model: onnx.ModelProto, sizes: dict[str, list[int]]) -> dict[str, int]:
    try:
        return layer_macs(model, sizes)
    except Exception as exc:  # MACs are context; a model shape inference cannot follow still gets its times
        log.debug("no MAC counts: %s", one_line(exc, 200))
        return {}
