"""The command line: a thin layer over ``wnc_onnx.compress`` / ``inspect`` / ``finetune`` / ``bench``.

``main`` picks the subcommand (``compress`` when the first word is a model file) and runs
its module; every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from wnc_onnx.cli import bench, compress, demo, finetune
from wnc_onnx.cli.options import EXIT_BAD_INPUT, EXIT_INTERNAL, Formatter, Parser
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.version import __version__

SUBCOMMANDS = ("compress", "inspect", "finetune", "bench", "demo")
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


def build_parser() -> dict[str, argparse.ArgumentParser]:
    def sub(prog: str, description: str, add: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
        parser = Parser(prog=prog, description=description, formatter_class=Formatter)
        add(parser)
        return parser

    top = Parser(prog="wnc-onnx", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"wnc-onnx {__version__}")
    return {
        "top": top,
        "compress": sub(
            "wnc-onnx [compress]", "Compress a model with VBMF ranks + Tucker/SVD.", compress.add_arguments
        ),
        "inspect": sub(
            "wnc-onnx inspect", "Print the plan (ranks, costs); write nothing.", compress.add_inspect_arguments
        ),
        "finetune": sub(
            "wnc-onnx finetune",
            "Fine-tune a compressed model with ONNX Runtime training or PyTorch (needs the training install).",
            finetune.add_arguments,
        ),
        "bench": sub(
            "wnc-onnx bench",
            "Measure models side by side with onnxruntime: latency, throughput, memory, energy, per layer.",
            bench.add_arguments,
        ),
        "demo": sub(
            "wnc-onnx demo", "Generate a small CNN with low-rank structure and compress it.", demo.add_arguments
        ),
    }


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
        runners: dict[str, Callable[[argparse.Namespace], int]] = {
            "compress": compress.run,
            "inspect": compress.run_inspect,
            "finetune": finetune.run,
            "bench": bench.run,
            "demo": demo.run,
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
