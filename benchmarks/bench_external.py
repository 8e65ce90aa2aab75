"""Peak memory and wall time on a model above protobuf's 2 GB limit (external data).

Builds, layer by layer and without ever holding it in memory, a synthetic CNN of
1024-channel 3x3 convolutions (planted Tucker-2 structure plus noise, so EVBMF finds
ranks) whose weights total at least 2 GB in one external data file, then runs
``wnc_onnx.compress`` + ``save_model`` on it in a fresh child process and reports
that process's peak RSS next to the model size and the largest layer. For
comparison, a second child only loads the model the usual way
(``onnx.load``, which reads all external data into memory).

    python benchmarks/bench_external.py [--layers 58] [--keep DIR]

Target (issue 3): peak RSS under 1 GB for a model of at least 2 GB.
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

import numpy as np
import onnx
from onnx import TensorProto, helper

from wnc_onnx.zoo import planted_kernel

ROOT = Path(__file__).resolve().parents[1]
C, HW, K = 1024, 7, 3  # channels, spatial size, kernel size
ALIGN = 4096

COMPRESS = r"""
import json, sys, time
import wnc_onnx
t0 = time.perf_counter()
model, report = wnc_onnx.compress(sys.argv[1])
t1 = time.perf_counter()
written = wnc_onnx.save_model(model, sys.argv[2])
t2 = time.perf_counter()
rss = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(json.dumps({"compress_s": t1 - t0, "save_s": t2 - t1, "peak_rss": rss, "written": written,
                  "decomposed": report.totals.decomposed, "layers": report.totals.layers,
                  "params": [report.totals.params_before, report.totals.params_after],
                  "macs": [report.totals.macs_before, report.totals.macs_after]}))
"""

LOAD = r"""
import json, sys, time, onnx
t0 = time.perf_counter()
onnx.load(sys.argv[1])
rss = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": rss}))
"""


def build(folder: Path, layers: int, seed: int = 0) -> tuple[Path, int, int]:
    """Write model.onnx + model.onnx.data; returns (path, data bytes, largest tensor bytes)."""
    rng = np.random.default_rng(seed)
    data_name = "model.onnx.data"
    inits, nodes = [], []
    largest = 0
    x = "x"
    with open(folder / data_name, "wb") as fh:

        def put(name: str, arr: np.ndarray) -> None:
            nonlocal largest
            fh.write(b"\0" * ((-fh.tell()) % ALIGN))
            offset = fh.tell()
            raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
            fh.write(raw)
            largest = max(largest, len(raw))
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape))
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", len(raw))):
                e = t.external_data.add()
                e.key, e.value = key, str(value)
            inits.append(t)

        for i in range(layers):
            r3, r4 = int(rng.integers(160, 320)), int(rng.integers(160, 320))
            put(f"conv{i}.weight", planted_kernel(rng, C, C, (K, K), r3, r4))
            put(f"conv{i}.bias", np.zeros(C, np.float32))
            y = f"conv{i}_out"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, f"conv{i}.weight", f"conv{i}.bias"],
                    [y],
                    name=f"conv{i}",
                    kernel_shape=[K, K],
                    pads=[1] * 4,
                )
            )
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
        put("fc.weight", planted_kernel(rng, 1000, C, (), None, 200).reshape(1000, C))
        put("fc.bias", np.zeros(1000, np.float32))
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
        nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
        nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
        size = fh.tell()
    graph = helper.make_graph(
        nodes,
        "wide_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, HW, HW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))  # tensors are already external: only the graph is written
    return path, size, largest


def child(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=58, help="1024x1024x3x3 convs (58: 2.2 GB of weights)")
    ap.add_argument("--keep", metavar="DIR", help="build in DIR and keep the files")
    ap.add_argument("--no-load-baseline", action="store_true", help="skip the onnx.load comparison")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wnc-bench-ext-") as tmp:
        folder = Path(a.keep) if a.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path, size, largest = build(folder, a.layers)
        print(
            f"built {path}: {size / 1e9:.2f} GB of weights in {a.layers + 1} layers, "
            f"largest tensor {largest / 1e6:.1f} MB ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        out = folder / "model.small.onnx"
        t0 = time.perf_counter()
        r = child(COMPRESS, str(path), str(out))
        wall = time.perf_counter() - t0
        print(
            f"compress + save: {wall:.1f} s wall (compress {r['compress_s']:.1f} s, save {r['save_s']:.1f} s), "
            f"{r['decomposed']}/{r['layers']} layers decomposed"
        )
        print(
            f"  weights {r['params'][0] / 1e6:.0f}M -> {r['params'][1] / 1e6:.0f}M "
            f"(x{r['params'][0] / r['params'][1]:.2f}), written {r['written'] / 1e9:.3f} GB"
        )
        gb = 1e9
        print(
            f"  peak RSS {r['peak_rss'] / gb:.3f} GB = {r['peak_rss'] / size:.3f}x the model, "
            f"{r['peak_rss'] / largest:.1f}x the largest tensor (target: < 1 GB)"
        )
        if not a.no_load_baseline:
            b = child(LOAD, str(path))
            print(
                f"onnx.load alone, same model: peak RSS {b['peak_rss'] / gb:.3f} GB ({b['seconds']:.1f} s); "
                f"ratio to compress + save: {b['peak_rss'] / r['peak_rss']:.1f}x"
            )
        ok = r["peak_rss"] < 1e9 and size >= 2e9 and r["decomposed"] == r["layers"]
        print("target met" if ok else "TARGET MISSED")
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
