"""Runs ONNX models with onnxruntime and saves their outputs: the part of on_arm.py that
runs on the ARM side (an arm64 Python under qemu, or a real board). Needs only numpy and
onnxruntime, so it can run where wnc-onnx is not installed.

    python on_arm_runner.py OUT_DIR INPUTS.npz MODEL.onnx [MODEL.onnx ...] [--time N]

Writes OUT_DIR/<k>.npz (the outputs of the k-th model) and prints one JSON line: the
machine, onnxruntime's version and providers, and with --time N the latency of N runs
after 3 warm-up runs (only meaningful on real hardware).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort


def main(argv: list[str]) -> int:
    runs = 0
    if "--time" in argv:
        i = argv.index("--time")
        runs = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    out_dir, inputs, models = argv[0], argv[1], argv[2:]
    feeds = dict(np.load(inputs))
    result = {
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "models": [],
    }
    for k, path in enumerate(models):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        mine = {n: feeds[n] for n in names}
        outs = sess.run(None, mine)
        np.savez(
            os.path.join(out_dir, f"{k}.npz"), **{o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}
        )
        entry = {"model": path, "outputs": [o.name for o in sess.get_outputs()]}
        if runs:
            for _ in range(3):
                sess.run(None, mine)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, mine)
                times.append((time.perf_counter() - t0) * 1e3)
            entry["median_ms"] = float(np.median(times))
            entry["p90_ms"] = float(np.percentile(times, 90))
            entry["min_ms"] = float(np.min(times))
        result["models"].append(entry)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
