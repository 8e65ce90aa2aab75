"""Product quantization: file size, load time, inference speed and memory, side by side.

    python benchmarks/pq_speed.py [--threads 2 --rounds 10 --load-rounds 5]

The AlexNet classifier (fc6 9216->4096, fc7 4096->4096, fc8 4096->1000, planted weights:
Gaussian noise on rank 256) is written as ONNX and product-quantized with the defaults
(``compress --pq --no-lowrank``: d=8, k=256, one codebook per layer). Both files are then
measured by ``wnc-onnx bench`` (interleaved rounds, spread, peak memory of a session) and
their session creation times in interleaved rounds: onnxruntime rebuilds the quantized
weights at load (constant folding), so PQ costs load time, not inference time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def alexnet_fc() -> object:
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.pq_kmeans import weight

    sizes = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]
    nodes, inits, x = [], [], "features"
    for i, (name, cin, cout) in enumerate(sizes):
        inits += [
            numpy_helper.from_array(weight(cout, cin, seed=i), f"{name}.weight"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"),
        ]
        y = "logits" if name == "fc8" else f"{name}_out"
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, transB=1))
        if name != "fc8":
            nodes.append(helper.make_node("Relu", [y], [f"{name}_relu"], name=f"{name}_relu"))
            y = f"{name}_relu"
        x = y
    graph = helper.make_graph(
        nodes,
        "alexnet_fc",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 9216])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--load-rounds", type=int, default=5)
    a = ap.parse_args()
    from wnc_onnx import compress
    from wnc_onnx.bench import BenchConfig, measure
    from wnc_onnx.io.model_io import save_model
    from wnc_onnx.io.session import session

    print(f"load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        orig, pq = Path(tmp) / "alexnet_fc.onnx", Path(tmp) / "alexnet_fc.pq.onnx"
        save_model(alexnet_fc(), orig)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        model, report = compress(str(orig), pq=True, lowrank=False, threads=a.threads)
        seconds = time.perf_counter() - t0
        save_model(model, pq)
        t = report.extras["pq"]["totals"]
        print(
            f"compress --pq --no-lowrank: {seconds:.1f} s; quantized weights {t['bytes_before'] / 1e6:.1f} MB -> "
            f"{t['bytes_after'] / 1e6:.2f} MB (x{t['ratio']:.1f}); file {orig.stat().st_size / 1e6:.1f} MB -> "
            f"{pq.stat().st_size / 1e6:.2f} MB (x{orig.stat().st_size / pq.stat().st_size:.1f})"
        )
        for w in report.extras["pq"]["weights"]:
            print(
                f"  {w['weight']}: {w['bits_per_weight']:.3f} bits/weight, error {w['rel_error']:.4f}, {w['seconds']} s"
            )
        loads: dict[str, list[float]] = {"original": [], "pq": []}
        for r in range(a.load_rounds):
            for label, path in (("original", orig), ("pq", pq))[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                session(str(path), "CPUExecutionProvider", a.threads)
                loads[label].append(time.perf_counter() - t0)
        for label, ts in loads.items():
            print(
                f"session creation, {label}: median {statistics.median(ts):.3f} s "
                f"(min {min(ts):.3f}, max {max(ts):.3f})"
            )
        result = measure([str(orig), str(pq)], BenchConfig(threads=(a.threads,), rounds=a.rounds))
        print(result.to_table())
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
