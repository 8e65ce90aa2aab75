"""k-means for product quantization: scipy, scikit-learn and faiss on an AlexNet fc6-sized weight.

    python benchmarks/pq_kmeans.py [--rows 4096 --cols 9216 --d 8 --k 256 --rounds 3 --threads 2]

Each backend fits k centroids on the same seeded sample of 256 * k sub-vectors (what
faiss trains on by default) from a k-means++ start where the library has one (faiss:
random), then every sub-vector is assigned. Backends run in interleaved rounds; the
median, min and max seconds per backend are printed with the relative error
||W - Q(W)|| / ||W||, and the whole ``product_quantize`` call the pass makes is timed too.
The weight: Gaussian noise on a rank-256 matrix (trained FC weights have decaying spectra;
no real fc6 ships in a wheel). Target (issue 11): under 30 s on this 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def weight(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.standard_normal((rows, 256)).astype(np.float32) @ rng.standard_normal((256, cols)).astype(np.float32)
    return (low / 16 + rng.standard_normal((rows, cols)).astype(np.float32)) * 0.01


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=9216)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(a.threads))
    import scipy.cluster.vq as vq
    from threadpoolctl import threadpool_limits

    from wnc_onnx.analyze.numeric.pq import SAMPLE_PER_CENTROID, kmeans, nearest, product_quantize, subvectors

    print(f"load before: {os.getloadavg()[0]:.2f}; threads {a.threads}; weight {a.rows}x{a.cols}, d={a.d}, k={a.k}")
    w = weight(a.rows, a.cols)
    x = subvectors(w, a.d).reshape(-1, a.d)
    rng = np.random.default_rng(0)
    sample = x[np.sort(rng.choice(len(x), SAMPLE_PER_CENTROID * a.k, replace=False))]
    norm = float(np.linalg.norm(x))

    def scipy_run() -> float:
        c, _ = vq.kmeans2(sample.astype(np.float64), a.k, iter=25, minit="++", seed=0)
        codes, _ = vq.vq(x, c.astype(np.float32))
        return float(np.linalg.norm(x - c.astype(np.float32)[codes])) / norm

    def lib_run(backend: str) -> float:
        c = kmeans(x, a.k, 0, backend)
        return float(np.linalg.norm(x - c[nearest(x, c)])) / norm

    def faiss_run() -> float:
        import faiss

        faiss.omp_set_num_threads(a.threads)
        fk = faiss.Kmeans(a.d, a.k, niter=25, seed=0, max_points_per_centroid=SAMPLE_PER_CENTROID)
        fk.train(sample)
        _, idx = fk.index.search(x, 1)
        return float(np.linalg.norm(x - fk.centroids[idx[:, 0]])) / norm

    runs = {
        "scipy kmeans2 (++) + vq": scipy_run,
        "scikit-learn KMeans (++) + pairwise argmin": lambda: lib_run("sklearn"),
        "wnc_onnx product_quantize (sklearn)": lambda: product_quantize(w, a.d, a.k).rel_error,
    }
    try:
        import faiss  # noqa: F401

        runs["faiss Kmeans + IndexFlatL2 search"] = faiss_run
        runs["wnc_onnx product_quantize (faiss)"] = lambda: product_quantize(w, a.d, a.k, backend="faiss").rel_error
    except ImportError:
        print("faiss not installed (pip install faiss-cpu): its rows are left out")
    times: dict[str, list[float]] = {n: [] for n in runs}
    errors: dict[str, float] = {}
    with threadpool_limits(a.threads):
        for r in range(a.rounds):
            order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
            for name in order:
                t0 = time.perf_counter()
                errors[name] = runs[name]()
                times[name].append(time.perf_counter() - t0)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print("| k-means | seconds (median) | min | max | relative error |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | {errors[name]:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
