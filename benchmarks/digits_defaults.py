"""How the rank defaults trade accuracy for size on a real trained CNN (no fine-tuning).

Trains a small VGG-style CNN on scikit-learn's bundled 8x8 handwritten digits (real
data, no download) with PyTorch, writes it as ONNX, then compresses it with a grid of
--min-rank / --rank-boost settings and measures test accuracy in ONNX Runtime.

    pip install torch==2.13.0 scikit-learn
    python benchmarks/digits_defaults.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import digits_cnn  # noqa: E402

import wnc_onnx  # noqa: E402


def trained(seed: int, epochs: int) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The digits CNN of examples/digits_cnn.py, trained with PyTorch on 70% of the digits; test split."""
    import torch

    torch.set_num_threads(2)
    x_tr, y_tr, x_te, y_te = digits_cnn.load("digits", seed=seed, test_size=0.3)
    net = digits_cnn.train(digits_cnn.build("digits"), x_tr, y_tr, epochs, seed=seed)
    return digits_cnn.to_onnx(net, 8), x_te, y_te


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    grid = [(1, 0.0), (2, 0.0), (4, 0.0), (8, 0.0), (4, 0.25), (4, 0.5)]
    results: dict[tuple[int, float], list[tuple[float, float, float]]] = {g: [] for g in grid}
    base_acc = []
    for seed in range(a.seeds):
        model, x_te, y_te = trained(seed, a.epochs)
        base = digits_cnn.accuracy(model, x_te, y_te)
        base_acc.append(base)
        print(f"seed {seed}: original accuracy {base:.4f} on {len(y_te)} test digits")
        for min_rank, boost in grid:
            small, rep = wnc_onnx.compress(model, min_rank=min_rank, rank_boost=boost)
            t = rep.totals.to_dict()
            acc = digits_cnn.accuracy(small, x_te, y_te)
            results[(min_rank, boost)].append((acc, t["macs_ratio"] or 1.0, t["params_ratio"] or 1.0))
            ranks = " ".join(f"{r.name}:{'/'.join(str(v) for v in r.ranks.values()) or '-'}" for r in rep.layers)
            vb = " ".join(f"{r.name}:{'/'.join(str(v) for v in r.vbmf_ranks.values()) or '-'}" for r in rep.layers)
            if min_rank == 1 and boost == 0.0:
                print(f"  VBMF ranks: {vb}")
            print(
                f"  --min-rank {min_rank} --rank-boost {boost:<4}: acc {acc:.4f}  MACs x{t['macs_ratio']:.2f}  "
                f"weights x{t['params_ratio']:.2f}  ranks {ranks}"
            )
    print(f"\nmean over {a.seeds} seeds (original accuracy {np.mean(base_acc):.4f}), before any fine-tuning:")
    print("| --min-rank | --rank-boost | accuracy | drop (points) | MACs reduction | weights reduction |")
    print("|---|---|---|---|---|---|")
    for (min_rank, boost), rows in results.items():
        acc, macs, params = (float(np.mean([r[i] for r in rows])) for i in range(3))
        print(
            f"| {min_rank} | {boost} | {acc:.4f} | {100 * (np.mean(base_acc) - acc):.1f} | x{macs:.2f} | "
            f"x{params:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
