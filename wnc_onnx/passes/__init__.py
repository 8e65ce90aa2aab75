"""The ordered list of graph passes.

Later passes (latency-aware rank limits, product quantization of FC weights) slot
into ``PASS_NAMES`` and ``build_passes``.
"""

from __future__ import annotations

from wnc_onnx.config import PASS_NAMES, CompressConfig
from wnc_onnx.passes.base import Pass, PassResult
from wnc_onnx.passes.cleanup import CleanupPass
from wnc_onnx.passes.fold_bn import FoldBatchNormPass
from wnc_onnx.passes.fold_constants import FoldConstantsPass
from wnc_onnx.passes.initializer_inputs import InitializerInputsPass
from wnc_onnx.passes.lowrank import LowRankPass
from wnc_onnx.passes.name_nodes import NameNodesPass


def build_passes(cfg: CompressConfig, plan_only: bool = False, threads: int = 1) -> list[Pass]:
    """The passes to run, in order (``cfg.skip_passes`` leaves some out); ``threads``: the
    resolved thread count (the low-rank pass analyzes that many layers at a time)."""
    passes: list[Pass] = []
    for name in PASS_NAMES:
        if name in cfg.skip_passes:
            continue
        if name == "name_nodes":
            passes.append(NameNodesPass())
        elif name == "initializer_inputs":
            passes.append(InitializerInputsPass())
        elif name == "fold_constants":
            passes.append(FoldConstantsPass())
        elif name == "fold_batchnorm":
            passes.append(FoldBatchNormPass())
        elif name == "lowrank":
            passes.append(LowRankPass(cfg, plan_only=plan_only, threads=threads))
        elif name == "cleanup" and not plan_only:
            passes.append(CleanupPass())
    return passes


__all__ = [
    "PASS_NAMES",
    "CleanupPass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "InitializerInputsPass",
    "LowRankPass",
    "NameNodesPass",
    "Pass",
    "PassResult",
    "build_passes",
]
