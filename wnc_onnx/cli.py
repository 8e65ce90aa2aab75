"""Command line: a thin layer over ``wnc_onnx.compress`` / ``wnc_onnx.inspect`` / ``wnc_onnx.finetune``."""

from __future__ import annotations

import argparse
import difflib
import errno
import logging
import os
import re
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from wnc_onnx import __version__, cli_bench, cli_finetune
from wnc_onnx.api import compress, inspect, load_ranks, pq_quantized
from wnc_onnx.config import SKIPPABLE_PASSES, SUPPORTED_OPS, CompressConfig
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.model_io import check_output_path, load_model, save_model, staged_model, write_text_atomic
from wnc_onnx.report import Report

SUBCOMMANDS = ("compress", "inspect", "finetune", "bench", "demo")
EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
DEMO_DIR = "wnc-demo"

DESCRIPTION = """\
Compress a trained CNN in ONNX: EVBMF picks each layer's ranks, Tucker-2 / Tucker-1 / SVD
rewrite Conv, Gemm and MatMul layers as chains of smaller ones (Kim et al., ICLR 2016),
and fine-tuning with ONNX Runtime training brings the accuracy back.

subcommands:
  wnc-onnx [compress] IN.onnx OUT.onnx [options]   compress a model (the default subcommand)
  wnc-onnx inspect IN.onnx [options]               print the plan (ranks, costs); write nothing
  wnc-onnx finetune IN.onnx OUT.onnx --train DATA  fine-tune a compressed model
  wnc-onnx bench A.onnx B.onnx [options]           measure models side by side (latency, per layer)
  wnc-onnx demo [DIR]                              compress a small generated CNN into DIR

'wnc-onnx SUBCOMMAND --help' lists a subcommand's options."""


