"""PNG plots: a report's ranks and per-layer savings; a fine-tuning run's accuracy curve."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from wnc_onnx.errors import WncError
from wnc_onnx.model_io import atomic_path
from wnc_onnx.report import Report

if TYPE_CHECKING:
    from wnc_onnx.finetune.history import History


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise WncError("--plot needs matplotlib", "pip install 'wnc-onnx[plot]'") from None
    return plt


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_report(report: Report, path: str | os.PathLike[str]) -> None:
    plt = pyplot()
    rows = [r for r in report.layers if r.status in ("decomposed", "planned")]
    if not rows:
        raise WncError("nothing to plot: no layer was decomposed", "drop --plot or change the rank options")
    names = [r.name for r in rows]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.6 * len(rows) + 2), 7), sharex=True)
    w = 0.2
    ax1.bar([i - 1.5 * w for i in x], [r.S or 0 for r in rows], w, label="S (in channels)", color="#c6dbef")
    ax1.bar([i - 0.5 * w for i in x], [r.ranks.get("R3", 0) for r in rows], w, label="R3", color="#2171b5")
    ax1.bar([i + 0.5 * w for i in x], [r.T or 0 for r in rows], w, label="T (out channels)", color="#fdd0a2")
    ax1.bar(
        [i + 1.5 * w for i in x],
        [r.ranks.get("R4", r.ranks.get("R", 0)) for r in rows],
        w,
        label="R4 / R",
        color="#d94801",
    )
    ax1.set_ylabel("channels / rank")
    ax1.set_yscale("log")
    top = max(max(r.S or 1, r.T or 1) for r in rows)
    ax1.set_ylim(1, top * 8)  # headroom for the legend
    ax1.set_title("Chosen ranks per layer (per group)")
    ax1.legend(fontsize=8, ncol=4)
    ax2.bar([i - 0.2 for i in x], [r.params_ratio or 1.0 for r in rows], 0.4, label="weights", color="#6baed6")
    ax2.bar([i + 0.2 for i in x], [r.macs_ratio or 1.0 for r in rows], 0.4, label="MACs", color="#fd8d3c")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_ylabel("reduction (x)")
    ax2.set_title("Per-layer reduction")
    ax2.legend(fontsize=8)
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    _save(fig, plt, path)


def plot_history(history: History, path: str | os.PathLike[str]) -> None:
    """Validation accuracy (or loss) per epoch, from 0 (compressed, not yet tuned), like the paper's Fig. 4."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [e.epoch for e in history.epochs]
    acc = [(0, history.initial_val_accuracy)] + [(e.epoch, e.val_accuracy) for e in history.epochs]
    points = [(x, 100 * a) for x, a in acc if a is not None]
    if points:
        ax1.plot(*zip(*points, strict=True), "o-", color="#2171b5", label="fine-tuned (validation)")
        if history.reference_val_accuracy is not None:
            ax1.axhline(100 * history.reference_val_accuracy, color="k", ls="--", lw=1, label="original model")
        ax1.set_ylabel("validation accuracy (%)")
        ax1.legend(loc="lower right", fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no validation accuracy\n(no --val, or not a classifier)", ha="center", va="center")
    ax1.set_xlabel("epoch (0: compressed, before fine-tuning)")
    ax1.set_title("Accuracy recovery")
    ax2.plot(epochs, [e.train_loss for e in history.epochs], "o-", color="#d94801", label="train")
    val = [(0, history.initial_val_loss)] + [(e.epoch, e.val_loss) for e in history.epochs]
    val_points = [(x, v) for x, v in val if v is not None]
    if val_points:
        ax2.plot(*zip(*val_points, strict=True), "s-", color="#6baed6", label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("loss")
    ax2.set_yscale("log")
    ax2.set_title("Loss")
    ax2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for resumed in history.resumed_at:
            ax.axvline(resumed + 0.5, color="#999999", ls=":", lw=1)
    fig.tight_layout()
    _save(fig, plt, path)
