"""The real-model corpus compressed with the defaults and with --latency-aware, measured.

    python benchmarks/corpus_latency.py [--threads 1] [--rounds 7] [--models a,b]
        [--session-option KEY=VALUE]

For every model of tests/corpus.py: the graph passes alone (no layer factored: weight
inputs removed, BatchNorm and constants folded, dead code gone), then compress with the
defaults and with ``--latency-aware`` for this target, and ``wnc_onnx.bench`` the four side
by side (interleaved, per layer) at the corpus inputs. Per model: whole-model speed-ups over
the original, the factoring's own share (over the passes-only model), and the layers that run
slower than the original (profiled medians slower by more than 10% and 0.005 ms, and the
middle halves of the profiled runs apart). Geometric means over all models and over the
factoring alone, so a model made faster by the graph passes (CenterFace: its weights were
graph inputs) does not pass for a gain of the factoring.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.corpus import CORPUS, SIZES, fetch, verify_inputs  # noqa: E402
from wnc_onnx import compress  # noqa: E402
from wnc_onnx.bench import BenchConfig, measure  # noqa: E402
from wnc_onnx.data.feeds import random_inputs  # noqa: E402
from wnc_onnx.io.model_io import load_model  # noqa: E402
from wnc_onnx.io.session import parse_session_options  # noqa: E402

SLOWER = 0.10  # a layer counts as slower beyond this fraction ...
SLOWER_MS = 0.005  # ... and this many milliseconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--models", default=",".join(CORPUS))
    ap.add_argument("--session-option", action="append", default=[])
    a = ap.parse_args()
    options = parse_session_options(a.session_option)
    print(f"load before: {os.getloadavg()[0]:.2f}; threads {a.threads}; options {options or 'default'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wnc-corpus-lat-") as tmp:
        for model_id in a.models.split(","):
            path = fetch(model_id)
            model = load_model(path)
            feeds = verify_inputs(model_id) or random_inputs(model, SIZES.get(model_id), seed=0)
            shapes = {k: tuple(v.shape) for k, v in feeds.items() if v.ndim and all(v.shape)}
            out = {}
            variants = (("passes", {"include": "(?!)"}), ("defaults", {}), ("latency", {"latency_aware": True}))
            for name, extra in variants:
                small, rep = compress(path, input_shapes=shapes, threads=a.threads, session_options=options, **extra)
                p = Path(tmp) / f"{model_id}.{name}.onnx"
                onnx.save(small, p)
                out[name] = (p, rep)
            res = measure(
                [path, out["passes"][0], out["defaults"][0], out["latency"][0]],
                BenchConfig(
                    threads=(a.threads,),
                    rounds=a.rounds,
                    memory=False,
                    inputs=feeds,
                    per_layer=True,
                    session_options=options,
                ),
            )
            slower = {}
            for comp in res.per_layer:
                key = comp.model.rsplit(".", 2)[-2]  # <model>.<variant>.onnx
                slower[key] = [
                    f"{x.layer} ({x.before_ms:.3f}->{x.after_ms:.3f} ms)"
                    for x in comp.layers
                    if x.clearly_slower(SLOWER, SLOWER_MS)
                ]
            row = {
                "model": model_id,
                "original_ms": res.runs[0].median_ms,
                "passes": res.runs[1].speedup,
                "defaults": res.runs[2].speedup,
                "defaults_range": res.runs[2].speedup_range,
                "latency": res.runs[3].speedup,
                "latency_range": res.runs[3].speedup_range,
                "decomposed": (out["defaults"][1].totals.decomposed, out["latency"][1].totals.decomposed),
                "layers": out["defaults"][1].totals.layers,
                "slower_defaults": slower.get("defaults", []),
                "slower_latency": slower.get("latency", []),
            }
            rows.append(row)
            row["defaults_factoring"] = row["defaults"] / row["passes"]
            row["latency_factoring"] = row["latency"] / row["passes"]
            print(
                f"{model_id:16s} {row['original_ms']:8.2f} ms  passes x{row['passes']:.2f}  "
                f"defaults x{row['defaults']:.2f} "
                f"({len(row['slower_defaults'])} layers slower)  latency-aware x{row['latency']:.2f} "
                f"({len(row['slower_latency'])} slower: {'; '.join(row['slower_latency'][:3])})",
                flush=True,
            )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| model | original ms | passes only | defaults | factoring alone | layers slower | latency-aware "
        "| factoring alone | layers slower | decomposed (d / la) |"
    )
    print("|---|---:|---:|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        lo, hi = r["defaults_range"]
        lo2, hi2 = r["latency_range"]
        print(
            f"| {r['model']} | {r['original_ms']:.2f} | x{r['passes']:.2f} | x{r['defaults']:.2f} ({lo:.2f}-{hi:.2f}) "
            f"| x{r['defaults_factoring']:.2f} | {len(r['slower_defaults'])} "
            f"| x{r['latency']:.2f} ({lo2:.2f}-{hi2:.2f}) "
            f"| x{r['latency_factoring']:.2f} | {len(r['slower_latency'])} "
            f"| {r['decomposed'][0]} / {r['decomposed'][1]} of {r['layers']} |"
        )
    keys = ("passes", "defaults", "latency", "defaults_factoring", "latency_factoring")
    geo = {k: math.exp(sum(math.log(r[k]) for r in rows) / len(rows)) for k in keys}
    print(
        f"\ngeometric mean speed-up over the original: passes only x{geo['passes']:.3f}, defaults "
        f"x{geo['defaults']:.3f}, latency-aware x{geo['latency']:.3f}"
    )
    print(
        "geometric mean of the factoring alone (over the passes-only model): "
        f"defaults x{geo['defaults_factoring']:.3f}, latency-aware x{geo['latency_factoring']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
