"""--int8: the compressed model quantized after the low-rank pass, and measured against int8 alone.

1. Data: the first ``INT8_SAMPLES`` samples of ``--calibration`` calibrate a static QDQ
   quantization (per channel); without data, MatMul / Gemm are quantized dynamically and Conv
   layers stay float (onnxruntime has no dynamic int8 Conv kernel), which the report says.
2. With ``--latency-aware`` / ``--target-speedup``, choices in the quantized model, profiled
   layer by layer on the target:
   - a layer whose int8 form runs slower inside the model than its float form stays float
     (excluded from quantization);
   - a decomposed layer whose int8 form runs slower than the original layer in int8 (int8
     alone: the model after the graph passes, nothing factored, quantized the same way) is
     kept whole, the passes run again;
   - then the whole models are timed side by side (the float original, the float compressed
     model, int8 alone, low rank + int8); if low rank + int8 is slower than the float
     compressed model, the float one is written; if int8 alone is as fast as low rank +
     int8 (within the noise), no layer is factored and int8 alone is written (it keeps
     more accuracy); each with a warning.
3. ``extras.int8`` records the mode, the types, how many layers run in int8, what stayed float
   and why, and the whole-model timings.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from wnc_onnx.check.latency.choose import measure_models
from wnc_onnx.check.latency.oracle import Target
from wnc_onnx.config import CompressConfig
from wnc_onnx.data.feeds import batches_of
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io import external_data
from wnc_onnx.report import Report
from wnc_onnx.rewrite.budget import one_shot
from wnc_onnx.rewrite.int8_quantize import (
    DYNAMIC_OPS,
    STATIC_OPS,
    count_quantized,
    layer_nodes,
    quantize,
    quantized_nodes,
    tools,
    types,
)
from wnc_onnx.rewrite.pipeline import ModelLike, run_passes
from wnc_onnx.rewrite.state import RunState
from wnc_onnx.rewrite.whole_model import profile_pair

log = logging.getLogger(__name__)

INT8_SAMPLES = 256  # calibration samples for the activation ranges
SLOWER = 0.05  # a layer counts as slower in int8 by more than this fraction ...
SLOWER_MS = 0.002  # ... and this many milliseconds (profiled medians)
AS_FAST_WHOLE = "int8: kept whole (int8 alone ran as fast as low rank + int8 on the target)"
KEPT_WHOLE = "int8: kept whole (its factored form ran slower in int8 than the original layer in int8, profiled)"


def int8_data(cfg: CompressConfig, model: onnx.ModelProto, state: RunState) -> list[dict[str, np.ndarray]] | None:
    """Up to ``INT8_SAMPLES`` samples of the calibration data as feed dicts, or None without data."""
    if cfg.calibration is None:
        return None
    if one_shot(cfg.calibration):  # an iterator was read once already: the samples kept from it
        ref = state.calibration.reference if state.calibration is not None else None
        return list(ref.feeds) if ref is not None and ref.feeds else None
    batches = batches_of(cfg.calibration, model, 16, cfg.calibration_mean, cfg.calibration_std)
    return first_samples(itertools.islice(batches, 10_000)) or None


def samples_in(feeds: Iterable[dict[str, np.ndarray]]) -> int:
    """How many samples the feed dicts hold (their first input's batch)."""
    return sum(len(next(iter(f.values()))) for f in feeds if f)


def first_samples(batches: Iterable[dict[str, np.ndarray]], limit: int = INT8_SAMPLES) -> list[dict[str, np.ndarray]]:
    """Feed dicts from ``batches`` until they hold ``limit`` samples (the calibration of int8)."""
    out: list[dict[str, np.ndarray]] = []
    n = 0
    for feeds in batches:
        out.append(feeds)
        n += samples_in([feeds])
        if n >= limit:
            break
    return out


def int8_step(
    model: ModelLike,
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    state: RunState,
) -> tuple[onnx.ModelProto, Report]:
    """Quantize ``result`` (choosing per layer on the target when latency-aware); the int8 model
    and its report, or the float model with the reason."""
    if external_data.has_external(result):
        raise WncError(
            "--int8 cannot quantize a model whose weights are in external data",
            "compress without --int8, or with --no-external-data when the model is under 2 GB",
        )
    data = int8_data(cfg, original, state)
    act, weight = types()
    info: dict[str, Any] = {
        "mode": "static" if data else "dynamic",
        "format": "QDQ" if data else "dynamic (DynamicQuantizeLinear + integer MatMul)",
        "activations": act if data else "uint8 (quantized at run time)",
        "weights": f"{weight}, per channel",
        "op_types": list(STATIC_OPS if data else DYNAMIC_OPS),
        "samples": samples_in(data or []),
        "float_layers": {},
    }
    has_conv = any(n.op_type == "Conv" for n in result.graph.node)
    if not data and has_conv:
        report.warnings.append(
            "--int8 without --calibration: Conv layers stay float (onnxruntime has no dynamic int8 Conv); "
            "give --calibration inputs.npz for static int8"
        )
    log.info("int8: quantizing (%s)", info["mode"])
    q = quantize(result, data)
    alone = None  # int8 alone: the model after the graph passes (BatchNorm folded), nothing factored, quantized
    if count_quantized(q) and (cfg.timed or not external_data.has_external(original)):
        passes_only, _ = run_passes(model, replace(cfg, lowrank=False, pq=False, int8=True), RunState())
        alone = quantize(passes_only, data)
    if cfg.timed and alone is not None:
        result, report, q = _choose_on_target(model, alone, result, report, cfg, state, data, q, info)
    info["int8_layers"] = count_quantized(q)
    report.extras["int8"] = info
    if not info["int8_layers"]:
        report.warnings.append("--int8 quantized no layer: the model is written in float")
        return result, report
    if alone is not None and not external_data.has_external(original):
        _measure(original, result, alone, q, report, cfg, info)
        chosen = info.get("measured", {}).get("chosen")
        if chosen == "float":
            m = info["measured"]
            info["int8_layers"] = 0
            report.warnings.append(
                f"--int8: low rank + int8 ran slower than the float compressed model on the target "
                f"(x{m['lowrank_int8']['speedup']:.2f} against x{m['lowrank']['speedup']:.2f} over the original); "
                "the float model is written"
            )
            return result, report
        if chosen == "int8_alone":
            m = info["measured"]
            log.info("int8: int8 alone is as fast as low rank + int8; every layer kept whole")
            state.keep_whole.update({r.name: AS_FAST_WHOLE for r in report.decomposed})
            result, report = _rebuilt(model, cfg, state, report)
            report.warnings.append(
                f"--int8: int8 alone ran as fast as low rank + int8 on the target (x{m['int8_alone']['speedup']:.2f} "
                f"against x{m['lowrank_int8']['speedup']:.2f} over the original) and keeps more accuracy: no layer "
                "is factored, the model is written in int8 alone"
            )
            q = alone
            info["int8_layers"] = count_quantized(q)
            info["float_layers"] = {}  # int8 alone was quantized whole
    report.extras["int8"] = info
    report.float_model = result
    return q, report


def _rebuilt(model: ModelLike, cfg: CompressConfig, state: RunState, before: Report) -> tuple[onnx.ModelProto, Report]:
    """The passes again (layers newly kept whole); what the earlier runs found still holds: their
    warnings, and the latency facts the new run does not measure again."""
    result, report = run_passes(model, cfg, state)
    report.warnings += [w for w in before.warnings if w not in report.warnings]
    for k, v in before.extras.get("latency", {}).items():
        if k not in ("measured", "measured_speedup", "met"):  # they described the model before the rebuild
            report.extras.setdefault("latency", {}).setdefault(k, v)
    return result, report


def _choose_on_target(
    model: ModelLike,
    alone: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    state: RunState,
    data: list[dict[str, np.ndarray]] | None,
    q: onnx.ModelProto,
    info: dict[str, Any],
) -> tuple[onnx.ModelProto, Report, onnx.ModelProto]:
    """Per layer on the target: float where int8 is slower; the original layer where its int8 form
    beats the factored one in int8."""
    threads = int(report.config.get("threads_used") or 1)
    decomposed = {r.name for r in report.decomposed}
    comp = profile_pair(alone, q, report, cfg, threads)
    if comp is not None:
        worse = [x.layer for x in comp.layers if x.layer in decomposed and x.clearly_slower(SLOWER, SLOWER_MS)]
        if worse:
            log.info("int8: %d factored layer(s) slower in int8 than the original layer in int8", len(worse))
            state.keep_whole.update({name: KEPT_WHOLE for name in worse})
            result, report = _rebuilt(model, cfg, state, report)
            info["kept_whole_in_int8"] = worse
            q = quantize(result, data)
    comp = profile_pair(result, q, report, cfg, threads)
    if comp is not None:
        slower = [x for x in comp.layers if x.clearly_slower(SLOWER, SLOWER_MS)]
        if slower:
            info["float_layers"] = {
                x.layer: f"int8 ran slower inside the model ({x.after_ms:.3f} ms against {x.before_ms:.3f} ms float)"
                for x in slower
            }
            log.info("int8: %d layer(s) stay float (slower in int8)", len(slower))
            q = quantize(result, data, exclude=layer_nodes(result, [x.layer for x in slower]))
    return result, report, q


def _measure(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    alone: onnx.ModelProto,
    q: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    info: dict[str, Any],
) -> None:
    """The float original, the float compressed model, int8 alone and low rank + int8, timed side
    by side on the target (``extras.int8.measured``)."""
    threads = int(report.config.get("threads_used") or 1)
    target = Target.of(cfg, threads)
    try:
        log.info("int8: timing the original, the compressed model, int8 alone and low rank + int8")
        found = measure_models(target, [original, result, alone, q], cfg.input_shapes, input_values=cfg.input_values)
    except WncError:
        raise
    except Exception as exc:
        report.warnings.append(f"--int8: the whole models could not be timed ({one_line(exc, 150)})")
        return
    names = ("original", "lowrank", "int8_alone", "lowrank_int8")
    m: dict[str, Any] = dict(zip(names, found, strict=True))
    m["lowrank_int8_over_int8_alone"] = round(m["lowrank_int8"]["speedup"] / m["int8_alone"]["speedup"], 3)
    noise = max(0.03, m["lowrank_int8"]["spread"], m["lowrank"]["spread"], m["int8_alone"]["spread"])
    low = m["lowrank_int8"]["speedup"]
    m["chosen"] = "int8"
    if cfg.timed and m["lowrank"]["speedup"] > low * (1 + noise):
        m["chosen"] = "float"  # int8 made it slower
    elif cfg.timed and report.totals.decomposed and m["int8_alone"]["speedup"] >= low * (1 - noise):
        m["chosen"] = "int8_alone"  # the factoring adds no speed to int8, and costs accuracy
    info["measured"] = m


def check_int8_input(model: onnx.ModelProto) -> None:
    """--int8 without the quantization tools, or on a model that is already quantized: one clear error."""
    tools()
    found = quantized_nodes(model)
    if found:
        raise WncError(
            f"--int8: the input is already quantized (it holds {', '.join(found[:4])})",
            "compress its float parent with --int8, or drop --int8",
        )
