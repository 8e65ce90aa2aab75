"""The whole original and compressed models on the target: timed side by side, or profiled
layer by layer (what the latency-aware flows check after a build)."""

from __future__ import annotations

import logging

import onnx

from wnc_onnx.bench.config import BenchConfig
from wnc_onnx.bench.profile import has_loops, profile_layers
from wnc_onnx.bench.result import LayerComparison
from wnc_onnx.check.latency.choose import measure_pair
from wnc_onnx.check.latency.oracle import Target
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io import external_data
from wnc_onnx.io.session import resolve_provider
from wnc_onnx.report import Report

log = logging.getLogger(__name__)


def measure_whole(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    report: Report,
    cfg: CompressConfig,
    threads: int,
) -> None:
    """The whole models timed on the target, side by side (``extras.latency.measured``)."""
    if external_data.has_external(original) or external_data.has_external(result):
        note = "the whole models were not timed (external data); use 'wnc-onnx bench'"
        if note not in report.warnings:
            report.warnings.append(note)
        return
    log.info("timing the original and the compressed model on the target")
    target = Target.of(cfg, threads)
    try:
        found = measure_pair(target, original, result, cfg.input_shapes, input_values=cfg.input_values)
    except WncError:
        raise
    except Exception as exc:
        report.warnings.append(f"the whole models could not be timed ({one_line(exc, 150)})")
        return
    info = report.extras.setdefault("latency", {})
    info["measured"] = found
    noise = max(0.03, found["spread"])
    if cfg.target_speedup is None and found["speedup"] < 1 - noise:
        report.warnings.append(
            f"the compressed model measured slower than the original (x{found['speedup']:.2f}) on the target"
        )


def profile_pair(
    original: onnx.ModelProto, result: onnx.ModelProto, report: Report, cfg: CompressConfig, threads: int
) -> LayerComparison | None:
    """Both models profiled on the target (onnxruntime's profiler, per layer); None where that
    cannot be done (external data, a Loop or Scan, an error: the note is in the warnings)."""
    if external_data.has_external(original) or external_data.has_external(result):
        return None
    if has_loops(original):
        note = "the layers were not profiled inside the model (a Loop / Scan makes the profile huge)"
        if note not in report.warnings:
            report.warnings.append(note)
        return None
    bc = BenchConfig(
        threads=(threads,),
        session_options=dict(cfg.session_options),
        graph_opt=cfg.graph_opt,
        input_shapes=dict(cfg.input_shapes),
        input_values=dict(cfg.input_values),
        profile_runs=20,
    )
    try:
        comps = profile_layers(
            [original, result], [original, result], ["original", "compressed"], bc, resolve_provider(cfg.provider)
        )
    except Exception as exc:  # the check is a refinement: the layer-alone choices stand
        report.warnings.append(f"the layers were not profiled inside the model ({one_line(exc, 150)})")
        return None
    return comps[0] if comps else None
