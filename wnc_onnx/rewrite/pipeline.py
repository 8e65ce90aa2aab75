"""One run of the graph passes over a model: open it, run the pass list, count the totals,
stamp and check the result. The flows (``flow``, ``budget``, ``on_target``) call this once or
several times."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.analyze.graph import dynamic_inputs, shape_hint, skeleton, subgraphs
from wnc_onnx.config import CompressConfig
from wnc_onnx.data.feeds import source_name
from wnc_onnx.errors import one_line
from wnc_onnx.io import external_data
from wnc_onnx.io.model_io import check_input, load_model_and_source
from wnc_onnx.io.threads import limited
from wnc_onnx.io.threads import resolve as resolve_threads
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes import build_passes
from wnc_onnx.rewrite.passes.pq import MARK
from wnc_onnx.rewrite.state import RunState
from wnc_onnx.version import __version__

log = logging.getLogger(__name__)

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def open_model(model: ModelLike) -> tuple[onnx.ModelProto, bool, dict[str, Any]]:
    """(model, owned, info): a path is loaded and owned; a ModelProto is never modified."""
    if isinstance(model, onnx.ModelProto):
        if external_data.has_external(model):  # relative data paths: from the working directory
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            external_data.resolve(copy, Path.cwd(), "input model")
            check_input(copy)
            return copy, True, {"path": None, "file_bytes": None, "source": None}
        check_input(model)
        return model, False, {"path": None, "file_bytes": None, "source": None}
    path = Path(model)
    loaded, source = load_model_and_source(path)
    return loaded, True, {"path": str(path), "file_bytes": external_data.stored_bytes(path, loaded), "source": source}


def as_proto(model: ModelLike) -> onnx.ModelProto:
    """``model`` itself, or the model its path names (for sessions beside the compressed one)."""
    return model if isinstance(model, onnx.ModelProto) else load_model_and_source(Path(model))[0]


def _describe(model: onnx.ModelProto, info: dict[str, Any], cfg: CompressConfig) -> dict[str, Any]:
    return {
        "path": info["path"],
        "ir_version": model.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "nodes": len(model.graph.node),
        # inputs whose size is dynamic and not given by input_shapes (--input-shape): MACs need them
        "dynamic_inputs": [shape_hint(vi) for vi in dynamic_inputs(model) if vi.name not in cfg.input_shapes],
    }


def count_params(model: onnx.ModelProto | onnx.GraphProto) -> int:
    """Elements of every initializer and Constant tensor, subgraphs included."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    total = sum(int(np.prod(t.dims, dtype=np.int64)) for t in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    total += int(np.prod(a.t.dims, dtype=np.int64))
        total += sum(count_params(sub) for _, sub in subgraphs(node))
    return total


def run_passes(
    model: ModelLike, cfg: CompressConfig, state: RunState | None = None, plan_only: bool = False
) -> tuple[onnx.ModelProto, Report]:
    """The pass list once over ``model`` (never modified): the result and its report."""
    state = state or RunState()
    proto, owned, info = open_model(model)
    # judged before any pass runs: the passes may rewrite ``proto`` in place
    input_fails_strict = None if plan_only else _strict_failure(proto)
    report = Report(config=config_dict(cfg), model=_describe(proto, info, cfg))
    report.source = info["source"]
    threads, why = resolve_threads(cfg.threads)
    report.config["threads_used"] = threads
    log.debug("threads: %d (%s)", threads, why)
    params_before = count_params(proto)
    result_model = proto
    with limited(threads):
        for p in build_passes(cfg, state, plan_only=plan_only, threads=threads):
            result = p(result_model, report, in_place=owned or result_model is not proto)
            result_model = result.model
            if p.name == "fold_constants" and result.modified:  # weights the model computed now count
                params_before = count_params(result_model)
    _totals(
        report, params_before, count_params(result_model) + _pq_params_delta(result_model, report), info["file_bytes"]
    )
    if not plan_only:
        _finish(result_model, report, input_fails_strict)
    return result_model, report