class _Formatter(argparse.HelpFormatter):
    """Shows a default once, and only where it says something (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if "default" in text or nothing or (not action.option_strings and action.nargs != "?"):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_BAD_INPUT, f"wnc-onnx: error: {message}; fix: see '{self.prog} --help'\n")


def _add_selection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which layers")
    g.add_argument(
        "--op-types",
        default=",".join(SUPPORTED_OPS),
        help="comma-separated op types to compress",
    )
    g.add_argument("--include", metavar="REGEX", help="only layers whose node name matches")
    g.add_argument("--exclude", metavar="REGEX", help="skip layers whose node name matches")
    g.add_argument("--no-pointwise", action="store_true", help="leave 1x1 convolutions alone")
    g.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="do not fold BatchNormalization / per-channel Mul, Add into the preceding Conv/Gemm",
    )
    g.add_argument(
        "--skip-pass",
        action="append",
        default=[],
        metavar="NAME",
        help=f"leave a graph pass out (repeatable): one of {', '.join(SKIPPABLE_PASSES)}",
    )
    g.add_argument(
        "--no-fc-tucker",
        action="store_true",
        help="factor a Gemm fed by Flatten of a CxHxW map with SVD instead of Tucker-2",
    )
    g.add_argument(
        "--keep-initializer-inputs",
        action="store_true",
        help="old exports list weights as graph inputs too; by default those inputs are removed and the weights "
        "compressed as the constants they are; with this flag they stay inputs and their layers are skipped "
        "(same as --skip-pass initializer_inputs)",
    )
    r = p.add_argument_group("ranks")
    r.add_argument(
        "--ranks",
        metavar="FILE",
        help='JSON {"layer": [R3, R4] | R}: explicit ranks, overriding VBMF (selects the layer)',
    )
    r.add_argument("--min-rank", type=int, default=CompressConfig.min_rank, help="floor for VBMF ranks")
    r.add_argument(
        "--rank-multiple",
        type=int,
        default=CompressConfig.rank_multiple,
        metavar="N",
        help="round VBMF ranks up to a multiple of N, e.g. 8 or 16 for SIMD",
    )
    r.add_argument(
        "--rank-boost",
        type=float,
        default=CompressConfig.rank_boost,
        metavar="F",
        help="move ranks from VBMF (0) toward full rank (1): more accuracy, less compression",
    )
    r.add_argument(
        "--tucker1-max-in",
        type=int,
        default=CompressConfig.tucker1_max_in,
        metavar="C",
        help="convs with at most C input channels get Tucker-1",
    )
    r.add_argument(
        "--allow-no-saving",
        action="store_true",
        help="rewrite layers even when weights or MACs would not drop (for checks)",
    )
    r.add_argument("--hooi-iters", type=int, default=CompressConfig.hooi_max_iter, help="max HOOI sweeps after HOSVD")
    r.add_argument(
        "--hooi-tol",
        type=float,
        default=CompressConfig.hooi_tol,
        help="stop HOOI when the captured energy gains less",
    )


def _add_sizes(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input sizes")
    g.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="size of a model input with dynamic dims (repeatable): MACs are counted at this size, and "
        "random --verify inputs get it (dynamic dims otherwise: batch 1, others 64)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="BLAS and onnxruntime threads (default: the cores free when the run starts)",
    )


def _add_latency(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "speed on the target (each layer's forms timed with onnxruntime; --threads names the target's threads)"
    )
    g.add_argument(
        "--latency-aware",
        action="store_true",
        help="time each layer's forms (original, Tucker-2, Tucker-1, SVD, ranks rounded to 8/16) at its real input "
        "size and keep the fastest that is as accurate as the chosen ranks; never a layer slower than the original",
    )
    g.add_argument(
        "--target-speedup",
        type=float,
        metavar="S",
        help="allocate ranks over the network so the model runs S times faster on the target (measured), with the "
        "least kernel error; implies --latency-aware",
    )
    cli_bench.add_session_arguments(g, "")  # type: ignore[arg-type]
    g.add_argument(
        "--no-latency-cache",
        action="store_true",
        help="time every layer again instead of reusing timings of earlier runs on the same target",
    )


def add_pq_arguments(p: argparse.ArgumentParser, finetune: bool = False) -> None:
    """Product quantization flags, shared by compress and finetune (--pq-lambda)."""
    title = (
        "product quantization of the weights with the penalty (--pq-lambda); the result is the quantized model"
        if finetune
        else "product quantization (weights stored as uint8 codes + a codebook; docs/pq.md)"
    )
    g = p.add_argument_group(title)
    if finetune:
        g.add_argument(
            "--pq-lambda",
            type=float,
            metavar="L",
            help="pull each weight sub-vector toward its nearest centroid with strength L during training "
            "(centroids refreshed every epoch), then product-quantize and write the quantized model",
        )
    else:
        g.add_argument("--pq", action="store_true", help="product-quantize the weights after the low-rank pass")
        g.add_argument(
            "--no-lowrank", action="store_true", help="skip the low-rank pass (with --pq: quantization alone)"
        )
    g.add_argument("--pq-dim", type=int, default=CompressConfig.pq_dim, metavar="D", help="sub-vector length")
    g.add_argument(
        "--pq-k", type=int, default=CompressConfig.pq_k, metavar="K", help="centroids per codebook (at most 256)"
    )
    g.add_argument(
        "--pq-codebook",
        choices=("layer", "subspace"),
        default=CompressConfig.pq_layout,
        help="one codebook per weight (Stock et al.; smaller files) or per column block of sub-vectors (Gong et al.)",
    )
    g.add_argument(
        "--pq-op-types",
        default=",".join(CompressConfig.pq_op_types),
        help="comma-separated op types whose weights are quantized (add Conv for convolutions and Tucker factors)",
    )
    g.add_argument("--pq-include", metavar="REGEX", help="only weights of nodes whose name matches")
    g.add_argument("--pq-exclude", metavar="REGEX", help="skip weights of nodes whose name matches")
    g.add_argument(
        "--pq-kmeans",
        choices=("sklearn", "faiss"),
        default=CompressConfig.pq_kmeans,
        help="k-means implementation (faiss: pip install faiss-cpu; about 10x faster on large weights)",
    )


def pq_options(a: argparse.Namespace) -> dict[str, Any]:
    """CompressConfig fields from the product quantization flags."""
    return {
        "pq_dim": a.pq_dim,
        "pq_k": a.pq_k,
        "pq_layout": a.pq_codebook,
        "pq_op_types": tuple(o.strip() for o in a.pq_op_types.split(",") if o.strip()),
        "pq_include": a.pq_include,
        "pq_exclude": a.pq_exclude,
        "pq_kmeans": a.pq_kmeans,
    }


def _add_verify(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification (onnxruntime, original vs compressed)")
    g.add_argument("--verify", action="store_true", help="run both models and compare their outputs")
    g.add_argument("--inputs", metavar="NPZ", help="inputs for --verify: one array per model input")
    g.add_argument(
        "--input-value",
        action="append",
        default=[],
        metavar="NAME=V",
        help="fill a --verify input with the value V instead of random numbers, e.g. --input-value sr=16000",
    )
    g.add_argument(
        "--tolerance",
        type=float,
        metavar="T",
        help="fail (exit 1, nothing written) when the worst output error exceeds T (see README, 'Verify')",
    )


def _add_calibration(p: argparse.ArgumentParser, budget: bool = True) -> None:
    g = p.add_argument_group("calibration data (docs/calibration.md)")
    g.add_argument(
        "--calibration",
        metavar="DATA",
        help="model inputs (an .npz, one array per input, batch first, or a folder of images for a model with one "
        "image input; a few hundred samples): each layer is "
        "fitted to its response to them instead of its kernel alone, and the table shows its output error on "
        "them (docs/calibration.md)",
    )
    g.add_argument(
        "--calibration-mean",
        default="0",
        metavar="M[,M,M]",
        help="an image folder given to --calibration: pixels in [0,1], minus M per channel (as finetune --mean)",
    )
    g.add_argument(
        "--calibration-std", default="1", metavar="S[,S,S]", help="... then divided by S per channel (finetune --std)"
    )
    if not budget:
        return
    g.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="with --calibration: choose the ranks so the network's output error on the calibration data "
        "(relative RMS, as --verify measures it) stays under E with the fewest MACs, e.g. 0.05; with "
        "--target-speedup the ranks are the speed-up's (least error on the data) and E is checked",
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="JSON", help="write the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot ranks and per-layer savings to a PNG file")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def build_parser() -> dict[str, argparse.ArgumentParser]:
    common = {"formatter_class": _Formatter}
    top = _Parser(prog="wnc-onnx", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"wnc-onnx {__version__}")
    comp = _Parser(prog="wnc-onnx [compress]", description="Compress a model with VBMF ranks + Tucker/SVD.", **common)  # type: ignore[arg-type]
    comp.add_argument("input", help="model to compress (.onnx); never modified")
    comp.add_argument("output", help="where to write the compressed model (written atomically)")
    comp.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights to OUTPUT.data beside the model (--no-external-data: inline); "
        "default: external when the input's weights are, or above 2 GB",
    )
    _add_selection(comp)
    _add_sizes(comp)
    _add_latency(comp)
    add_pq_arguments(comp)
    _add_calibration(comp)
    _add_verify(comp)
    _add_output(comp)
    insp = _Parser(prog="wnc-onnx inspect", description="Print the plan (ranks, costs); write nothing.", **common)  # type: ignore[arg-type]
    insp.add_argument("input", help="model to inspect (.onnx)")
    _add_selection(insp)
    _add_sizes(insp)
    _add_calibration(insp, budget=False)
    _add_output(insp)
    tune = _Parser(
        prog="wnc-onnx finetune",
        description="Fine-tune a compressed model with ONNX Runtime training (needs the training install).",
        **common,  # type: ignore[arg-type]
    )
    cli_finetune.add_arguments(tune)
    bench = _Parser(
        prog="wnc-onnx bench",
        description="Measure models side by side with onnxruntime: latency, throughput, memory, energy, per layer.",
        **common,  # type: ignore[arg-type]
    )
    cli_bench.add_arguments(bench)
    demo = _Parser(
        prog="wnc-onnx demo",
        description="Generate a small CNN with low-rank structure and compress it.",
        **common,  # type: ignore[arg-type]
    )
    demo.add_argument(
        "outdir",
        nargs="?",
        default=DEMO_DIR,
        help="folder for demo_cnn.onnx, demo_cnn.small.onnx, report.json (and ranks.png)",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    demo.add_argument("--plot", action="store_true", help="also write ranks.png")
    demo.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return {"top": top, "compress": comp, "inspect": insp, "finetune": tune, "bench": bench, "demo": demo}


def _input_shapes(a: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from wnc_onnx.verify import parse_input_shapes

    shapes = {k: tuple(v) for k, v in parse_input_shapes(a.input_shape).items()}
    if getattr(a, "inputs", None) and not shapes:  # real --verify inputs: their sizes count MACs too
        from wnc_onnx.model_io import read_npz

        arrays = read_npz(a.inputs, "inputs file", "with one array per model input", "numpy.savez(path, x=array)")
        model_inputs = {vi.name for vi in load_model(a.input).graph.input}
        shapes = {k: tuple(v.shape) for k, v in arrays.items() if k in model_inputs and v.ndim and all(v.shape)}
    return shapes


def _config(a: argparse.Namespace) -> CompressConfig:
    ops = tuple(o.strip() for o in a.op_types.split(",") if o.strip())
    try:
        return CompressConfig(
            op_types=ops,
            include=a.include,
            exclude=a.exclude,
            pointwise=not a.no_pointwise,
            ranks=load_ranks(a.ranks) if a.ranks else {},
            min_rank=a.min_rank,
            rank_multiple=a.rank_multiple,
            rank_boost=a.rank_boost,
            tucker1_max_in=a.tucker1_max_in,
            fc_tucker=not a.no_fc_tucker,
            require_savings=not a.allow_no_saving,
            skip_passes=tuple(
                dict.fromkeys(
                    [
                        *a.skip_pass,
                        *(["fold_batchnorm"] if a.no_fold_bn else []),
                        *(["initializer_inputs"] if a.keep_initializer_inputs else []),
                    ]
                )
            ),
            hooi_max_iter=a.hooi_iters,
            hooi_tol=a.hooi_tol,
            input_shapes=_input_shapes(a),
            threads=a.threads,
            calibration=getattr(a, "calibration", None),
            max_error=getattr(a, "max_error", None),
            calibration_mean=cli_finetune.parse_floats(getattr(a, "calibration_mean", "0"), "--calibration-mean"),
            calibration_std=cli_finetune.parse_floats(getattr(a, "calibration_std", "1"), "--calibration-std"),
            **_latency_options(a),
            **_pq_flags(a),
        )
    except (ValueError, re.error) as exc:
        raise WncError(f"invalid option: {exc}", "see 'wnc-onnx --help'") from None


def _pq_flags(a: argparse.Namespace) -> dict[str, Any]:
    if not hasattr(a, "pq"):  # inspect: the plan of the low-rank pass only
        return {}
    return {"pq": a.pq, "lowrank": not a.no_lowrank, **pq_options(a)}


def _latency_options(a: argparse.Namespace) -> dict[str, Any]:
    if not hasattr(a, "latency_aware"):  # inspect: no timing
        return {}
    from wnc_onnx.bench.session import parse_session_options

    return {
        "latency_aware": a.latency_aware,
        "target_speedup": a.target_speedup,
        "provider": a.provider,
        "session_options": parse_session_options(a.session_option),
        "graph_opt": a.graph_opt,
        "latency_cache": not a.no_latency_cache,
    }


def _emit(report: Report, a: argparse.Namespace) -> None:
    if a.plot:
        from wnc_onnx.plot import plot_report

        plot_report(report, a.plot)
    if a.report:
        write_text_atomic(a.report, report.to_json() + "\n")
    print(report.to_json() if a.json else report.to_table())


def _check_side_outputs(a: argparse.Namespace) -> None:
    for path in (a.report, a.plot):
        if path:
            check_output_path(a.input, path)
    if a.plot:
        from wnc_onnx.plot import pyplot

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


def require_faiss() -> None:
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        raise WncError("--pq-kmeans faiss needs faiss, which is not installed", "pip install faiss-cpu")


def _error_fixes(report: Report) -> str | None:
    """What lowers the output error, for the passes that made it: None = the low-rank knobs."""
    if not pq_quantized(report):
        return None
    d = int(report.extras["pq"]["settings"]["d"])
    lower = f"lower --pq-dim (e.g. {max(1, d // 2)})" if d > 1 else "raise --pq-k"
    pq = f"{lower}, leave weights out with --pq-exclude, or train for it (wnc-onnx finetune --pq-lambda)"
    if report.decomposed:
        return f"fine-tune it (wnc-onnx finetune), raise --rank-boost (e.g. 0.3), {pq}"
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


def run_compress(a: argparse.Namespace) -> int:
    out = check_output_path(a.input, a.output)
    _check_side_outputs(a)
    cfg = _config(a)
    if cfg.pq and cfg.pq_kmeans == "faiss":
        require_faiss()
    model, report = compress(a.input, cfg)
    quantized = pq_quantized(report)
    if cfg.pq and not quantized and (not cfg.lowrank or report.totals.decomposed == 0):
        raise _nothing_quantized(report, a.quiet)
    if report.totals.decomposed == 0 and not quantized:
        raise _nothing_compressed(report, a.quiet)
    checking = bool(a.verify or a.inputs or a.input_value or a.tolerance is not None)
    with staged_model(model, out, a.external_data, source=report.source) as stage:
        if checking and not _verified(a, stage.path, report, cfg):
            stage.keep = False
            return EXIT_VERIFY_FAILED
    report.totals.file_bytes_after = stage.nbytes
    report.model["output"] = str(out)
    if stage.data_path is not None:
        report.model["output_data"] = str(stage.data_path)
    _emit(report, a)
    advice = report.extras.get("verify_advice")
    if advice:
        print(advice, file=sys.stderr)
    return 0


def _verified(a: argparse.Namespace, written: Path, report: Report, cfg: CompressConfig) -> bool:
    """Run the input and the written (staged) output in onnxruntime; False: over --tolerance."""
    from wnc_onnx.verify import load_inputs, parse_input_values, verify

    feeds = load_inputs(a.inputs, load_model(a.input)) if a.inputs else None
    layers = [
        (r.name, r.input_tensor, r.output_tensor)
        for r in report.decomposed
        if r.input_tensor is not None and r.output_tensor is not None
    ]
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
    report.extras["verify"] = result.to_dict()
    print(result.to_table(), file=sys.stderr)
    fix = _error_fixes(report)
    if result.passed:
        advice = result.advice(fix)
        if advice:
            report.extras["verify_advice"] = advice
        return True
    if not a.quiet:
        print(report.to_table())
    knobs = fix or "raise --rank-boost or --min-rank, or exclude layers"
    print(
        f"wnc-onnx: verify failed: worst output error {result.worst_rel:.3g} exceeds "
        f"--tolerance {a.tolerance:g}; nothing written; fix: {knobs}"
        + (f" ({result.advice(fix)})" if result.advice(fix) and not a.quiet else ""),
        file=sys.stderr,
    )
    return False


def run_inspect(a: argparse.Namespace) -> int:
    _check_side_outputs(a)
    report = inspect(a.input, _config(a))
    _emit(report, a)
    return 0


def run_demo(a: argparse.Namespace) -> int:
    from wnc_onnx import zoo

    outdir = Path(a.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise WncError(f"demo folder {outdir} is a file", "give a folder path, e.g. 'wnc-onnx demo wnc-demo'")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WncError(
            f"cannot create demo folder {outdir}: {exc.strerror or exc}", "choose a writable location"
        ) from None
    src = outdir / "demo_cnn.onnx"
    save_model(zoo.demo_cnn(), src)
    print(f"wrote {src}: a small CNN whose kernels have planted low-rank structure")
    model, report = compress(str(src), CompressConfig())
    dst = outdir / "demo_cnn.small.onnx"
    report.totals.file_bytes_after = save_model(model, dst)
    print(report.to_table())
    write_text_atomic(outdir / "report.json", report.to_json() + "\n")
    print(f"wrote {dst} and {outdir / 'report.json'}")
    if a.plot:
        from wnc_onnx.plot import plot_report

        plot_report(report, outdir / "ranks.png")
        print(f"wrote {outdir / 'ranks.png'}")
    return 0


def _subcommand(argv: list[str]) -> tuple[str, list[str]]:
    """(subcommand, its arguments); a word that is neither a subcommand nor a file is a typo."""
    first = argv[0]
    if first in SUBCOMMANDS:
        return first, argv[1:]
    if not first.startswith("-") and not Path(first).exists() and not first.lower().endswith(".onnx"):
        close = difflib.get_close_matches(first, SUBCOMMANDS, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise WncError(
            f"'{first}' is neither a subcommand nor an existing file",
            f"{guess}subcommands: {', '.join(SUBCOMMANDS)}; to compress: wnc-onnx IN.onnx OUT.onnx",
        )
    return "compress", argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = build_parser()
    if not argv or argv[0] in ("-h", "--help", "--version"):
        if not argv:
            parsers["top"].print_help()
            return EXIT_BAD_INPUT
        if argv[0] == "--version":
            print(f"wnc-onnx {__version__}")
            return 0
        parsers["top"].print_help()
        return 0
    try:
        cmd, rest = _subcommand(argv)
    except WncError as exc:
        print(f"wnc-onnx: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    a = parsers[cmd].parse_args(rest)
    quiet = getattr(a, "quiet", False) or os.environ.get("RANK", "0") != "0"  # torchrun: rank 0 reports
    # Our progress lines at info; other libraries' (onnxruntime.training logs each artifact it saves) at warning.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("wnc_onnx").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        runners = {
            "compress": run_compress,
            "inspect": run_inspect,
            "finetune": cli_finetune.run,
            "bench": cli_bench.run,
            "demo": run_demo,
        }
        code = runners[cmd](a)
        sys.stdout.flush()
        return code
    except WncError as exc:
        print(f"wnc-onnx: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("wnc-onnx: interrupted; nothing written", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader (head, less) went away: end quietly, as Unix tools do
            _silence_stdout()
            return 0
        return _internal(a, exc)
    except Exception as exc:  # a bug: one line unless --debug
        return _internal(a, exc)


def _internal(a: argparse.Namespace, exc: BaseException) -> int:
    if getattr(a, "debug", False):
        traceback.print_exc()
    print(
        f"wnc-onnx: internal error: {type(exc).__name__}: {one_line(exc, 400)} (rerun with --debug and report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises no second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
