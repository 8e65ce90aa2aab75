"""``wnc-onnx [compress]`` and ``wnc-onnx inspect``: the compression flow on the command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

from wnc_onnx.api import compress, inspect
from wnc_onnx.check.verify import verify
from wnc_onnx.cli.options import (
    EXIT_VERIFY_FAILED,
    add_calibration,
    add_latency,
    add_output,
    add_pq_arguments,
    add_selection,
    add_sizes,
    add_verify,
    compress_config,
    require_faiss,
)
from wnc_onnx.config import CompressConfig
from wnc_onnx.data.feeds import load_inputs, parse_input_values
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.backends.torch.run import require_torch
from wnc_onnx.finetune.recover import DISTILL_LR, compress_and_recover
from wnc_onnx.io.model_io import check_output_path, load_model, staged_model, write_text_atomic
from wnc_onnx.report import Report
from wnc_onnx.report.plot import plot_report, pyplot
from wnc_onnx.rewrite.pipeline import pq_quantized
from wnc_onnx.rewrite.speed_target import TOLERANCE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="model to compress (.onnx); never modified")
    p.add_argument("output", help="where to write the compressed model (written atomically)")
    p.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights to OUTPUT.data beside the model (--no-external-data: inline); "
        "default: external when the input's weights are, or above 2 GB",
    )
    add_selection(p)
    add_sizes(p)
    add_latency(p)
    add_pq_arguments(p)
    add_calibration(p)
    add_verify(p)
    add_output(p)


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="model to inspect (.onnx)")
    add_selection(p)
    add_sizes(p)
    add_calibration(p, budget=False)
    add_output(p)


def _emit(report: Report, a: argparse.Namespace) -> None:
    if a.plot:
        plot_report(report, a.plot)
    if a.report:
        write_text_atomic(a.report, report.to_json() + "\n")
    print(report.to_json() if a.json else report.to_table())


def _check_side_outputs(a: argparse.Namespace) -> None:
    for path in (a.report, a.plot):
        if path:
            check_output_path(a.input, path)
    if a.plot:
        pyplot()  # a missing matplotlib fails now, not after the work


def _nothing_compressed(report: Report, quiet: bool) -> WncError:
    """The refusal when every layer was skipped: its fix fits the reasons."""
    if not quiet:
        print(report.to_table())
    reasons = [r.reason for r in report.layers]
    if all(r.startswith("quantized") or "DequantizeLinear" in r for r in reasons):
        return WncError(
            "the model is quantized: no float Conv/Gemm/MatMul to factor",
            "compress the float model, then quantize the result",
        )
    rank_bound = sum("VBMF rank" in r or "no saving" in r for r in reasons)
    inputs = sum("graph input" in r for r in reasons)
    fixes = []
    if inputs:
        fixes.append("drop --keep-initializer-inputs (weights that are also graph inputs are then compressed)")
    if rank_bound:
        fixes.append("give ranks with --ranks, or lower --min-rank / --rank-boost where no saving is possible")
    if not fixes:
        fixes.append("see the reasons per layer (wnc-onnx inspect)")
    common = Counter(r.split(":")[0] for r in reasons).most_common(2)
    why = "; ".join(f"{n} x {text}" if n > 1 else text for text, n in common)
    return WncError(
        f"no layer was compressed: all {report.totals.layers} candidate layers were skipped ({why}"
        + (")" if quiet else "; reasons above)"),
        "; ".join(fixes),
    )


def _error_fixes(report: Report, a: argparse.Namespace, written: bool = True) -> str:
    """What lowers the output error, for the passes that made it, with the exact command that
    recovers a low-rank model without labels (distillation from the input model) when the
    output was ``written``."""
    out = Path(a.output)
    tuned = out.with_name((out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name) + ".tuned.onnx")
    data = a.calibration or "INPUTS.npz"
    recover = f"recover it without labels: wnc-onnx finetune {a.output} {tuned} --teacher {a.input} --train {data}"
    if data == "INPUTS.npz":
        recover += " (a few hundred of the model's inputs)"
    if not written:
        recover = "lower the compression"
    if not pq_quantized(report):
        return f"{recover}; or raise --rank-boost (e.g. 0.3) or --min-rank, or exclude layers"
    d = int(report.extras["pq"]["settings"]["d"])
    lower = f"lower --pq-dim (e.g. {max(1, d // 2)})" if d > 1 else "raise --pq-k"
    pq = f"{lower}, leave weights out with --pq-exclude, or train for it (wnc-onnx finetune --pq-lambda)"
    if report.decomposed:
        return f"{recover}; or raise --rank-boost (e.g. 0.3), {pq}"
    return pq


def _nothing_quantized(report: Report, quiet: bool) -> WncError:
    """The refusal when --pq found no weight worth quantizing: the reasons and their fix."""
    pq = report.extras.get("pq") or {"weights": []}
    reasons = [w["reason"] for w in pq["weights"]]
    if not reasons:
        return WncError(
            "nothing to quantize: the model has no Gemm / MatMul / Conv weight",
            "product quantization applies to the weights of those layers",
        )
    if not quiet:
        print(report.to_table())
    if all(r == "already product-quantized" for r in reasons):
        return WncError("the model is already product-quantized", "quantize the float model instead")
    common = Counter(r.split(";")[0].split(":")[0] for r in reasons).most_common(2)
    why = "; ".join(f"{n} x {text}" if n > 1 else text for text, n in common)
    fixes = []
    if any("sub-vectors" in r or "no saving" in r for r in reasons):
        fixes.append("lower --pq-k or --pq-dim")
    if any("not selected" in r for r in reasons):
        fixes.append("add the op type to --pq-op-types (e.g. Gemm,MatMul,Conv)")
    if not fixes:
        fixes.append("see the reasons per weight above")
    return WncError(f"nothing to quantize: all {len(reasons)} weights were skipped ({why})", "; ".join(fixes))


def run(a: argparse.Namespace) -> int:
    out = check_output_path(a.input, a.output)
    _check_side_outputs(a)
    cfg = compress_config(a)
    if cfg.int8:
        check_parent_path(a.input, a.output)
        if a.distill is not None:
            raise WncError(
                "--distill trains the float model, and --int8 would hand it a quantized one",
                "distill without --int8, then quantize the result: wnc-onnx finetune ... --int8",
            )
    if cfg.pq and cfg.pq_kmeans == "faiss":
        require_faiss()
    if a.distill is None and a.distill_lr is not None:
        raise WncError("--distill-lr is the rate of --distill", "add --distill EPOCHS (with --calibration DATA)")
    if a.distill is not None:
        if a.distill < 1:
            raise WncError(f"--distill {a.distill}: a number of epochs", "e.g. --distill 10")
        if cfg.calibration is None:
            raise WncError("--distill trains on the calibration data", "give --calibration DATA (the model's inputs)")
        require_torch()
        lr = DISTILL_LR if a.distill_lr is None else a.distill_lr
        if not (lr > 0 and math.isfinite(lr)):
            raise WncError(f"--distill-lr must be > 0, got {lr}", "e.g. --distill-lr 3e-4")
        model, report = compress_and_recover(a.input, cfg, a.distill, lr=lr)
    else:
        model, report = compress(a.input, cfg)
    quantized = pq_quantized(report)
    if cfg.pq and not quantized and (not cfg.lowrank or report.totals.decomposed == 0):
        raise _nothing_quantized(report, a.quiet)
    int8 = bool(report.extras.get("int8", {}).get("int8_layers"))
    if cfg.int8 and not int8 and report.totals.decomposed == 0 and not quantized:
        raise WncError(
            "--int8 left the model in float and no layer was factored: "
            + next((w for w in report.warnings if w.startswith("--int8")), "no layer could be quantized"),
            "give --calibration for static int8 (Conv), or drop --latency-aware to quantize regardless of speed",
        )
    lat = report.extras.get("latency", {})
    reached = (cfg.target_speedup or 0) * (1 - TOLERANCE)  # as the speed-up loop counts a target met
    passes_met = bool(lat.get("steps")) and lat.get("measured_speedup", 0) >= reached
    if report.totals.decomposed == 0 and not quantized and not int8 and not passes_met:
        raise _nothing_compressed(report, a.quiet)
    asked = bool(a.verify or a.inputs or a.input_value or a.tolerance is not None)
    if asked and a.no_verify:
        raise WncError("--no-verify and a verification option (--verify, --inputs, --tolerance) contradict each other",
                       "drop one of them")  # fmt: skip
    parent = float_parent_path(out) if report.float_model is not None else None
    with staged_model(model, out, a.external_data, source=report.source) as stage:
        if not a.no_verify and not _verified(a, stage.path, report, cfg, asked):
            stage.keep = False
            return EXIT_VERIFY_FAILED
        if parent is not None:  # --int8: the float parent, what fine-tuning takes; a failure leaves no output
            with staged_model(report.float_model, parent, a.external_data):
                pass
            report.model["float_parent"] = str(parent)
    report.totals.file_bytes_after = stage.nbytes
    report.model["output"] = str(out)
    if stage.data_path is not None:
        report.model["output_data"] = str(stage.data_path)
    _emit(report, a)
    advice = report.extras.get("verify_advice")
    if advice:
        print(advice, file=sys.stderr)
    written = [str(out), *([str(stage.data_path)] if stage.data_path is not None else [])]
    written += [str(parent)] if parent is not None else []
    written += [p for p in (a.report, a.plot) if p]
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def float_parent_path(out: Path | str) -> Path:
    """Where an int8 output's float parent is written: beside it, ``NAME.float.onnx``."""
    out = Path(out)
    return out.with_name(out.stem + ".float.onnx")


