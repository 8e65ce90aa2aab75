"""Calibration-aware compression on real third-party exports: output error on held-out inputs.

    python benchmarks/calibration_corpus.py [--models ppocr_cls,ppocr_det,yolov8n_nudenet]
        [--calibration 64 --held-out 32 --scales 0.5,1,2 --max-error 0.05 --plot docs/calibration_corpus.png]

Inputs are real photographs: random crops (resized to the model's input) of the two
photos scikit-learn ships (``load_sample_images``), the first N for calibration, the next
ones held out, never seen by the statistics or the rank choice. For each model of
tests/corpus.py it compresses at EVBMF's ranks scaled by each ``--scales`` factor without
data and with ``--calibration`` (the same ranks, so the same MACs), and with
``--max-error``; the error is the worst output error on the held-out inputs as ``--verify``
measures it. Prints a markdown table and plots error against MACs reduction.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# model -> (input size (C, H, W), pixel scaling (mean, std) after / 255)
MODELS = {
    "ppocr_cls": ((3, 48, 192), (0.5, 0.5)),
    "ppocr_det": ((3, 128, 128), (0.45, 0.225)),
    "ppocr_rec": ((3, 48, 320), (0.5, 0.5)),
    "yolov8n_nudenet": ((3, 320, 320), (0.0, 1.0)),
}


def photo_crops(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """n crops of the sklearn sample photos, resized to (H, W), as float (n, C, H, W) in [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    c, h, w = shape
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        scale = rng.uniform(0.3, 1.0)
        ch = int(min(img.shape[0], img.shape[1] * h / w) * scale)
        cw = int(ch * w / h)
        y, x = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        crop = Image.fromarray(img[y : y + ch, x : x + cw]).resize((w, h), Image.Resampling.BILINEAR)
        out[i] = np.asarray(crop, np.float32).transpose(2, 0, 1)[:c] / 255
    return out


def macs_ratio(rep) -> float:  # noqa: ANN001
    """The MACs reduction over the layers whose MACs are known (a dynamic reshape can hide one)."""
    t = rep.totals.to_dict()
    if t["macs_ratio"]:
        return float(t["macs_ratio"])
    return t["macs_known_before"] / t["macs_known_after"] if t.get("macs_known_after") else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ppocr_cls,ppocr_rec,yolov8n_nudenet")
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--held-out", type=int, default=32)
    ap.add_argument("--scales", default="0.5,1,2")
    ap.add_argument("--max-error", type=float, default=0.05)
    ap.add_argument("--plot", default=None, help="PNG: held-out error against MACs reduction")
    a = ap.parse_args()
    import wnc_onnx
    from tests.corpus import fetch
    from wnc_onnx.check.verify import verify
    from wnc_onnx.io.model_io import load_model
    from wnc_onnx.rewrite.budget import _scaled, _spec

    scales = [float(s) for s in a.scales.split(",")]
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    rows = []
    for model_id in a.models.split(","):
        shape, (mean, std) = MODELS[model_id]
        model = load_model(fetch(model_id))
        name = model.graph.input[0].name
        x = (photo_crops(a.calibration + a.held_out, shape, seed=0) - mean) / std
        cal = {name: x[: a.calibration]}
        held = {name: x[a.calibration :]}
        sizes = {name: [1, *shape]}
        batches = [{name: cal[name][i : i + 16]} for i in range(0, a.calibration, 16)]
        t0 = time.perf_counter()
        _, base = wnc_onnx.compress(model, input_shapes=sizes)
        start = {r.name: r for r in base.layers if r.status == "decomposed"}
        curves[model_id] = {"data-free": [], "calibrated": []}
        for scale in scales:
            ranks = {n: _spec(_scaled(r, scale)) for n, r in start.items()}
            errs, macs = [], 0.0
            for data in (None, batches):
                out, rep = wnc_onnx.compress(
                    model, input_shapes=sizes, ranks=ranks, include="^$" if not ranks else None, calibration=data
                )
                errs.append(verify(model, out, inputs=held).worst_rel)
                macs = macs_ratio(rep)
            curves[model_id]["data-free"].append((macs, errs[0]))
            curves[model_id]["calibrated"].append((macs, errs[1]))
            print(f"{model_id} x{scale:g} ranks: MACs x{macs:.2f}, held-out error {errs[0]:.4f} -> {errs[1]:.4f}")
            if scale == 1.0:
                rows.append([model_id, f"x{macs:.2f}", f"{errs[0]:.3f}", f"{errs[1]:.3f}", f"{errs[1] / errs[0]:.2f}"])
        out, rep = wnc_onnx.compress(model, input_shapes=sizes, calibration=batches, max_error=a.max_error)
        err = verify(model, out, inputs=held).worst_rel
        info = rep.extras["max_error"]
        rows[-1] += [
            f"x{macs_ratio(rep):.2f}",
            f"{info['measured']:.3f}",
            f"{err:.3f}",
            f"{time.perf_counter() - t0:.0f}",
        ]
        print(
            f"{model_id} --max-error {a.max_error}: MACs {rows[-1][5]}, "
            f"calibration {info['measured']:.4f}, held-out {err:.4f}"
        )
    print(
        f"\n| model | MACs (EVBMF ranks) | held-out error, data-free | calibrated | ratio | "
        f"--max-error {a.max_error:g}: MACs | error on calibration | held-out | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
        for ax, (model_id, c) in zip(axes[0], curves.items(), strict=True):
            for label, style in (("data-free", "o--"), ("calibrated", "s-")):
                pts = sorted(c[label])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            ax.axhline(a.max_error, color="grey", lw=0.8, ls=":")
            ax.set_yscale("log")
            ax.set_title(model_id)
            ax.set_xlabel("MACs reduction (x)")
            ax.set_ylabel("held-out output error")
            ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
