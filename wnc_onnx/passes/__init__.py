"""The ordered list of graph passes.

Later passes (BatchNorm folding, cleanup, latency-aware rank limits, product
quantization of FC weights) slot into ``PASS_NAMES`` and ``build_passes``.
"""

from __future__ import annotations

from wnc_onnx.config import CompressConfig
from wnc_onnx.passes.base import Pass, PassResult
from wnc_onnx.passes.lowrank import LowRankPass

PASS_NAMES: tuple[str, ...] = ("lowrank",)


def build_passes(cfg: CompressConfig, plan_only: bool = False) -> list[Pass]:
    """The passes to run, in order."""
    return [LowRankPass(cfg, plan_only=plan_only)]


__all__ = ["PASS_NAMES", "LowRankPass", "Pass", "PassResult", "build_passes"]