def _pq_params_delta(model: onnx.ModelProto, report: Report) -> int:
    """Product quantization keeps the number of weights (its codes are bytes, not weights):
    the elements of codes and codebooks are swapped back for those of the weights they rebuild."""
    pq = report.extras.get("pq") or {}
    done = [w for w in pq.get("weights", []) if w["status"] == "quantized"]
    if not done:
        return 0
    written = sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if MARK in t.name)
    return sum(int(np.prod(w["shape"], dtype=np.int64)) for w in done) - written


def config_dict(cfg: CompressConfig) -> dict[str, Any]:
    """The report's ``config``: every option, the calibration data named, not copied."""
    d = asdict(replace(cfg, calibration=None, max_error=None))  # (max_error alone does not validate)
    d["max_error"] = cfg.max_error
    if cfg.calibration is not None:
        d["calibration"] = source_name(cfg.calibration)
    d["ranks"] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.ranks.items()}
    d["op_types"] = list(cfg.op_types)
    d["input_shapes"] = {k: list(v) for k, v in cfg.input_shapes.items()}
    return d


def _totals(report: Report, params_before: int, params_after: int, file_bytes: int | None) -> None:
    t = report.totals
    t.layers = len(report.layers)
    t.decomposed = sum(r.status == "decomposed" for r in report.layers)
    t.planned = sum(r.status == "planned" for r in report.layers)
    t.skipped = sum(r.status == "skipped" for r in report.layers)
    t.params_before = params_before
    t.params_after = params_after
    for r in report.layers:
        if r.status == "planned" and r.params_after is not None and r.params_before is not None:
            t.params_after -= r.params_before - r.params_after  # inspect: what compress would remove
        if r.macs_before is None:
            t.macs_unknown_layers += 1
            continue
        changed = r.status in ("decomposed", "planned") and r.macs_after is not None
        t.macs_known_layers += 1
        t.macs_known_before += r.macs_before
        t.macs_known_after += r.macs_after if changed else r.macs_before  # type: ignore[operator]
    if t.macs_unknown_layers == 0:
        t.macs_before, t.macs_after = t.macs_known_before, t.macs_known_after
    t.file_bytes_before = file_bytes


def _strict_failure(model: onnx.ModelProto) -> str | None:
    """Why ``model`` fails the strict ONNX checker (with shape inference), or None."""
    try:
        onnx.checker.check_model(skeleton(model), full_check=True)
    except Exception as exc:
        return one_line(exc, 100)
    return None


def _finish(model: onnx.ModelProto, report: Report, input_fails_strict: str | None) -> None:
    summary: dict[str, Any] = {
        "decomposed": report.totals.decomposed,
        "layers": {r.name: r.ranks for r in report.decomposed},
        "params": [report.totals.params_before, report.totals.params_after],
        "macs": [report.totals.macs_before, report.totals.macs_after],
    }
    quantized = pq_quantized(report)
    if quantized:
        pq = report.extras["pq"]
        summary["pq"] = {**pq["settings"], "weights": quantized}
    entries = [e for e in model.metadata_props if e.key != "wnc_onnx"]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    onnx.helper.set_model_props(
        model, {**{e.key: e.value for e in entries}, "wnc_onnx": json.dumps({"version": __version__, **summary})}
    )
    if report.totals.decomposed or quantized:
        try:
            onnx.checker.check_model(skeleton(model), full_check=True)
        except Exception as exc:
            # strict checks include shape inference, which some exports fail as they are
            if input_fails_strict is None:
                raise RuntimeError(f"wnc-onnx produced a model that fails the ONNX checker (a bug): {exc}") from exc
            onnx.checker.check_model(skeleton(model))
            report.warnings.append(
                f"the input fails ONNX's strict checks too (shape inference: {input_fails_strict}); "
                "the output passes the plain checker"
            )


def pq_quantized(report: Report) -> list[str]:
    """The weights the product-quantization pass replaced (none when it did not run)."""
    pq = report.extras.get("pq") or {}
    return [w["weight"] for w in pq.get("weights", []) if w["status"] == "quantized"]
