"""Flatten/Reshape of a C x H x W map -> Gemm, treated as an HxW convolution (paper's fc6).

Rewritten as 1x1 Conv (C->R3) -> HxW Conv (R3->R4) -> Flatten -> Gemm (R4->T, + beta C).
"""

from __future__ import annotations

import numpy as np
import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.emit import Emitter, conv_chain
from wnc_onnx.rewrite.passes.rules.base import attr_float, attr_int, constant_matrix, gemm_tail


class FlattenGemmRule:
    name = "flatten_gemm"

    def match(self, node: onnx.NodeProto, ctx: GraphContext, cfg: CompressConfig) -> Layer | None:
        if node.op_type != "Gemm" or not cfg.fc_tucker or attr_int(node, "transA", 0):  # type: ignore[call-overload]
            return None
        reason, shape = constant_matrix(ctx, node.input[1])
        prod = ctx.producers.get(node.input[0])
        if reason or prod is None or prod.op_type not in ("Flatten", "Reshape"):
            return None
        x = prod.input[0]
        xs, fs = ctx.shape(x), ctx.shape(prod.output[0])
        if xs is None or fs is None or len(xs) < 3 or len(fs) != 2:
            return None
        if not all(isinstance(d, int) for d in xs[1:]):
            return None
        if prod.op_type == "Flatten" and attr_int(prod, "axis", 1) != 1:  # type: ignore[call-overload]
            return None
        if prod.op_type == "Reshape" and (xs[0] != fs[0] or xs[0] is None):
            return None
        c, spatial = int(xs[1]), tuple(int(d) for d in xs[2:])  # type: ignore[arg-type]
        trans_b = attr_int(node, "transB", 0)
        k, n = (shape[1], shape[0]) if trans_b else (shape[0], shape[1])
        window = int(np.prod(spatial))
        if window <= 1 or k != c * window:
            return None
        layer = Layer(node=node, name=node.name, rule=self.name, weight=node.input[1])
        layer.s, layer.t, layer.spatial = c, n, spatial
        layer.in_pixels, layer.out_pixels = window, 1
        layer.strides = (1,) * len(spatial)
        layer.extra["source"] = x
        return layer

    def kernels(self, layer: Layer, ctx: GraphContext) -> list[np.ndarray]:
        b = ctx.array(layer.weight)
        kt = b if attr_int(layer.node, "transB", 0) else b.T  # (T, C*H*W)
        return [kt.reshape((layer.t, layer.s) + layer.spatial)]

    def rewrite(self, layer: Layer, factors: Factors, ctx: GraphContext, used: set[str]) -> Emitter:
        node = layer.node
        alpha = attr_float(node, "alpha", 1.0)
        if alpha != 1.0:
            groups = [dict(g, core=g["core"] * alpha) for g in factors.groups]
            shift = None if factors.bias_shift is None else factors.bias_shift * alpha
            factors = Factors(
                factors.method,
                factors.r3,
                factors.r4,
                groups,
                factors.rel_error,
                factors.hooi_iterations,
                bias_shift=shift,
            )
        em = Emitter(ctx, layer, factors, used)
        core_out = em.tensor("core_out")
        conv_chain(em, str(layer.extra["source"]), [], core_out)
        flat = em.tensor("flatten_out")
        em.node("Flatten", "flatten", [core_out], [flat], axis=1)
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        beta = attr_float(node, "beta", 1.0)
        if factors.bias_shift is not None:  # --calibration moved the bias: C' = beta C + shift
            c, beta = em.bias(c, 1.0, beta), 1.0
        gemm_tail(
            em,
            flat,
            factors.groups[0]["u_out"],
            attr_int(node, "transB", 0),
            c,
            beta,  # type: ignore[call-overload]
            node.output[0],
            "out_fc",
        )
        return em
