"""MatMul with a constant matrix on either side -> two thinner MatMuls (truncated SVD)."""

from __future__ import annotations

import numpy as np
import onnx

from wnc_onnx.analyze.graph import NOT_CONSTANT, GraphContext
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.emit import Emitter
from wnc_onnx.rewrite.passes.rules.base import constant_matrix


class MatMulRule:
    name = "matmul"

    def match(self, node: onnx.NodeProto, ctx: GraphContext, cfg: CompressConfig) -> Layer | None:
        if node.op_type != "MatMul":
            return None
        layer = Layer(node=node, name=node.name, rule=self.name)
        a, b = node.input[0], node.input[1]
        a_const, b_const = ctx.constant_reason(a) is None, ctx.constant_reason(b) is None
        if a_const and b_const:
            layer.weight = b
            layer.skip = "both inputs are constant (fold constants first)"
            return layer
        if not (a_const or b_const):
            # a specific reason (graph input, quantized) says more than "no constant"
            reasons = [(n, ctx.constant_reason(n)) for n in (b, a)]
            specific = [(n, r) for n, r in reasons if r != NOT_CONSTANT]
            layer.weight, layer.skip = specific[0] if specific else (b, "no constant weight on either side")
            return layer
        side = "right" if b_const else "left"
        layer.weight = b if b_const else a
        layer.extra["side"] = side
        reason, shape = constant_matrix(ctx, layer.weight)
        layer.skip = reason
        if len(shape) != 2:
            return layer
        x = a if b_const else b
        xs = ctx.shape(x)
        if side == "right":  # X (..., K) @ W (K, N)
            layer.s, layer.t = shape[0], shape[1]
            rows = 1 if xs is not None and len(xs) <= 2 else ctx.static_size(x, 1, -1)
        else:  # W (M, K) @ X (..., K, N)
            layer.s, layer.t = shape[1], shape[0]
            if xs is None:
                rows = None
            elif len(xs) <= 2:
                rows = xs[-1] if isinstance(xs[-1], int) else None
            else:
                lead, last = ctx.static_size(x, 1, -2), xs[-1]
                rows = lead * last if lead is not None and isinstance(last, int) else None
        layer.in_pixels = layer.out_pixels = rows
        return layer

    def kernels(self, layer: Layer, ctx: GraphContext) -> list[np.ndarray]:
        w = ctx.array(layer.weight)
        return [w.T if layer.extra["side"] == "right" else w]

    def rewrite(self, layer: Layer, factors: Factors, ctx: GraphContext, used: set[str]) -> Emitter:
        em = Emitter(ctx, layer, factors, used)
        node = layer.node
        left, right = factors.groups[0]["left"], factors.groups[0]["right"]  # (T,R), (R,S)
        mid = em.tensor("svd_in_out")
        if layer.extra["side"] == "right":  # X W ~= (X right^T) left^T
            em.node("MatMul", "svd_in", [node.input[0], em.weight("svd_in", right.T)], [mid])
            em.node("MatMul", "svd_out", [mid, em.weight("svd_out", left.T)], [node.output[0]])
        else:  # W X ~= left (right X)
            em.node("MatMul", "svd_in", [em.weight("svd_in", right), node.input[1]], [mid])
            em.node("MatMul", "svd_out", [em.weight("svd_out", left), mid], [node.output[0]])
        return em