def check_parent_path(src: str | Path, out: str | Path) -> None:
    """The float parent an --int8 run writes must not replace its input."""
    parent = float_parent_path(out)
    if parent.resolve() == Path(src).resolve():
        raise WncError(
            f"--int8 writes the float model to {parent}, which is the input",
            f"name the output otherwise (not {Path(out).name} beside {parent.name})",
        )


def _verified(a: argparse.Namespace, written: Path, report: Report, cfg: CompressConfig, asked: bool) -> bool:
    """Run the input and the written (staged) output in onnxruntime; False: over --tolerance.

    Not ``asked`` (the default check on random inputs): a model the check cannot run, or no
    onnxruntime, is a note, not an error; the table goes to stderr only when the error is large."""
    feeds = load_inputs(a.inputs, load_model(a.input)) if a.inputs else None
    layers = [
        (r.name, r.input_tensor, r.output_tensor)
        for r in report.decomposed
        if r.input_tensor is not None and r.output_tensor is not None
    ]
    try:
        result = verify(
            a.input,
            written,
            inputs=feeds,
            input_shapes=cfg.input_shapes,
            input_values=parse_input_values(a.input_value),
            tolerance=a.tolerance,
            threads=report.config.get("threads_used", 0),
            layers=layers,
        )
    except WncError as exc:
        if asked:
            raise
        report.warnings.append(f"the outputs were not checked ({exc.problem}); {exc.fix or 'see --verify'}")
        return True
    report.extras["verify"] = result.to_dict()
    if asked or result.large:
        print(result.to_table(), file=sys.stderr)
    fix = _error_fixes(report, a)
    if result.passed:
        advice = result.advice(fix)
        if advice:
            report.extras["verify_advice"] = advice
        return True
    if not a.quiet:
        print(report.to_table())
    knobs = _error_fixes(report, a, written=False)
    print(
        f"wnc-onnx: verify failed: worst output error {result.worst_rel:.3g} exceeds "
        f"--tolerance {a.tolerance:g}; nothing written; fix: {knobs}"
        + (f" ({result.advice(fix)})" if result.advice(fix) and not a.quiet else ""),
        file=sys.stderr,
    )
    return False


def run_inspect(a: argparse.Namespace) -> int:
    _check_side_outputs(a)
    report = inspect(a.input, compress_config(a))
    _emit(report, a)
    return 0
