"""What `wnc-onnx bench` adds to the time it measures, and how well two runs agree.

    python benchmarks/bench_overhead.py [--image 112] [--threads 1] [--repeats 2]

A VGG-16 (planted weights, compressed with the defaults) over 10 ms per run:
- overhead: bench's median per run against a bare loop of ``session.run`` timed as a
  whole (total / runs), interleaved in rounds, same sessions options;
- agreement: the original/compressed speed-up of ``--repeats`` complete bench runs.
Targets (issue 10): overhead under 5% for models over 10 ms; runs agree within 5% on a
quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wnc_onnx import compress  # noqa: E402
from wnc_onnx.bench import BenchConfig, measure  # noqa: E402
from wnc_onnx.data.feeds import random_inputs  # noqa: E402
from wnc_onnx.io.session import session  # noqa: E402
from wnc_onnx.zoo import vgg16  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=int, default=112)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f}; threads {a.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        model = vgg16(image=a.image)
        small, _ = compress(model, threads=1)
        pa, pb = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"
        onnx.save(model, pa)
        onnx.save(small, pb)
        cfg = BenchConfig(threads=(a.threads,), rounds=a.rounds, memory=False)
        ratios = []
        for k in range(a.repeats):
            res = measure([pa, pb], cfg)
            ratios.append(res.runs[1].speedup)
            print(
                f"bench run {k + 1}: original {res.runs[0].median_ms:.2f} ms (spread {res.runs[0].spread:.1%}), "
                f"compressed {res.runs[1].median_ms:.2f} ms, x{res.runs[1].speedup:.3f}"
            )
        spread = (max(ratios) - min(ratios)) / float(np.median(ratios))
        print(f"agreement: speed-ups {', '.join(f'{r:.3f}' for r in ratios)}: differ by {spread:.1%} (target < 5%)")
        # overhead: the bench median vs a bare loop, interleaved over rounds
        s = session(pa, threads=a.threads)
        feeds = random_inputs(model, {})
        for _ in range(5):
            s.run(None, feeds)
        bare, bench = [], []
        for _ in range(a.rounds):
            n = 10
            t0 = time.perf_counter()
            for _ in range(n):
                s.run(None, feeds)
            bare.append((time.perf_counter() - t0) / n)
            res = measure([pa], BenchConfig(threads=(a.threads,), rounds=2, warmup=1, memory=False))
            bench.append(res.runs[0].median_ms / 1e3)
        b, m = float(np.median(bare)), float(np.median(bench))
        print(
            f"overhead: bare loop {b * 1e3:.2f} ms/run, bench median {m * 1e3:.2f} ms/run: "
            f"{m / b - 1:+.1%} (target < 5%)"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
