"""The flows behind ``wnc_onnx.compress`` and ``wnc_onnx.inspect``: which runs of the passes a
configuration needs, and what is measured after them.

- ``max_error`` without a speed-up target: ``budget.compress_within`` (many builds);
- otherwise one build (``pipeline.run_passes``), then, for latency options, the whole-model
  checks on the target (``on_target``), int8 (``int8_flow``), and with calibration data the
  model's error on them.
"""

from __future__ import annotations

import onnx

from wnc_onnx.analyze.calibration import Reuse
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError
from wnc_onnx.report import Report
from wnc_onnx.rewrite.budget import REPORT_SAMPLES, compress_within, on_calibration_data, one_shot
from wnc_onnx.rewrite.int8_flow import check_int8_input, int8_step
from wnc_onnx.rewrite.on_target import on_target
from wnc_onnx.rewrite.pipeline import ModelLike, as_proto, run_passes
from wnc_onnx.rewrite.state import RunState


def compress(model: ModelLike, cfg: CompressConfig) -> tuple[onnx.ModelProto, Report]:
    """Compress ``model`` (a path or a ModelProto, never modified) as ``cfg`` says."""
    if cfg.max_error is not None and cfg.target_speedup is None:
        return compress_within(as_proto(model), cfg)
    if cfg.int8:
        check_int8_input(as_proto(model))
    state = RunState()
    if cfg.calibration is not None:
        # gathered once for every run below, keeping the first samples and the original's outputs on them
        state.calibration = Reuse(cfg.calibration, keep=REPORT_SAMPLES)
    result, report = run_passes(model, cfg, state)
    original = None  # the input as a ModelProto, read from its path once if needed
    if cfg.timed and report.totals.decomposed:
        original = as_proto(model)
        result, report = on_target(model, original, result, report, cfg, state)
    if cfg.int8:
        original = original or as_proto(model)
        result, report = int8_step(model, original, result, report, cfg, state)
    changed = report.totals.decomposed or report.extras.get("int8", {}).get("int8_layers")
    if state.calibration is not None and changed:  # the accuracy risk, on the user's data
        reuse = state.calibration
        reuse.stats, reuse.fits = None, {}  # memory: the fits are done
        if reuse.reference is None and one_shot(reuse.source):
            report.warnings.append(
                "the calibration batches came from an iterator, read once: the model's error on them is not "
                "measured (pass a list, an .npz or a folder to see it)"
            )
        else:
            report.extras["calibration"] = on_calibration_data(original or as_proto(model), result, cfg, reuse)
    if cfg.max_error is not None:  # with --target-speedup: the ranks are the speed-up's, the budget a check
        _check_budget(report, cfg.max_error, cfg.target_speedup)
    return result, report


def inspect(model: ModelLike, cfg: CompressConfig) -> Report:
    """The plan: ranks, structure and costs per layer, without factoring anything."""
    state = RunState(calibration=Reuse(cfg.calibration) if cfg.calibration is not None else None)
    return run_passes(model, cfg, state, plan_only=True)[1]


def _check_budget(report: Report, budget: float, speedup: float | None) -> None:
    measured = report.extras.get("calibration", {}).get("output_error")
    report.extras["max_error"] = {"target": budget, "measured": measured, "target_speedup": speedup}
    if measured is not None and measured > budget:
        raise WncError(
            f"--target-speedup {speedup:g} costs an output error of {measured:.3g} on the calibration data, "
            f"over --max-error {budget:g}",
            "lower --target-speedup or raise --max-error (or drop --target-speedup: the fewest MACs within the error)",
        )
