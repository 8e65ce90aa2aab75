"""Library API: ``compress`` and ``inspect`` for export pipelines; the CLI wraps these."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from wnc_onnx import external_data
from wnc_onnx.config import SUPPORTED_OPS, CompressConfig
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.graph import dynamic_inputs, shape_hint, skeleton, subgraphs
from wnc_onnx.model_io import check_input, load_model_and_source
from wnc_onnx.passes import build_passes
from wnc_onnx.report import Report
from wnc_onnx.threads import limited
from wnc_onnx.threads import resolve as resolve_threads

log = logging.getLogger(__name__)

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def _config(config: CompressConfig | None, overrides: dict[str, Any]) -> CompressConfig:
    cfg = config or CompressConfig()
    try:
        return replace(cfg, **overrides) if overrides else cfg
    except (TypeError, ValueError, re.error) as exc:
        raise WncError(f"invalid option: {exc}", "see 'wnc-onnx --help'") from None


def _open(model: ModelLike) -> tuple[onnx.ModelProto, bool, dict[str, Any]]:
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


def _run(model: ModelLike, cfg: CompressConfig, plan_only: bool) -> tuple[onnx.ModelProto, Report]:
    proto, owned, info = _open(model)
    # judged before any pass runs: the passes may rewrite ``proto`` in place
    input_fails_strict = None if plan_only else _strict_failure(proto)
    report = Report(config=_config_dict(cfg), model=_describe(proto, info, cfg))
    report.source = info["source"]
    threads, why = resolve_threads(cfg.threads)
    report.config["threads_used"] = threads
    log.debug("threads: %d (%s)", threads, why)
    params_before = count_params(proto)
    result_model = proto
    with limited(threads):
        for p in build_passes(cfg, plan_only=plan_only, threads=threads):
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


def _measured_on_target(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    threads: int,
) -> None:
    """--latency-aware / --target-speedup: the whole models timed on the target, side by side."""
    from wnc_onnx.latency.choose import measure_pair
    from wnc_onnx.latency.oracle import Target

    if external_data.has_external(original) or external_data.has_external(result):
        report.warnings.append("the whole models were not timed (external data); use 'wnc-onnx bench'")
        return
    log.info("timing the original and the compressed model on the target")
    target = Target(cfg.provider, max(1, threads), dict(cfg.session_options), cfg.graph_opt)
    try:
        found = measure_pair(target, original, result, cfg.input_shapes)
    except WncError:
        raise
    except Exception as exc:
        report.warnings.append(f"the whole models could not be timed ({one_line(exc, 150)})")
        return
    info = report.extras.setdefault("latency", {})
    info["measured"] = found
    noise = max(0.03, found["spread"])
    if cfg.target_speedup is not None and found["speedup"] < cfg.target_speedup * (1 - noise):
        report.warnings.append(
            f"measured x{found['speedup']:.2f} on the target, short of --target-speedup {cfg.target_speedup:g} "
            "(layers timed alone do not see the layout changes between them); ask for a little more"
        )
    elif found["speedup"] < 1 - noise:
        report.warnings.append(
            f"the compressed model measured slower than the original (x{found['speedup']:.2f}) on the target"
        )


def _pq_params_delta(model: onnx.ModelProto, report: Report) -> int:
    """Product quantization keeps the number of weights (its codes are bytes, not weights):
    the elements of codes and codebooks are swapped back for those of the weights they rebuild."""
    from wnc_onnx.passes.pq import MARK

    pq = report.extras.get("pq") or {}
    done = [w for w in pq.get("weights", []) if w["status"] == "quantized"]
    if not done:
        return 0
    written = sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if MARK in t.name)
    return sum(int(np.prod(w["shape"], dtype=np.int64)) for w in done) - written


def _config_dict(cfg: CompressConfig) -> dict[str, Any]:
    d = asdict(replace(cfg, calibration=None, max_error=None))  # the data themselves are not copied into the report
    d["max_error"] = cfg.max_error
    if cfg.calibration is not None:
        named = isinstance(cfg.calibration, str | os.PathLike) or type(cfg.calibration).__name__ == "Reuse"
        d["calibration"] = str(cfg.calibration) if named else "<iterable>"
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
    from wnc_onnx import __version__

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


def _proto(model: ModelLike) -> onnx.ModelProto:
    """``model`` itself, or the model its path names (for sessions beside the compressed one)."""
    return model if isinstance(model, onnx.ModelProto) else load_model_and_source(Path(model))[0]


def compress(model: ModelLike, config: CompressConfig | None = None, **options: Any) -> tuple[onnx.ModelProto, Report]:
    """Compress ``model`` (a path or a ModelProto, never modified).

    ``options`` override fields of ``config`` (see CompressConfig). Returns the new
    model and the report. Raises WncError for bad input, NothingToCompressError when
    the model holds no Conv/Gemm/MatMul.
    """
    cfg = _config(config, options)
    if cfg.max_error is not None and cfg.target_speedup is None:
        from wnc_onnx.budget import compress_within

        return compress_within(_proto(model), cfg)
    if cfg.calibration is not None:
        from wnc_onnx.budget import REPORT_SAMPLES
        from wnc_onnx.calibration import Reuse

        # gathered once for every run below, keeping the first samples and the original's outputs on them
        cfg = replace(cfg, calibration=Reuse(cfg.calibration, keep=REPORT_SAMPLES))
    result, report = _run(model, cfg, plan_only=False)
    original = None  # the input as a ModelProto, read from its path once if needed
    if cfg.timed and report.totals.decomposed:
        original = _proto(model)
        result, report = _on_target(model, original, result, report, cfg)
    if cfg.calibration is not None and report.totals.decomposed:  # the accuracy risk, on the user's data
        from wnc_onnx.budget import on_calibration_data, one_shot

        reuse = cfg.calibration
        reuse.stats, reuse.fits = None, {}  # memory: the fits are done
        if reuse.reference is None and one_shot(reuse.source):
            report.warnings.append(
                "the calibration batches came from an iterator, read once: the model's error on them is not "
                "measured (pass a list, an .npz or a folder to see it)"
            )
        else:
            report.extras["calibration"] = on_calibration_data(original or _proto(model), result, cfg)
    if cfg.max_error is not None:  # with --target-speedup: the ranks are the speed-up's, the budget a check
        _check_budget(report, cfg.max_error, cfg.target_speedup)
    return result, report


def _check_budget(report: Report, budget: float, speedup: float | None) -> None:
    measured = report.extras.get("calibration", {}).get("output_error")
    report.extras["max_error"] = {"target": budget, "measured": measured, "target_speedup": speedup}
    if measured is not None and measured > budget:
        raise WncError(
            f"--target-speedup {speedup:g} costs an output error of {measured:.3g} on the calibration data, "
            f"over --max-error {budget:g}",
            "lower --target-speedup or raise --max-error (or drop --target-speedup: the fewest MACs within the error)",
        )


def _on_target(
    model: ModelLike, original: onnx.ModelProto, result: onnx.ModelProto, report: Report, cfg: CompressConfig
) -> tuple[onnx.ModelProto, Report]:
    """Latency-aware checks of the whole compressed model, which may compress again."""
    threads = int(report.config.get("threads_used") or 1)
    if cfg.latency_aware and cfg.target_speedup is None:
        # Layers are chosen alone; in the model, layout changes between layers can make a
        # chosen form slower there. Profile both models; keep such layers whole and redo.
        kept: list[dict[str, Any]] = []
        for attempt in range(_CONTEXT_ROUNDS + 1):
            slower = _slower_in_context(original, result, report, cfg, threads)
            if not slower:
                break
            if attempt == _CONTEXT_ROUNDS:
                report.warnings.append(
                    f"{len(slower)} layer(s) still ran slower inside the model after {_CONTEXT_ROUNDS} reruns: "
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
            cfg = replace(cfg, keep_whole=cfg.keep_whole + tuple(x["layer"] for x in slower))
            result, report = _run(model, cfg, plan_only=False)
            _keep_timings(report, timed, kept)
        if kept:
            report.extras.setdefault("latency", {})["kept_whole_in_context"] = kept
    _measured_on_target(original, result, report, cfg, threads)
    if cfg.target_speedup is not None:
        result, report = _calibrated(model, original, result, report, cfg, threads)
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


def _calibrated(
    model: ModelLike,
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    threads: int,
) -> tuple[onnx.ModelProto, Report]:
    """--target-speedup: the prediction (layers alone) misses what the whole model measures;
    when the miss is beyond the noise, allocate once more for the target scaled by it."""
    assert cfg.target_speedup is not None
    info = report.extras.get("latency", {})
    measured, predicted = info.get("measured"), info.get("predicted_speedup")
    if not measured or not predicted or not info.get("reached", False):
        return result, report
    got = measured["speedup"]
    if abs(got / cfg.target_speedup - 1) <= max(0.05, measured["spread"]):
        return result, report
    scale = predicted / got
    log.info(
        "latency-aware: measured x%.2f for a prediction of x%.2f; allocating again for the target scaled by %.3f",
        got,
        predicted,
        scale,
    )
    cfg2 = replace(cfg, target_calibration=cfg.target_calibration * scale)
    result2, report2 = _run(model, cfg2, plan_only=False)
    _measured_on_target(original, result2, report2, cfg2, threads)
    first = {"measured_speedup": got, "predicted_speedup": predicted}
    report2.extras.setdefault("latency", {})["first_allocation"] = first
    m2 = report2.extras["latency"].get("measured")
    if m2 and abs(m2["speedup"] / cfg.target_speedup - 1) > abs(got / cfg.target_speedup - 1):
        report.extras["latency"]["second_allocation"] = {"measured_speedup": m2["speedup"], "kept": False}
        return result, report  # the first was closer: keep it
    return result2, report2


_CONTEXT_ROUNDS = 3  # reruns at most: keeping a layer whole changes its neighbours' layouts
_CONTEXT_SLOWER = 0.05  # slower inside the model by more than this fraction ...
_CONTEXT_SLOWER_MS = 0.002  # ... and this many milliseconds (profiled medians)


def _slower_in_context(
    original: onnx.ModelProto, result: onnx.ModelProto, report: Report, cfg: CompressConfig, threads: int
) -> list[dict[str, Any]]:
    """Decomposed layers that onnxruntime's profiler finds slower inside the compressed model."""
    from wnc_onnx.bench.measure import BenchConfig
    from wnc_onnx.bench.profile import has_loops, profile_layers
    from wnc_onnx.bench.session import resolve_provider

    if external_data.has_external(original) or external_data.has_external(result):
        return []
    if has_loops(original):
        note = "the layers were not profiled inside the model (a Loop / Scan makes the profile huge)"
        if note not in report.warnings:
            report.warnings.append(note)
        return []
    bc = BenchConfig(
        threads=(threads,),
        session_options=dict(cfg.session_options),
        graph_opt=cfg.graph_opt,
        input_shapes=dict(cfg.input_shapes),
        profile_runs=20,
    )
    try:
        comps = profile_layers(
            [original, result], [original, result], ["original", "compressed"], bc, resolve_provider(cfg.provider)
        )
    except Exception as exc:  # the check is a refinement: the layer-alone choices stand
        report.warnings.append(f"the layers were not profiled inside the model ({one_line(exc, 150)})")
        return []
    decomposed = {r.name for r in report.decomposed}
    slower = [x for c in comps for x in c.layers if x.clearly_slower(_CONTEXT_SLOWER, _CONTEXT_SLOWER_MS)]
    out = {}
    for x in slower:
        # a layer left whole that got slower pays for a neighbour's layout: blame the decomposed layer feeding it
        name = x.layer if x.layer in decomposed else _decomposed_neighbour(original, x.layer, decomposed)
        if name is not None and name not in out:
            out[name] = {"layer": name, "original_ms": round(x.before_ms, 4), "compressed_ms": round(x.after_ms, 4)}
            if name != x.layer:
                out[name]["slower_neighbour"] = x.layer
    return list(out.values())


