"""The ordered list of graph passes.

onnx-simplifier runs first when ``cfg.simplify`` is on. The low-rank pass runs unless
``cfg.lowrank`` is off; product quantization (``pq``) runs after it when ``cfg.pq`` is on,
so it quantizes the factors the low-rank pass wrote.
"""

from __future__ import annotations

from wnc_onnx.config import PASS_NAMES, CompressConfig
from wnc_onnx.rewrite.passes.base import Pass, PassResult
from wnc_onnx.rewrite.passes.cleanup import CleanupPass
from wnc_onnx.rewrite.passes.fold_bn import FoldBatchNormPass
from wnc_onnx.rewrite.passes.fold_constants import FoldConstantsPass
from wnc_onnx.rewrite.passes.initializer_inputs import InitializerInputsPass
from wnc_onnx.rewrite.passes.lowrank import LowRankPass
from wnc_onnx.rewrite.passes.lowrank_latency import LatencyPolicy
from wnc_onnx.rewrite.passes.name_nodes import NameNodesPass
from wnc_onnx.rewrite.passes.pq import PQPass
from wnc_onnx.rewrite.passes.simplify import SimplifyPass
from wnc_onnx.rewrite.state import RunState


def build_passes(
    cfg: CompressConfig, state: RunState | None = None, plan_only: bool = False, threads: int = 1
) -> list[Pass]:
    """The passes to run, in order (``cfg.skip_passes`` leaves some out); ``state``: the run's
    state; ``threads``: the resolved thread count (the low-rank pass analyzes that many layers at
    a time; the latency policy times on that many)."""
    state = state or RunState()
    passes: list[Pass] = []
    for name in PASS_NAMES:
        if name in cfg.skip_passes:
            continue
        if name == "simplify":
            if cfg.simplify:
                passes.append(SimplifyPass())
        elif name == "name_nodes":
            passes.append(NameNodesPass())
        elif name == "initializer_inputs":
            passes.append(InitializerInputsPass())
        elif name == "fold_constants":
            passes.append(FoldConstantsPass())
        elif name == "fold_batchnorm":
            passes.append(FoldBatchNormPass())
        elif name == "lowrank" and cfg.lowrank:
            timed = cfg.timed and not plan_only
            policy = LatencyPolicy(cfg, threads, state.latency, state.target_scale) if timed else None
            passes.append(LowRankPass(cfg, state, plan_only=plan_only, threads=threads, latency=policy))
        elif name == "pq" and cfg.pq and not plan_only:
            passes.append(PQPass(cfg))
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
    "PQPass",
    "SimplifyPass",
    "Pass",
    "PassResult",
    "build_passes",
]
