"""Gemm -> Gemm (S->R) -> Gemm (R->T, + beta C): truncated SVD of the weight."""

from __future__ import annotations

import numpy as np
import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.emit import Emitter
from wnc_onnx.rewrite.passes.rules.base import attr_float, attr_int, constant_matrix, gemm_tail


class GemmRule:
    name = "gemm"

    def match(self, node: onnx.NodeProto, ctx: GraphContext, cfg: CompressConfig) -> Layer | None:
        if node.op_type != "Gemm":
            return None
        layer = Layer(node=node, name=node.name, rule=self.name, in_pixels=1, out_pixels=1)
        layer.weight = node.input[1]
        reason, shape = constant_matrix(ctx, layer.weight)
        if len(shape) == 2:  # known even when skipped: the report counts its weights and MACs
            trans_b = attr_int(node, "transB", 0)
            layer.s, layer.t = (shape[1], shape[0]) if trans_b else (shape[0], shape[1])
        layer.skip = reason
        return layer

    def kernels(self, layer: Layer, ctx: GraphContext) -> list[np.ndarray]:
        b = ctx.array(layer.weight)
        return [b if attr_int(layer.node, "transB", 0) else b.T]

    def rewrite(self, layer: Layer, factors: Factors, ctx: GraphContext, used: set[str]) -> Emitter:
        em = Emitter(ctx, layer, factors, used)
        node = layer.node
        trans_b = attr_int(node, "transB", 0)
        left, right = factors.groups[0]["left"], factors.groups[0]["right"]  # (T,R), (R,S)
        mid = em.tensor("svd_in_out")
        first = [node.input[0], em.weight("svd_in", right if trans_b else right.T)]
        attrs: dict[str, object] = {
            "transA": attr_int(node, "transA", 0),  # type: ignore[call-overload]
            "transB": trans_b,
            "alpha": attr_float(node, "alpha", 1.0),  # type: ignore[arg-type]
        }
        if ctx.opset < 11:
            first.append(em.constant("svd_in.zero", np.zeros((1,), dtype=em.np_dtype)))
            attrs["beta"] = 0.0
        em.node("Gemm", "svd_in", first, [mid], **attrs)
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        beta = attr_float(node, "beta", 1.0)
        if factors.bias_shift is not None:  # --calibration moved the bias: C' = beta C + alpha shift
            c, beta = em.bias(c, attr_float(node, "alpha", 1.0), beta), 1.0
        gemm_tail(em, mid, left, trans_b, c, beta, node.output[0], "svd_out")
        return em
