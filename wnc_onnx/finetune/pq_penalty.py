"""Compression-aware training (Soulié et al. 2016): pull weights toward their product quantization.

The penalty on a weight W is (lambda / 2) * sum_j ||w_j - c(w_j)||^2 over its sub-vectors
w_j, c(w_j) being the nearest centroid of a codebook learned on W itself (the product
quantization the export will apply). Its gradient, lambda * (w_j - c(w_j)), is applied
as a decoupled step after each optimizer step, scaled by the learning rate:
W <- W - min(1, lr * lambda) * (W - Q(W)), as AdamW applies weight decay. ONNX Runtime's
training API has no way to add to a gradient, and a decoupled pull keeps its strength
independent of Adam's per-coordinate scaling. The codebooks and assignments Q are
refreshed by k-means at the start of training and after every epoch; the last refresh
is also the export's quantization. See docs/pq.md for the choice and its measurements.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from wnc_onnx.analyze.numeric.pq import product_quantize
from wnc_onnx.config import CompressConfig, flag_of
from wnc_onnx.errors import WncError, option_error
from wnc_onnx.rewrite.passes.pq import Candidate, from_matrix, plan_weights, to_matrix

log = logging.getLogger(__name__)


@dataclass
class _Target:
    cand: Candidate
    quantized: np.ndarray | None = None  # Q(W) in the weight's layout


class PQPenalty:
    """The weights to pull, their current quantization, and the pull itself."""

    def __init__(self, model: onnx.ModelProto, cfg: CompressConfig, lam: float) -> None:
        self.cfg, self.lam = cfg, lam
        cands = plan_weights(model, cfg)
        self.targets = [_Target(c) for c in cands if not c.entry.reason]
        if not self.targets:
            reasons = "; ".join(sorted({c.entry.reason for c in cands})) or "no Gemm / MatMul / Conv weight"
            raise WncError(
                f"--pq-lambda: no weight of the model can be product-quantized ({reasons})",
                "check --pq-op-types, --pq-include, or lower --pq-k / --pq-dim",
            )
        self.names = [t.cand.entry.weight for t in self.targets]

    def refresh(self, params: Any) -> dict[str, float]:
        """k-means on the current weights: new targets; returns the penalty and distance they give."""
        t0 = time.perf_counter()
        sq, norm = 0.0, 0.0
        for t in self.targets:
            e = t.cand.entry
            w = np.asarray(params[e.weight].data, dtype=np.float32)
            res = product_quantize(
                to_matrix(t.cand.orient, w),
                self.cfg.pq_dim,
                self.cfg.pq_k,
                self.cfg.pq_layout,
                self.cfg.pq_seed,
                self.cfg.pq_kmeans,
            )
            t.quantized = from_matrix(t.cand.orient, w.shape, res.reconstruct()).astype(w.dtype)
            sq += float(np.sum((w - t.quantized) ** 2))
            norm += float(np.sum(w**2))
        log.debug("pq targets refreshed in %.2fs", time.perf_counter() - t0)
        return {"pq_penalty": 0.5 * self.lam * sq, "pq_distance": float(np.sqrt(sq / max(norm, 1e-30)))}

    def pull(self, params: Any, lr: float) -> None:
        """One decoupled penalty step toward the targets."""
        step = min(1.0, lr * self.lam)
        if step <= 0:
            return
        for t in self.targets:
            p = params[t.cand.entry.weight]
            w = p.data
            p.data = (w - step * (w - t.quantized)).astype(w.dtype)

    @contextlib.contextmanager
    def quantized(self, params: Any) -> Iterator[None]:
        """The targets in place of the weights (to score the quantized model), then the weights back."""
        saved = {t.cand.entry.weight: np.array(params[t.cand.entry.weight].data) for t in self.targets}
        try:
            for t in self.targets:
                params[t.cand.entry.weight].data = t.quantized
            yield
        finally:
            for name, w in saved.items():
                params[name].data = w


def pq_config(options: dict[str, Any]) -> CompressConfig:
    """The product-quantization settings of a fine-tuning run as the pass reads them."""
    try:
        return CompressConfig(lowrank=False, pq=True, **options)
    except (TypeError, ValueError) as exc:
        raise option_error(exc, flag_of, "'wnc-onnx finetune --help'") from None
