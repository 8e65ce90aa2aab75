"""Compression speed and peak memory on a VGG-16-shaped model (13 convs + 3 FC, 138M weights).

The model has planted structure (Tucker-2 kernels at Kim et al.'s Table 5 ranks plus
noise): i.i.d. random weights look like pure noise to EVBMF and nothing would be
decomposed. Every layer must come out decomposed, or the run fails.

    python benchmarks/bench_vgg16.py [--baseline]

Each measurement runs in a fresh child process (peak RSS of that process alone).
``--baseline`` also times the usual recipe on the same convs, in the same run: EVBMF
on full SVDs of the matricizations plus tensorly's partial_tucker (needs tensorly).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import wnc_onnx
t0 = time.perf_counter()
model, report = wnc_onnx.compress(sys.argv[1], op_types=tuple(sys.argv[2].split(",")))
seconds = time.perf_counter() - t0
# VmHWM: this process's own peak (ru_maxrss would include the parent's peak at fork time)
rss = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "pass_seconds": sum(p["seconds"] for p in report.passes),
                  "peak_rss": rss, "layers": [
    {"name": r.name, "status": r.status, "reason": r.reason, "ranks": r.ranks, "seconds": r.seconds}
    for r in report.layers], "totals": report.totals.to_dict()}))
"""

BASELINE = r"""
import sys, time, numpy as np, onnx
from onnx import numpy_helper
import tensorly as tl
from tensorly.decomposition import partial_tucker
from wnc_onnx.analyze.numeric.vbmf import evbmf_from_singular_values
model = onnx.load(sys.argv[1])
t0 = time.perf_counter()
for init in model.graph.initializer:
    w = numpy_helper.to_array(init)
    if w.ndim != 4 or w.shape[1] <= 3:
        continue
    ranks = []
    for mode in (0, 1):
        m = np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1).astype(np.float64)
        s = np.linalg.svd(m, compute_uv=False)   # the recipe: a full SVD per matricization
        ranks.append(max(1, evbmf_from_singular_values(s, m.shape).rank))
    partial_tucker(tl.tensor(w), rank=[ranks[0], ranks[1]], modes=[0, 1], init="svd")
print(time.perf_counter() - t0)
"""


def child(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"benchmark child failed:\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", action="store_true", help="also time EVBMF(full SVD) + tensorly partial_tucker")
    ap.add_argument("--json", help="write the figures as JSON")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnx

    from wnc_onnx import zoo

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg16_planted.onnx"
        t0 = time.perf_counter()
        onnx.save(zoo.vgg16(), path)
        size = path.stat().st_size
        print(
            f"built VGG-16-shaped model: {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s ({os.cpu_count()} CPUs)"
        )
        figures: dict[str, object] = {"model_bytes": size, "cpus": os.cpu_count()}
        for label, ops, target in (("convs", "Conv", 5.0), ("convs+fc", "Conv,Gemm,MatMul", 20.0)):
            res = json.loads(child(CHILD, str(path), ops))
            bad = [
                r
                for r in res["layers"]
                if r["status"] != "decomposed" and (ops != "Conv" or r["name"].startswith("conv"))
            ]
            if bad:
                sys.exit(f"not every layer was decomposed: {bad}")
            ratio = res["peak_rss"] / size
            n = sum(r["status"] == "decomposed" for r in res["layers"])
            print(
                f"{label:9s}: {n:2d} layers decomposed in {res['pass_seconds']:6.2f}s (target < {target:.0f}s; "
                f"{res['seconds']:.2f}s with loading and checks), "
                f"peak RSS {res['peak_rss'] / 1e6:.0f} MB = {ratio:.2f}x model (target < 3x)"
            )
            slow = sorted(res["layers"], key=lambda r: -r["seconds"])[:3]
            print("           slowest: " + ", ".join(f"{r['name']} {r['seconds']:.2f}s" for r in slow))
            figures[label] = {
                "seconds": res["seconds"],
                "pass_seconds": res["pass_seconds"],
                "peak_rss": res["peak_rss"],
                "rss_ratio": ratio,
                "macs_ratio": res["totals"]["macs_ratio"],
                "params_ratio": res["totals"]["params_ratio"],
            }
        if a.baseline:
            base = float(child(BASELINE, str(path)))
            ours = figures["convs"]["pass_seconds"]  # type: ignore[index]
            print(
                f"baseline : EVBMF(full SVD) + tensorly partial_tucker on the 12 Tucker-2 convs: {base:.2f}s; "
                f"wnc-onnx all 13 convs {ours:.2f}s -> {base / ours:.1f}x faster"
            )
            figures["baseline_seconds"] = base
        if a.json:
            Path(a.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
