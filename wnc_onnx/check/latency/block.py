"""The channel block the target's kernels run best at, found by measurement.

onnxruntime's CPU kernels work on blocks of channels (NCHWc layouts, SIMD widths), so a
rank that is not a multiple of the block can run slower than the next multiple up, which
does more work. How large the block is, and whether rounding pays at all, depends on the
CPU, the provider and the thread count: it is measured on the target, not assumed. The
probe is a Tucker-2 chain (1x1, 3x3, 1x1 convolutions) at ranks 33 to 64; for each block
size, the gain is the median over the ranks off the block of the time at the rank over the
time at the rank rounded up to the block. The block offered is the smallest of those that
gain about as much as the best, when that gain is at least 3%."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wnc_onnx.check.latency.allocate import LayerOptions
from wnc_onnx.check.latency.forms import Form
from wnc_onnx.check.latency.oracle import Oracle

BLOCKS = (4, 8, 16, 32)
PROBE_RANKS = tuple(range(33, 65))
PROBE_CHANNELS = 64
PROBE_SIZE = 28
MIN_GAIN = 1.03  # rounding up must make the probe this much faster (median) to be offered
TIE = 0.03  # blocks whose gains are this close count as equal


@dataclass(frozen=True)
class ChannelBlock:
    """``block``: the multiple ranks are rounded up to (1: rounding was not faster);
    ``gain``: the probe's median speed-up from rounding up to it; ``gains``: per block tried."""

    block: int
    gain: float
    gains: dict[int, float] = field(default_factory=dict)

    def round_up(self, r: int, full: int) -> int:
        if self.block <= 1:
            return r
        return min(full, int(math.ceil(r / self.block) * self.block))

    def on_block(self, r: int, full: int) -> bool:
        return self.block <= 1 or r % self.block == 0 or r == full

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "gain": round(self.gain, 3),
            "gains": {str(k): round(v, 3) for k, v in self.gains.items()},
            "probe": f"1x1 -> 3x3 -> 1x1 convolutions, {PROBE_CHANNELS} channels at {PROBE_SIZE}x{PROBE_SIZE}, "
            f"ranks {PROBE_RANKS[0]}-{PROBE_RANKS[-1]}",
        }


def probe_model(rank: int, channels: int = PROBE_CHANNELS, size: int = PROBE_SIZE) -> onnx.ModelProto:
    """A Tucker-2 chain at ``rank``: what a decomposed 3x3 layer runs."""
    rng = np.random.default_rng(rank)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        weight("w_in", rank, channels, 1, 1),
        weight("w_core", rank, rank, 3, 3),
        weight("w_out", channels, rank, 1, 1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_in"], ["a"], name="probe_in"),
        helper.make_node("Conv", ["a", "w_core"], ["b"], name="probe_core", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "w_out"], ["y"], name="probe_out"),
    ]
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        f"channel_block_probe_{rank}",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def decide(times: dict[int, float]) -> ChannelBlock:
    """The block whose rounding gains the most (median over the ranks off it), if at least
    MIN_GAIN; of blocks that gain within ``TIE`` of the best, the smallest (finer ranks)."""
    gains = {}
    for b in BLOCKS:
        ratios = []
        for r, t in times.items():
            up = int(math.ceil(r / b) * b)
            if r % b and up in times and times[up] > 0:
                ratios.append(t / times[up])
        if ratios:
            gains[b] = float(np.median(ratios))
    if not gains:
        return ChannelBlock(1, 1.0, gains)
    best = max(gains.values())
    if best < MIN_GAIN:
        return ChannelBlock(1, best, gains)
    block = min(b for b, g in gains.items() if g >= best - TIE)
    return ChannelBlock(block, gains[block], gains)


def measure_block(oracle: Oracle) -> ChannelBlock:
    """Time the probe at every rank on ``oracle``'s target (cached like any form) and decide."""
    x = np.random.default_rng(0).standard_normal((1, PROBE_CHANNELS, PROBE_SIZE, PROBE_SIZE)).astype(np.float32)
    cases = [(probe_model(r), {"x": x}) for r in PROBE_RANKS]
    found = oracle.measure(cases)
    return decide({r: m.median for r, m in zip(PROBE_RANKS, found, strict=True)})


def rounded_note(opt: LayerOptions, chosen: Form, block: ChannelBlock, s: int, t: int) -> str | None:
    """Why the chosen form's ranks sit on the channel block when the plan's did not, or None."""
    base = opt.base
    if chosen.method == "original" or block.block <= 1:
        return None
    full3, full4 = s, (min(s, t) if chosen.method == "svd" else t)
    pairs = [("R4" if chosen.method != "svd" else "R", base.r4, chosen.r4, full4)]
    if chosen.method == "tucker2":
        pairs.insert(0, ("R3", int(base.r3 or 0), int(chosen.r3 or 0), full3))
    moved = [(n, a, b) for n, a, b, full in pairs if a != b and block.on_block(b, full) and not block.on_block(a, full)]
    if not moved or chosen.method != base.method and chosen.method != "tucker1":
        return None
    ranks = ", ".join(f"{n} {a}->{b}" for n, a, b in moved)
    alone, times = "", opt.alone or opt.times
    if base in times and chosen in times:
        a, b = times[base].median * 1e3, times[chosen].median * 1e3
        alone = f"; this layer alone: {a:.3f} ms at the plan's ranks, {b:.3f} ms rounded"
    return f"{ranks}: on the channel block of {block.block} (measured x{block.gain:.2f} faster on the probe){alone}"
