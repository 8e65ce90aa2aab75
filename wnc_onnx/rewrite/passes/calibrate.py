"""--calibration for the low-rank pass: which tensors to tap, and the moments per layer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import onnx

from wnc_onnx.analyze.calibration import Reuse, Tap, Window, gather
from wnc_onnx.analyze.numeric.calibrated import PatchStats
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError
from wnc_onnx.rewrite.passes.rules.base import attr, attr_int, attr_ints

if TYPE_CHECKING:
    from wnc_onnx.analyze.graph import GraphContext
    from wnc_onnx.analyze.layer import Layer
    from wnc_onnx.rewrite.passes.rules import Rule

log = logging.getLogger(__name__)
PROGRESS_EVERY = 10  # batches between progress lines
RULES = ("conv", "flatten_gemm", "gemm", "matmul")


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
        elif layer.rule == "flatten_gemm":  # the map before the Flatten, read whole: one patch per sample
            nd = len(layer.spatial)
            whole = Window(layer.spatial, (1,) * nd, (0,) * 2 * nd, (1,) * nd)
            out.append(Tap(layer.name, str(layer.extra["source"]), 1, whole))
        else:
            nd = len(layer.spatial)
            window = Window(
                layer.spatial,
                tuple(attr_ints(node, "strides", [1] * nd)),
                tuple(attr_ints(node, "pads", [0] * 2 * nd)),
                tuple(attr_ints(node, "dilations", [1] * nd)),
                _auto_pad(node),
            )
            out.append(Tap(layer.name, node.input[0], 1, window))
    return out


def _auto_pad(node: onnx.NodeProto) -> str:
    value = attr(node, "auto_pad", "NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)


def shiftable(layer: Layer, ctx: GraphContext) -> bool:
    """Whether the rewrite may move the layer's bias (to remove the error of its inputs' mean):
    a Conv or Gemm with no bias or a constant one of one value per output channel; not MatMul."""
    if layer.rule not in ("conv", "gemm", "flatten_gemm"):
        return False
    node = layer.node
    if len(node.input) < 3 or not node.input[2]:
        return True
    bias = node.input[2]
    if ctx.constant_reason(bias) is not None:
        return False
    shape = ctx.array(bias).shape
    width = layer.t * layer.groups
    if layer.rule == "conv":
        return shape == (width,)
    return shape in ((), (1,), (width,), (1, 1), (1, width))


def calibrate(
    model: onnx.ModelProto,
    layers: list[tuple[Layer, Rule | None]],
    cfg: CompressConfig,
    reuse: Reuse | None,
    ctx: GraphContext,
    notes: list[str],
) -> dict[str, PatchStats]:
    """layer -> the mean and covariance of its input patches on the calibration data; each
    tapped layer's ``extra["shift_bias"]`` says whether its fit may move the bias. Layers the
    data are too few for are left out, with a line in ``notes``. ``reuse``: statistics gathered
    by an earlier run of the same flow (used, or filled in), or None to gather for this run only."""
    by_name = {layer.name: layer for layer, _ in layers}
    wanted = [t for t in taps(layers) if cfg.selects(t.layer, by_name[t.layer].node.op_type) is None]
    if not wanted:
        return {}
    for tap in wanted:
        by_name[tap.layer].extra["shift_bias"] = shiftable(by_name[tap.layer], ctx)
    if reuse is not None and reuse.stats is not None:
        notes += reuse.notes
        return {t.layer: reuse.stats[t.layer] for t in wanted if t.layer in reuse.stats}
    source = reuse.source if reuse is not None else cfg.calibration

    def progress(batches: int, samples: int) -> None:
        if batches % PROGRESS_EVERY == 0:
            log.info("calibration: %d samples", samples)

    cal = gather(
        model,
        source,
        wanted,
        threads=cfg.threads,
        progress=progress,
        mean=cfg.calibration_mean,
        std=cfg.calibration_std,
        keep=reuse.keep if reuse is not None else 0,
    )
    log.info("calibration: %d samples in %d batches, %.1fs", cal.samples, cal.batches, cal.seconds)
    short = cal.needed()
    if short and len(short) == len(cal.layers):  # nothing the data can fit: a user error
        worst = max(short, key=lambda n: short[n])
        raise WncError(
            f"the calibration data are too few for the statistics of every layer: '{worst}' reads "
            f"{short[worst] - 1} channels and got {cal.layers[worst].vectors} input vectors",
            f"give at least {short[worst]} samples' worth of inputs (each conv position counts), or leave "
            "those layers out with --exclude",
        )
    if short:  # those layers keep the data-free fit; the pass says so in a note
        worst = max(short, key=lambda n: short[n])
        notes.append(
            f"--calibration: {len(short)} layer(s) fitted without data, too few input vectors for their "
            f"statistics (e.g. '{worst}': {cal.layers[worst].vectors} for {short[worst] - 1} channels; give at least "
            f"{short[worst]})"
        )
        for name in short:
            del cal.layers[name]
    stats = {name: cal.layers.pop(name).stats() for name in list(cal.layers)}  # one layer's sums at a time
    if reuse is not None:
        reuse.stats, reuse.notes, reuse.reference = stats, list(notes), cal.reference
    return stats
