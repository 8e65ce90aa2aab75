"""--calibration for the low-rank pass: which tensors to tap, and the moments per layer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from wnc_onnx.calibration import Tap, gather
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError
from wnc_onnx.passes.rules.base import attr_int

if TYPE_CHECKING:
    import onnx

    from wnc_onnx.passes.layer import Layer
    from wnc_onnx.passes.rules import Rule

log = logging.getLogger(__name__)
PROGRESS_EVERY = 10  # batches between progress lines
RULES = ("conv", "gemm", "matmul")  # flatten_gemm's taps are H x W positions with their own inputs: not modelled


def taps(layers: list[tuple[Layer, Rule | None]]) -> list[Tap]:
    out = []
    for layer, rule in layers:
        if rule is None or layer.skip or layer.rule not in RULES:
            continue
        node = layer.node
        if layer.rule == "matmul":
            right = layer.extra.get("side") == "right"
            out.append(Tap(layer.name, node.input[0] if right else node.input[1], -1 if right else -2))
        elif layer.rule == "gemm":
            if not attr_int(node, "transA", 0):
                out.append(Tap(layer.name, node.input[0], -1))
        else:
            out.append(Tap(layer.name, node.input[0], 1))
    return out


def calibrate(
    model: onnx.ModelProto, layers: list[tuple[Layer, Rule | None]], cfg: CompressConfig
) -> dict[str, np.ndarray]:
    """layer -> E[x x^T] of its input channels on the calibration data."""
    wanted = taps(layers)
    if not wanted:
        return {}

    def progress(batches: int, samples: int) -> None:
        if batches % PROGRESS_EVERY == 0:
            log.info("calibration: %d samples", samples)

    cal = gather(model, cfg.calibration, wanted, threads=cfg.threads, progress=progress)
    log.info("calibration: %d samples in %d batches, %.1fs", cal.samples, cal.batches, cal.seconds)
    short = cal.needed()
    if short:
        worst = max(short, key=lambda n: short[n])
        raise WncError(
            f"the calibration data are too few for the statistics of {len(short)} layer(s): '{worst}' reads "
            f"{short[worst]} features per position and got {cal.layers[worst].count} vectors",
            f"give at least {short[worst]} input vectors there (more samples), or leave those layers out "
            "with --exclude",
        )
    return {name: m.second for name, m in cal.layers.items()}
