"""Calibration-aware compression on the trained digits CNN: accuracy before fine-tuning.

    .venv-train/bin/python benchmarks/calibration_digits.py [--seeds 3 --calibration 256]

Trains the CNN of examples/digits_cnn.py on scikit-learn's 8x8 digits as
benchmarks/digits_defaults.py does (70% train, 540 test digits), compresses it with the
default ranks without data and with ``--calibration`` (the first N training images, never
the test ones), and scores both on the test digits in onnxruntime. The ranks are the same
in both runs (EVBMF sees only the weights), so the MACs are equal. Prints per seed the
accuracy and each layer's modelled output error (data-aware and data-free), then the mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]

import digits_cnn  # noqa: E402

import wnc_onnx  # noqa: E402


def layer_output(model: onnx.ModelProto, tensor: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.ValueInfoProto(name=tensor)])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([tensor], {model.graph.input[0].name: x.astype(np.float32)})[0], dtype=np.float64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--calibration", type=int, default=256, help="training images used as calibration data")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows, layer_rows = [], []
    for seed in range(a.seeds):
        x_tr, y_tr, x_te, y_te = digits_cnn.load("digits", seed=seed, test_size=0.3)
        net = digits_cnn.train(digits_cnn.build("digits"), x_tr, y_tr, a.epochs, seed=seed)
        model = digits_cnn.to_onnx(net, 8)
        base = digits_cnn.accuracy(model, x_te, y_te)
        cal_x = [{model.graph.input[0].name: x_tr[: a.calibration].astype(np.float32)}]  # one batch
        plain, rep0 = wnc_onnx.compress(model)
        fitted, rep1 = wnc_onnx.compress(model, calibration=cal_x)
        acc0, acc1 = digits_cnn.accuracy(plain, x_te, y_te), digits_cnn.accuracy(fitted, x_te, y_te)
        macs0, macs1 = rep0.totals.to_dict()["macs_ratio"], rep1.totals.to_dict()["macs_ratio"]
        rows.append((base, acc0, acc1, macs0, macs1))
        print(
            f"seed {seed}: original {base:.4f}, data-free {acc0:.4f}, calibrated {acc1:.4f}, "
            f"MACs x{macs0:.2f} / x{macs1:.2f}"
        )
        for r in rep1.layers:
            if r.data_error is None or r.output_tensor is None:
                continue
            # the layer compressed alone: its real output error on the test digits, both fits
            errs = []
            for data in (None, cal_x):
                alone, _ = wnc_onnx.compress(model, include=f"^{r.name}$", calibration=data)
                ref, got = (layer_output(m, r.output_tensor, x_te) for m in (model, alone))
                errs.append(float(np.linalg.norm(ref - got) / np.linalg.norm(ref)))
            layer_rows.append(errs)
            print(
                f"  {r.name:<10} {r.method:<8} {r.ranks}: modelled output error {r.data_error:.3f} "
                f"(data-free {r.data_error_free:.3f}); alone, on the test digits {errs[1]:.3f} "
                f"(data-free {errs[0]:.3f})"
            )
    base, acc0, acc1, macs0, macs1 = (float(np.mean([r[i] for r in rows])) for i in range(5))
    print(f"\nmean over {a.seeds} seeds, {a.calibration} calibration images, before any fine-tuning:")
    print("| compression | accuracy | drop (points) | MACs reduction |")
    print("|---|---|---|---|")
    print(f"| original | {base:.2%} | | |")
    print(f"| defaults, data-free | {acc0:.2%} | {100 * (base - acc0):.2f} | x{macs0:.2f} |")
    print(f"| defaults, `--calibration` | {acc1:.2%} | {100 * (base - acc1):.2f} | x{macs1:.2f} |")
    free, fit = (float(np.mean([r[i] for r in layer_rows])) for i in range(2))
    print(
        f"\nconv layers compressed alone, output error on the test digits: data-free {free:.3f}, calibrated {fit:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
