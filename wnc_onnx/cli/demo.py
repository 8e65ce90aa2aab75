"""``wnc-onnx demo``: a small generated CNN, compressed, with its report (and plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wnc_onnx import zoo
from wnc_onnx.api import compress
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError
from wnc_onnx.io.model_io import save_model, write_text_atomic
from wnc_onnx.report.plot import plot_report

DEMO_DIR = "wnc-demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "outdir",
        nargs="?",
        default=DEMO_DIR,
        help="folder for demo_cnn.onnx, demo_cnn.small.onnx, report.json (and ranks.png)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--plot", action="store_true", help="also write ranks.png")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def run(a: argparse.Namespace) -> int:
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
        plot_report(report, outdir / "ranks.png")
        print(f"wrote {outdir / 'ranks.png'}")
    return 0
