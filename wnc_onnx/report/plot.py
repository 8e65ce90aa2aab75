"""PNG plots: a report's ranks and per-layer savings; a fine-tuning run's accuracy curve."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from wnc_onnx.errors import WncError
from wnc_onnx.io.model_io import atomic_path
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


def _legend_above(ax: Any, title: str, **kw: Any) -> None:
    """The title, and the legend between it and the axes: outside the data, so it never covers a bar."""
    ax.set_title(title, pad=26, **kw)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(4, len(handles)), fontsize=7, frameon=False)


def _short(name: str, limit: int = 40) -> str:
    """A layer name that fits a tick label: long exporter paths keep their informative end."""
    return name if len(name) <= limit else "..." + name[-(limit - 3) :]


def plot_report(report: Report, path: str | os.PathLike[str]) -> None:
    """Per layer, one row: channels and chosen ranks (left), weight and MAC reduction (right).

    Layers run down the page, so 100+ layers stay readable (the figure grows in height, at
    a fixed width); a MAC reduction that is not known (dynamic size) is not drawn, and the
    row says so."""
    plt = pyplot()
    _save(report_figure(report, plt), plt, path)


def report_figure(report: Report, plt: Any) -> Any:
    """The figure ``plot_report`` writes."""
    rows = [r for r in report.layers if r.status in ("decomposed", "planned")]
    if not rows:
        raise WncError("nothing to plot: no layer was decomposed", "drop --plot or change the rank options")
    n = len(rows)
    height = min(max(3.5, 0.22 * n + 1.6), 300.0)  # inches; matplotlib's limit is 2^16 pixels
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, height), sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(n))
    h = 0.2
    series = [
        ([r.S or 0 for r in rows], "S (in channels)", "#c6dbef", -1.5),
        ([r.ranks.get("R3", 0) for r in rows], "R3", "#2171b5", -0.5),
        ([r.T or 0 for r in rows], "T (out channels)", "#fdd0a2", 0.5),
        ([r.ranks.get("R4", r.ranks.get("R", 0)) for r in rows], "R4 / R", "#d94801", 1.5),
    ]
    for values, label, color, offset in series:
        keep = [(i + offset * h, v) for i, v in zip(y, values, strict=True) if v]
        if keep:
            ax1.barh([k[0] for k in keep], [k[1] for k in keep], h, label=label, color=color)
    ax1.set_xscale("log")
    ax1.set_xlabel("channels / rank (per group, log scale)")
    _legend_above(ax1, "Chosen ranks per layer")
    ax1.set_yticks(y)
    ax1.set_yticklabels([_short(r.name) for r in rows], fontsize=7 if n > 40 else 8)
    ax1.set_ylim(n - 0.5, -0.5)  # first layer on top
    weights = [r.params_ratio for r in rows]
    macs = [r.macs_ratio for r in rows]
    ax2.barh(
        [i - 0.2 for i, v in zip(y, weights, strict=True) if v],
        [v for v in weights if v],
        0.4,
        label="weights",
        color="#6baed6",
    )
    known = [(i + 0.2, v) for i, v in zip(y, macs, strict=True) if v]
    if known:
        ax2.barh([k[0] for k in known], [k[1] for k in known], 0.4, label="MACs", color="#fd8d3c")
        for i, v in zip(y, macs, strict=True):
            if v is None:  # some known, this one not: say so on its row rather than draw nothing
                ax2.text(1.02, i + 0.2, "MACs unknown", va="center", fontsize=6, color="#999999")
    ax2.axvline(1.0, color="k", lw=0.8)
    ax2.set_xlabel("reduction (x, original / compressed)")
    _legend_above(ax2, "Per-layer reduction")
    unknown = sum(v is None for v in macs)
    if unknown:
        hint = " ".join(f"--input-shape {h}" for h in report.model.get("dynamic_inputs") or [])
        note = f"MACs unknown for {unknown} of {n} layers (dynamic sizes)" + (f": give {hint}" if hint else "")
        fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="#666666")
    fig.tight_layout(rect=(0, 0.02 if unknown else 0, 1, 1))
    return fig


def plot_history(history: History, path: str | os.PathLike[str]) -> None:
    """Validation accuracy (or loss) per epoch, from 0 (compressed, not yet tuned), like the paper's Fig. 4."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [e.epoch for e in history.epochs]
    acc = [(0, history.initial_val_accuracy)] + [(e.epoch, e.val_accuracy) for e in history.epochs]
    points = [(x, 100 * a) for x, a in acc if a is not None]
    if points:
        ax1.plot(*zip(*points, strict=True), "o-", color="#2171b5", label="fine-tuned (validation)")
        pq = [(0, history.initial_pq_val_accuracy)] + [(e.epoch, e.pq_val_accuracy) for e in history.epochs]
        pq_points = [(x, 100 * a) for x, a in pq if a is not None]
        if pq_points:  # --pq-lambda: the model as it would be exported, product-quantized
            ax1.plot(*zip(*pq_points, strict=True), "D--", color="#238b45", label="product-quantized (validation)")
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


