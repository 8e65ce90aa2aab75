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
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wnc_onnx  # noqa: E402

CONVS = [(1, 32), (32, 32), "M", (32, 64), (64, 64), "M"]


def train(seed: int, epochs: int):  # type: ignore[no-untyped-def]
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.3, random_state=seed, stratify=digits.target
    )
    layers: list[torch.nn.Module] = []
    for c in CONVS:
        layers += [torch.nn.MaxPool2d(2)] if c == "M" else [torch.nn.Conv2d(*c, 3, padding=1), torch.nn.ReLU()]
    net = torch.nn.Sequential(
        *layers, torch.nn.Flatten(), torch.nn.Linear(64 * 2 * 2, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net, x_te, y_te


def to_onnx(net) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """Write the trained Sequential as ONNX by hand (no exporter needed)."""
    nodes, inits, x = [], [], "image"
    for k, m in enumerate(net):
        name = type(m).__name__.lower() + str(k)
        y = f"{name}_out"
        if hasattr(m, "weight"):
            w = m.weight.detach().numpy()
            inits += [
                numpy_helper.from_array(w, f"{name}.weight"),
                numpy_helper.from_array(m.bias.detach().numpy(), f"{name}.bias"),
            ]
            if w.ndim == 4:
                nodes.append(
                    helper.make_node(
                        "Conv",
                        [x, f"{name}.weight", f"{name}.bias"],
                        [y],
                        name=name,
                        kernel_shape=[3, 3],
                        pads=[1, 1, 1, 1],
                    )
                )
            else:
                nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, transB=1))
        elif type(m).__name__ == "ReLU":
            nodes.append(helper.make_node("Relu", [x], [y], name=name))
        elif type(m).__name__ == "MaxPool2d":
            nodes.append(helper.make_node("MaxPool", [x], [y], name=name, kernel_shape=[2, 2], strides=[2, 2]))
        else:
            nodes.append(helper.make_node("Flatten", [x], [y], name=name, axis=1))
        x = y
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"image": x})[0].argmax(1) == y).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    grid = [(1, 0.0), (2, 0.0), (4, 0.0), (8, 0.0), (4, 0.25), (4, 0.5)]
    results: dict[tuple[int, float], list[tuple[float, float, float]]] = {g: [] for g in grid}
    base_acc = []
    for seed in range(a.seeds):
        net, x_te, y_te = train(seed, a.epochs)
        model = to_onnx(net)
        base = accuracy(model, x_te, y_te)
        base_acc.append(base)
        print(f"seed {seed}: original accuracy {base:.4f} on {len(y_te)} test digits")
        for min_rank, boost in grid:
            small, rep = wnc_onnx.compress(model, min_rank=min_rank, rank_boost=boost)
            t = rep.totals.to_dict()
            acc = accuracy(small, x_te, y_te)
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
