"""PNG plots of a report: chosen ranks against channel counts, per-layer savings."""

from __future__ import annotations

import os

from wnc_onnx.errors import WncError
from wnc_onnx.model_io import atomic_path
from wnc_onnx.report import Report


def plot_report(report: Report, path: str | os.PathLike[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise WncError("--plot needs matplotlib", "pip install 'wnc-onnx[plot]'") from None
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