def _decomposed_neighbour(model: onnx.ModelProto, layer: str, decomposed: set[str]) -> str | None:
    """The decomposed layer next to ``layer`` (feeding it, else fed by it): a reorder that
    onnxruntime inserts between two layers runs, and is counted, with the one before."""
    return _decomposed_upstream(model, layer, decomposed) or _decomposed_downstream(model, layer, decomposed)


def _decomposed_downstream(model: onnx.ModelProto, layer: str, decomposed: set[str], depth: int = 4) -> str | None:
    """The decomposed layer that ``layer``'s output reaches through at most ``depth`` nodes that are not layers."""
    return _nearest_decomposed(model, layer, decomposed, upstream=False, depth=depth)


def _decomposed_upstream(model: onnx.ModelProto, layer: str, decomposed: set[str], depth: int = 4) -> str | None:
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


def inspect(model: ModelLike, config: CompressConfig | None = None, **options: Any) -> Report:
    """The plan: ranks, structure and costs per layer, without factoring anything."""
    cfg = _config(config, options)
    return _run(model, cfg, plan_only=True)[1]


def load_ranks(path: str | os.PathLike[str]) -> dict[str, int | tuple[int, int]]:
    """Read a ranks file: {"layer": [R3, R4]} for Tucker-2, {"layer": R} otherwise."""
    p = Path(path)
    if not p.is_file():
        raise WncError(f"ranks file not found: {p}", "check the --ranks path")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WncError(
            f"ranks file {p} is not valid JSON: {exc}", 'write e.g. {"conv2": [25, 59], "fc7": 301}'
        ) from None
    if not isinstance(raw, dict):
        raise WncError(f"ranks file {p} must hold a JSON object", 'write e.g. {"conv2": [25, 59], "fc7": 301}')
    out: dict[str, int | tuple[int, int]] = {}
    for name, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
        elif (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            out[name] = (value[0], value[1])
        else:
            raise WncError(
                f"ranks file {p}: value for '{name}' is {value!r}",
                "use [R3, R4] for a Tucker-2 layer or one integer for an SVD / Tucker-1 layer",
            )
    return out


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """All initializers as arrays (handy in tests and notebooks)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
