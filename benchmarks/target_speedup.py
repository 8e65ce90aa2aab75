"""--target-speedup as measured: compress for a speed-up target, then time the result apart.

    python benchmarks/target_speedup.py [--model vgg16|PATH|corpus:ID|corpus] [--target 4] [--threads 1]
        [--rounds 9] [--session-option KEY=VALUE] [--no-cache] [--json out.json]

``vgg16``: the VGG-16 chain of ``wnc_onnx.zoo`` at 224 x 224 (13 convs, planted ranks),
only its convs in scope (``--op-types Conv``). ``corpus:ID``: a model of tests/corpus.py
at its corpus input size; ``corpus``: every one of them. Several, comma-separated.
For each target: the compression's own figures (predicted and
measured speed-up, the steps it took, whether it says it reached the target), then
``wnc_onnx.bench`` times the original and the result side by side in a separate pass
(interleaved rounds, spread reported), so the run's claim is checked by a second measurement.
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
sys.path.insert(0, str(ROOT))

from wnc_onnx import compress  # noqa: E402
from wnc_onnx.bench import BenchConfig, measure  # noqa: E402
from wnc_onnx.io.machine import cpu_model  # noqa: E402
from wnc_onnx.io.session import parse_session_options  # noqa: E402
from wnc_onnx.zoo import vgg16  # noqa: E402


def load(spec: str) -> tuple[onnx.ModelProto, dict, dict, dict | None]:
    """(model, compress scope, input shapes, real inputs for bench or None)."""
    if spec == "vgg16":
        return vgg16(image=224), {"op_types": ("Conv",)}, {}, None
    if spec.startswith("corpus:"):
        from tests.corpus import SIZES, fetch, verify_inputs
        from wnc_onnx.io.model_io import load_model

        mid = spec.split(":", 1)[1]
        model = load_model(fetch(mid))
        feeds = verify_inputs(mid)
        sizes = SIZES.get(mid) or {k: v.shape for k, v in (feeds or {}).items() if v.ndim and all(v.shape)}
        return model, {}, {k: tuple(v) for k, v in sizes.items()}, feeds
    from wnc_onnx.io.model_io import load_model

    return load_model(Path(spec)), {}, {}, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--target", default="4", help="comma-separated speed-up targets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--session-option", action="append", default=[])
    ap.add_argument("--no-cache", action="store_true", help="time every form again (the latency cache unused)")
    ap.add_argument("--json")
    a = ap.parse_args()
    options = parse_session_options(a.session_option)
    specs = [x for m in a.model.split(",") for x in (corpus_ids() if m == "corpus" else [m])]
    print(
        f"{cpu_model()}; {a.threads} thread(s); load before {os.getloadavg()[0]:.2f}; options {options or 'default'}",
        flush=True,
    )
    rows = []
    for spec in specs:
        try:
            rows += run_model(spec, a, options)
        except Exception as exc:  # one model's failure is a row, not the end of the run
            print(f"{spec}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            rows.append({"model": spec, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def corpus_ids() -> list[str]:
    from tests.corpus import CORPUS

    return [f"corpus:{k}" for k in CORPUS]


def run_model(spec: str, a: argparse.Namespace, options: dict) -> list[dict]:
    model, scope, shapes, feeds = load(spec)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wnc-target-") as tmp:
        orig = Path(tmp) / "original.onnx"
        onnx.save(model, orig)
        for target in (float(x) for x in a.target.split(",")):
            t0 = time.perf_counter()
            out, rep = compress(
                model,
                input_values={k: float(v) for k, v in (feeds or {}).items() if v.ndim == 0},
                target_speedup=target,
                threads=a.threads,
                session_options=options,
                input_shapes=shapes,
                latency_cache=not a.no_cache,
                **scope,
            )
            seconds = time.perf_counter() - t0
            path = Path(tmp) / f"target{target:g}.onnx"
            onnx.save(out, path)
            lat = rep.extras.get("latency", {})
            res = measure(
                [orig, path],
                BenchConfig(
                    threads=(a.threads,),
                    rounds=a.rounds,
                    memory=False,
                    session_options=options,
                    input_shapes={} if feeds else shapes,
                    inputs=feeds,
                ),
            )
            run = res.runs[1]
            tot = rep.totals
            row = {
                "model": spec,
                "target": target,
                "threads": a.threads,
                "compress_s": round(seconds, 1),
                "predicted": lat.get("predicted_speedup"),
                "measured_in_run": (lat.get("measured") or {}).get("speedup"),
                "reached": lat.get("reached"),
                "met": lat.get("met"),
                "steps": lat.get("steps"),
                "bench_speedup": round(run.speedup, 3),
                "bench_range": [round(x, 3) for x in run.speedup_range],
                "bench_spread": [round(res.runs[0].spread, 3), round(run.spread, 3)],
                "macs": [tot.macs_before, tot.macs_after],
                "decomposed": tot.decomposed,
                "warnings": rep.warnings,
            }
            rows.append(row)
            theo = tot.macs_before / tot.macs_after if tot.macs_before and tot.macs_after else float("nan")
            print(
                f"{spec} target x{target:g}: compress {seconds:.0f} s, MACs x{theo:.2f}, "
                f"predicted x{row['predicted']}, measured in the run x{row['measured_in_run']}, "
                f"met {row['met']} in {len(row['steps'] or [])} step(s); "
                f"bench x{run.speedup:.2f} ({run.speedup_range[0]:.2f}-{run.speedup_range[1]:.2f}), "
                f"decomposed {tot.decomposed}/{tot.layers}",
                flush=True,
            )
            for w in rep.warnings:
                print(f"  warning: {w}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