def plot_layer_times(comparisons: list[Any], path: str | os.PathLike[str]) -> None:
    """Per layer, one row: the baseline's time and the compressed model's (its parts stacked),
    slower layers marked; one panel per compared model. Rows run down the page."""
    plt = pyplot()
    _save(layer_times_figure(comparisons, plt), plt, path)


def layer_times_figure(comparisons: list[Any], plt: Any) -> Any:
    """The figure ``plot_layer_times`` writes."""
    comps = [c for c in comparisons if c.layers]
    if not comps:
        raise WncError("nothing to plot: no layer was profiled", "pass two models to 'wnc-onnx bench --per-layer'")
    n = max(len(c.layers) for c in comps)
    height = min(max(3.5, 0.24 * n + 1.8), 300.0)
    fig, axes = plt.subplots(1, len(comps), figsize=(7 * len(comps) + 2, height), squeeze=False)
    palette = ["#fd8d3c", "#31a354", "#756bb1", "#e6550d", "#636363", "#fdae6b", "#a1d99b", "#bcbddc"]
    for ax, c in zip(axes[0], comps, strict=True):
        rows = c.layers
        y = list(range(len(rows)))
        ax.barh([i - 0.2 for i in y], [r.before_ms for r in rows], 0.4, color="#6baed6", label=c.baseline)
        roles: list[str] = []
        for r in rows:
            for role, _ in r.parts:
                if role not in roles:
                    roles.append(role)
        left = [0.0] * len(rows)
        for k, role in enumerate(roles):
            values = [dict((a, b) for a, b in r.parts).get(role, 0.0) for r in rows]
            ax.barh(
                [i + 0.2 for i in y],
                values,
                0.4,
                left=left,
                color=palette[k % len(palette)],
                label=f"{c.model}: {role}" if k < 6 else None,
            )
            left = [a + b for a, b in zip(left, values, strict=True)]
        for i, r in enumerate(rows):
            sp = r.speedup
            text = f"x{sp:.2f}" if sp else "-"
            if r.macs_ratio:
                text += f" (MACs x{r.macs_ratio:.2f})"
            ax.text(
                max(r.before_ms, r.after_ms) * 1.02,
                i,
                text,
                va="center",
                fontsize=7,
                color="#cb181d" if sp is not None and sp < 1 else "#333333",
            )
        ax.set_yticks(y)
        ax.set_yticklabels([_short(r.layer) for r in rows], fontsize=7 if len(rows) > 40 else 8)
        for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
            if r.speedup is not None and r.speedup < 1:
                tick.set_color("#cb181d")
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("kernel time per run (ms, median)")
        _legend_above(ax, f"{c.model} vs {c.baseline}, {c.threads} thread(s); slower layers first, in red", fontsize=9)
        ax.margins(x=0.25)
    fig.tight_layout()
    return fig
