"""``wnc-onnx bench``: measure models side by side on the target, over ``wnc_onnx.bench``.

wnc-onnx bench original.onnx compressed.onnx [--threads 1,2] [--batch 1,8] [--per-layer]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

from wnc_onnx.bench import BenchConfig, measure
from wnc_onnx.bench.feeds import model_feeds
from wnc_onnx.cli.options import add_session_arguments
from wnc_onnx.data.feeds import parse_input_shapes, parse_input_values
from wnc_onnx.errors import WncError
from wnc_onnx.io import external_data
from wnc_onnx.io.model_io import check_output_path, load_model, read_npz, write_text_atomic
from wnc_onnx.io.session import parse_session_options
from wnc_onnx.report.plot import plot_layer_times, pyplot
from wnc_onnx.rewrite.int8_quantize import quantize, quantized_nodes


def _ints(text: str, flag: str, low: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
        if not values or any(v < low for v in values):
            raise ValueError
    except ValueError:
        raise WncError(f"{flag} {text!r} is not a list of integers >= {low}", f"write e.g. {flag} 1,2") from None
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="models to measure (.onnx); the first is the baseline of the ratios")
    add_session_arguments(
        p, "intra-op threads; several values give one measurement each (default: 0, every core of this process)"
    )
    r = p.add_argument_group("runs")
    r.add_argument("--batch", default="1", metavar="B[,B...]", help="batch sizes (models with a dynamic batch)")
    r.add_argument("--rounds", type=int, default=10, help="interleaved rounds (each model runs in every round)")
    r.add_argument("--warmup", type=int, default=5, help="untimed runs per model first")
    r.add_argument(
        "--round-time",
        type=float,
        default=0.1,
        metavar="S",
        help="seconds each model runs per round (runs repeat to fill it)",
    )
    r.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (one child process per model)")
    i = p.add_argument_group("inputs")
    i.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=D1,D2,...", help="size of a dynamic input"
    )
    i.add_argument("--inputs", metavar="NPZ", help="real inputs: one array per model input")
    i.add_argument("--input-value", action="append", default=[], metavar="NAME=V", help="fill an input with V")
    per = p.add_argument_group("per layer")
    per.add_argument(
        "--per-layer",
        action="store_true",
        help="profile every model with onnxruntime's profiler and compare layer by layer with the first",
    )
    per.add_argument("--profile-runs", type=int, default=20, help="profiled runs per model (medians are reported)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also time each float model quantized to int8 (onnxruntime's static QDQ per channel, calibrated on "
        "the bench inputs: for speed only), e.g. the original and the compressed model: int8 alone against low "
        "rank + int8",
    )
    p.add_argument("--plot", metavar="PNG", help="per-layer times as a PNG bar chart (with --per-layer)")
    p.add_argument("--report", metavar="JSON", help="write the results as JSON")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def int8_copies(paths: list[str], cfg: BenchConfig, folder: Path) -> list[str]:
    """Each float model of ``paths`` quantized (calibrated on the bench inputs at the first batch
    size: the speed of int8 kernels does not depend on the values), written to ``folder``."""
    out = []
    stems = [Path(p).stem for p in paths]
    for i, p in enumerate(paths):
        model = load_model(p)
        if quantized_nodes(model):
            continue  # already int8
        external_data.load_inline(model)
        feeds = [model_feeds(model, cfg, cfg.batches[0], p, seed=i) for i in range(4)]
        stem = Path(p).stem
        dst = folder / (f"{stem}.int8.onnx" if stems.count(stem) == 1 else f"{i}.{stem}.int8.onnx")
        onnx.save(quantize(model, feeds), str(dst))  # a failure of the tools is one WncError
        out.append(str(dst))
    return out


def run(a: argparse.Namespace) -> int:
    if a.plot and not a.per_layer:
        raise WncError("--plot draws per-layer times", "add --per-layer")
    for path in (a.report, a.plot):
        if path:
            check_output_path(None, path)
    if a.plot:
        pyplot()
    inputs = None
    if a.inputs:
        inputs = read_npz(a.inputs, "inputs file", "with one array per model input", "numpy.savez(path, x=array)")
    try:
        cfg = BenchConfig(
            provider=a.provider,
            threads=_ints(a.threads, "--threads", 0),
            batches=_ints(a.batch, "--batch", 1),
            rounds=a.rounds,
            warmup=a.warmup,
            min_round_seconds=a.round_time,
            session_options=parse_session_options(a.session_option),
            graph_opt=a.graph_opt,
            input_shapes={k: tuple(v) for k, v in parse_input_shapes(a.input_shape).items()},
            input_values=parse_input_values(a.input_value),
            inputs=inputs,
            memory=not a.no_memory,
            per_layer=a.per_layer,
            profile_runs=a.profile_runs,
        )
    except ValueError as exc:
        raise WncError(f"invalid option: {exc}", "see 'wnc-onnx bench --help'") from None
    if a.per_layer and len(a.models) < 2:
        raise WncError("--per-layer compares models layer by layer", "pass the original and the compressed model")
    if a.int8:
        with tempfile.TemporaryDirectory(prefix="wnc-onnx-bench-int8-") as tmp:
            result = measure([*a.models, *int8_copies(a.models, cfg, Path(tmp))], cfg)
    else:
        result = measure(a.models, cfg)
    if a.plot:
        plot_layer_times(result.per_layer, a.plot)
    if a.report:
        write_text_atomic(a.report, result.to_json() + "\n")
    print(result.to_json() if a.json else result.to_table())
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0
