"""Option groups the subcommands share, and the compress configuration built from them."""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

from wnc_onnx.api import load_ranks
from wnc_onnx.config import GRAPH_OPT_LEVELS, SKIPPABLE_PASSES, SUPPORTED_OPS, CompressConfig, flag_of
from wnc_onnx.data.feeds import parse_input_shapes, parse_input_values
from wnc_onnx.errors import WncError, option_error
from wnc_onnx.io.model_io import load_model, read_npz
from wnc_onnx.io.session import parse_session_options

EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class Formatter(argparse.HelpFormatter):
    """Shows a default once, and only where it says something (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if "default" in text or nothing or (not action.option_strings and action.nargs != "?"):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_BAD_INPUT, f"wnc-onnx: error: {message}; fix: see '{self.prog} --help'\n")


def add_session_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, threads_help: str) -> None:
    """--provider / --session-option / --graph-opt: the target a model is measured (and chosen) on."""
    g = p.add_argument_group("target (onnxruntime)") if isinstance(p, argparse.ArgumentParser) else p
    g.add_argument(
        "--provider",
        default="cpu",
        metavar="EP",
        help="execution provider: cpu, cuda, tensorrt, openvino, coreml, xnnpack, ... or a full onnxruntime name",
    )
    g.add_argument(
        "--session-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="onnxruntime session config entry (repeatable), e.g. session.intra_op.allow_spinning=0",
    )
    g.add_argument(
        "--graph-opt",
        choices=GRAPH_OPT_LEVELS,
        default="all",
        help="onnxruntime graph optimization level",
    )
    if threads_help:
        g.add_argument("--threads", default="0", metavar="N[,N...]", help=threads_help)


def add_selection(p: argparse.ArgumentParser) -> None:
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
        "--simplify",
        action="store_true",
        help="run onnx-simplifier (onnxsim) before the passes: folds constant subgraphs and redundant ops "
        "(pip install 'wnc-onnx[simplify]'; measured to change little on real exports, docs/how-it-works.md)",
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


def add_sizes(p: argparse.ArgumentParser) -> None:
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


def add_latency(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "speed on the target (each layer's forms timed with onnxruntime; --threads names the target's threads)"
    )
    g.add_argument(
        "--latency-aware",
        action="store_true",
        help="time each layer's forms (original, Tucker-2, Tucker-1, SVD, ranks rounded up to the channel block "
        "measured on the target) alone at its real input size and keep the fastest that is as accurate as the "
        "chosen ranks, or the original where none is faster; then profile the whole model, keep whole the layers "
        "that got slower there and compress again (up to 3 reruns). Layers can still end slower: those left are "
        "named in a warning",
    )
    g.add_argument(
        "--target-speedup",
        type=float,
        metavar="S",
        help="allocate ranks over the network so the model runs S times faster on the target, with the least "
        "kernel error: the whole model is timed and the allocation corrected until it measures within 10%% of S, "
        "or the run says the highest it measured and what bounds it; implies --latency-aware",
    )
    g.add_argument(
        "--int8",
        action="store_true",
        help="quantize to int8 after the low-rank pass with onnxruntime's tools: static QDQ per channel calibrated "
        "on --calibration, else dynamic (MatMul/Gemm only; Conv stays float). With --latency-aware: per layer "
        "float or int8, original or factored, as measured in the quantized model; the report times int8 alone "
        "against low rank + int8",
    )
    add_session_arguments(g, "")  # type: ignore[arg-type]
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
            "--no-lowrank", action="store_true", help="skip the low-rank pass (with --pq or --int8: quantization alone)"
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


def require_faiss() -> None:
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        raise WncError("--pq-kmeans faiss needs faiss, which is not installed", "pip install faiss-cpu")


def add_verify(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification (onnxruntime, original vs compressed)")
    g.add_argument(
        "--verify",
        action="store_true",
        help="run both models and compare their outputs, and fail (exit 2) when that cannot be done; without it "
        "compress checks on random inputs anyway and notes when it cannot",
    )
    g.add_argument(
        "--no-verify", action="store_true", help="skip the check of the outputs (for models where it is too slow)"
    )
    g.add_argument("--inputs", metavar="NPZ", help="inputs for --verify: one array per model input")
    g.add_argument(
        "--input-value",
        action="append",
        default=[],
        metavar="NAME=V",
        help="fill an input with the value V instead of random numbers, in --verify and in the timings on the "
        "target (--latency-aware, --target-speedup, --int8), e.g. --input-value sr=16000",
    )
    g.add_argument(
        "--tolerance",
        type=float,
        metavar="T",
        help="fail (exit 1, nothing written) when the worst output error exceeds T (see README, 'Verify')",
    )


def add_calibration(p: argparse.ArgumentParser, budget: bool = True) -> None:
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
        "--distill",
        type=int,
        metavar="EPOCHS",
        help="then train the compressed model for EPOCHS on the calibration data to reproduce the original "
        "(distillation, no labels; needs torch), and report both against the original on held-back samples",
    )
    g.add_argument(
        "--distill-lr",
        type=float,
        metavar="LR",
        help="--distill's learning rate (AdamW, divided by 10 after two thirds of the epochs; default 3e-4, "
        "measured on real exports)",
    )
    g.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="with --calibration: choose the ranks so the network's output error on the calibration data "
        "(relative RMS, as --verify measures it) stays under E with the fewest MACs, e.g. 0.05; with "
        "--target-speedup the ranks are the speed-up's (least error on the data) and E is checked",
    )


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="JSON", help="write the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot ranks and per-layer savings to a PNG file")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise WncError(f"{flag} {text!r} is not a comma-separated list of numbers", f"e.g. {flag} 0.5") from None


def _input_shapes(a: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    shapes = {k: tuple(v) for k, v in parse_input_shapes(a.input_shape).items()}
    if getattr(a, "inputs", None) and not shapes:  # real --verify inputs: their sizes count MACs too
        arrays = read_npz(a.inputs, "inputs file", "with one array per model input", "numpy.savez(path, x=array)")
        model_inputs = {vi.name for vi in load_model(a.input).graph.input}
        shapes = {k: tuple(v.shape) for k, v in arrays.items() if k in model_inputs and v.ndim and all(v.shape)}
    return shapes


def compress_config(a: argparse.Namespace) -> CompressConfig:
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
            simplify=a.simplify,
            hooi_max_iter=a.hooi_iters,
            hooi_tol=a.hooi_tol,
            input_shapes=_input_shapes(a),
            threads=a.threads,
            calibration=getattr(a, "calibration", None),
            max_error=getattr(a, "max_error", None),
            calibration_mean=parse_floats(getattr(a, "calibration_mean", "0"), "--calibration-mean"),
            calibration_std=parse_floats(getattr(a, "calibration_std", "1"), "--calibration-std"),
            **_latency_options(a),
            **_pq_flags(a),
        )
    except (ValueError, re.error) as exc:
        raise option_error(exc, flag_of, "'wnc-onnx compress --help'") from None


def _pq_flags(a: argparse.Namespace) -> dict[str, Any]:
    if not hasattr(a, "pq"):  # inspect: the plan of the low-rank pass only
        return {}
    return {"pq": a.pq, "lowrank": not a.no_lowrank, **pq_options(a)}


def _latency_options(a: argparse.Namespace) -> dict[str, Any]:
    if not hasattr(a, "latency_aware"):  # inspect: no timing
        return {}
    return {
        "latency_aware": a.latency_aware,
        "target_speedup": a.target_speedup,
        "provider": a.provider,
        "session_options": parse_session_options(a.session_option),
        "graph_opt": a.graph_opt,
        "latency_cache": not a.no_latency_cache,
        "int8": a.int8,
        "input_values": parse_input_values(getattr(a, "input_value", None) or []),
    }
