"""Low rank composed with int8, measured: int8 alone against low rank + int8 on the target.

    python benchmarks/int8_speed.py [--models vgg16,corpus:ppocr_cls] [--threads 1] [--rounds 7]
        [--samples 8] [--json out.json]

For each model: the float original; int8 alone (``--no-lowrank --int8``); the latency-aware
low-rank model in float (``--latency-aware``); ``--int8`` (the defaults, then quantized); and
``--latency-aware --int8`` (per layer float or int8, original or factored, as measured in the
quantized model). All int8 models are static QDQ per channel (onnxruntime's tools), calibrated
on ``--samples`` random inputs: the speed of int8 kernels does not depend on the values, so
these figures are for speed only (accuracy: benchmarks/calibration_digits.py --int8).
``wnc_onnx.bench`` then times all of them side by side (interleaved rounds, spread reported).

``vgg16``: the VGG-16 chain of ``wnc_onnx.zoo`` at 224 x 224, its convs in scope;
``corpus:ID``: a model of tests/corpus.py at its corpus input size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from target_speedup import load  # noqa: E402

from wnc_onnx import compress  # noqa: E402
from wnc_onnx.bench import BenchConfig, measure  # noqa: E402
from wnc_onnx.data.feeds import random_inputs  # noqa: E402
from wnc_onnx.io.machine import cpu_model  # noqa: E402

VARIANTS = (
    ("int8 alone", {"lowrank": False, "int8": True}),
    ("low rank (latency-aware)", {"latency_aware": True}),
    ("low rank + int8", {"int8": True}),
    ("latency-aware + int8", {"latency_aware": True, "int8": True}),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,corpus:ppocr_cls")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--samples", type=int, default=8, help="random calibration inputs (speed only)")
    ap.add_argument("--json")
    a = ap.parse_args()
    print(f"{cpu_model()}; {a.threads} thread(s); load before {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for spec in a.models.split(","):
        model, scope, shapes, feeds = load(spec)
        calib = [random_inputs(model, shapes, seed=i) for i in range(a.samples)]
        with tempfile.TemporaryDirectory(prefix="wnc-int8-") as tmp:
            paths = [Path(tmp) / "original.onnx"]
            onnx.save(model, paths[0])
            info = {}
            for label, options in VARIANTS:
                t0 = time.perf_counter()
                values = {k: float(v) for k, v in (feeds or {}).items() if v.ndim == 0}
                out, rep = compress(
                    model,
                    threads=a.threads,
                    input_shapes=shapes,
                    input_values=values,
                    calibration=calib,
                    **scope,
                    **options,
                )
                seconds = time.perf_counter() - t0
                path = Path(tmp) / f"{len(paths)}.onnx"
                onnx.save(out, path)
                paths.append(path)
                q = rep.extras.get("int8", {})
                info[label] = {
                    "compress_s": round(seconds, 1),
                    "decomposed": rep.totals.decomposed,
                    "int8_layers": q.get("int8_layers"),
                    "float_layers": len(q.get("float_layers") or {}),
                    "kept_whole_in_int8": q.get("kept_whole_in_int8"),
                    "in_run": (q.get("measured") or {}).get("lowrank_int8_over_int8_alone"),
                    "written": (q.get("measured") or {}).get("chosen"),
                }
                print(f"{spec} {label}: {info[label]}", flush=True)
            res = measure(
                paths,
                BenchConfig(
                    threads=(a.threads,),
                    rounds=a.rounds,
                    memory=False,
                    input_shapes={} if feeds else shapes,
                    inputs=feeds,
                ),
            )
        base = res.runs[0]
        alone = res.runs[1]
        row = {"model": spec, "threads": a.threads, "original_ms": round(base.median_ms, 3), "variants": {}}
        for (label, _), run in zip(VARIANTS, res.runs[1:], strict=True):
            row["variants"][label] = {
                **info[label],
                "ms": round(run.median_ms, 3),
                "speedup": round(run.speedup, 3),
                "range": [round(x, 3) for x in run.speedup_range],
                "spread": round(run.spread, 3),
                "over_int8_alone": round(alone.median_ms / run.median_ms, 3),
            }
            print(
                f"  {label:26s} {run.median_ms:9.3f} ms  x{run.speedup:.2f} "
                f"({run.speedup_range[0]:.2f}-{run.speedup_range[1]:.2f}) over the float original, "
                f"x{alone.median_ms / run.median_ms:.2f} over int8 alone",
                flush=True,
            )
        for w in res.warnings:
            print(f"  warning: {w}")
        rows.append(row)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
