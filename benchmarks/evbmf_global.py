"""EVBMF noise estimate: the global piecewise search against brute force and a single Brent search.

    python benchmarks/evbmf_global.py [--models yolov8n_nudenet ppocr_det ...] [--grid 20000]

For every spatial conv kernel of the real models in the test corpus (both channel-mode
matricizations, BatchNorm folded in as the pass does), it compares three ways to find
the noise variance:

- ``global``: wnc-onnx's solver (split at the bends, derivative roots per piece);
- ``brent``: what wnc-onnx did before: one bounded Brent search over the whole interval,
  with the usual shortcut tau_bar = 2.5129 sqrt(alpha) (the usual public EVBMF port does
  the same, there with an even coarser tolerance);
- ``brute``: a dense log grid refined around its best points (tests/evbmf_reference.py).

It prints, per model, how many matricizations each method ranks differently from brute
force, the rank differences, whether the global solver's objective is ever above brute
force's, and the time per matrix.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

ROOT = Path(__file__).resolve().parents[1]


def brent_rank(sv: np.ndarray, shape: tuple[int, int]) -> int:
    """One bounded Brent search of the free energy over the whole admissible interval."""
    from tests.evbmf_reference import omega
    from wnc_onnx.analyze.numeric.vbmf import search_interval

    L, M = sorted(shape)
    s = np.sort(sv)[::-1][:L]
    s2 = s**2 / (np.sum(s**2) / (L * M))
    alpha = L / M
    tb = 2.5129 * math.sqrt(alpha)  # the shortcut: exact at alpha = 1 only
    x_bar = (1 + tb) * (1 + alpha / tb)
    lo, hi = search_interval(s2, L, M, 0.0, alpha, x_bar)
    res = minimize_scalar(
        lambda u: float(omega(u, s2, L, M, alpha, x_bar)[0]),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    best = min((res.x, math.log(lo), math.log(hi)), key=lambda u: float(omega(u, s2, L, M, alpha, x_bar)[0]))
    return int(np.sum(s2 > M * math.exp(best) * x_bar))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["yolov8n_nudenet", "ppocr_det", "centerface", "picodet_layout"])
    ap.add_argument("--grid", type=int, default=20000, help="brute-force grid points")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.evbmf_reference import brute_force, kernel_matricizations, omega_at
    from wnc_onnx.analyze.numeric.vbmf import evbmf_from_singular_values

    total = {"n": 0, "global": 0, "brent": 0}
    for model_id in a.models:
        mats = kernel_matricizations(model_id)
        if not mats:
            print(f"{model_id}: no spatial conv with more than 4 input channels")
            continue
        wrong = {"global": [], "brent": []}
        seconds, worse = [], 0
        for name, y in mats:
            sv = np.linalg.svd(y, compute_uv=False)
            t0 = time.perf_counter()
            found = evbmf_from_singular_values(sv, y.shape)
            seconds.append(time.perf_counter() - t0)
            rank, _, best = brute_force(sv, y.shape, grid=a.grid)
            worse += omega_at(sv, y.shape, found.sigma2) > best + 1e-9 * abs(best)
            for method, r in (("global", found.rank), ("brent", brent_rank(sv, y.shape))):
                if r != rank:
                    wrong[method].append(f"{name} {y.shape[0]}x{y.shape[1]}: {r} vs {rank}")
        total["n"] += len(mats)
        total["global"] += len(wrong["global"])
        total["brent"] += len(wrong["brent"])
        print(
            f"{model_id}: {len(mats)} matricizations; ranks unlike brute force: global {len(wrong['global'])}, "
            f"brent {len(wrong['brent'])}; global objective above brute force: {worse}; "
            f"global solver {1000 * np.median(seconds):.1f} ms median, {1000 * max(seconds):.1f} ms max"
        )
        for line in wrong["brent"]:
            print(f"    brent {line}")
        for line in wrong["global"]:
            print(f"    GLOBAL {line}")
    print(f"all: {total['n']} matricizations; unlike brute force: global {total['global']}, brent {total['brent']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
