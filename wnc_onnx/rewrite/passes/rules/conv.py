"""Conv -> [1x1] -> DxD -> 1x1 (Tucker-2 / Tucker-1), 1x1 Conv -> 1x1 -> 1x1 (SVD)."""

from __future__ import annotations

import numpy as np
import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.emit import Emitter, conv_chain, expand, stack_groups
from wnc_onnx.rewrite.passes.rules.base import attr_int, attr_ints, shared_reason


class ConvRule:
    name = "conv"

    def match(self, node: onnx.NodeProto, ctx: GraphContext, cfg: CompressConfig) -> Layer | None:
        if node.op_type != "Conv":
            return None
        layer = Layer(node=node, name=node.name, rule=self.name)
        if len(node.input) < 2 or not node.input[1]:
            layer.skip = "Conv has no weight input"
            return layer
        layer.weight = w = node.input[1]
        reason = ctx.constant_reason(w) or shared_reason(ctx, w)
        if reason:
            layer.skip = reason
            return layer
        shape = ctx.weight_shape(w)
        if len(shape) < 3:
            layer.skip = f"weight shape {shape} is not a convolution kernel"
            return layer
        groups = attr_int(node, "group", 1)
        cout, s = shape[0], shape[1]
        if groups < 1 or cout % groups:
            layer.skip = f"{cout} output channels do not split into {groups} groups"
            return layer
        layer.s, layer.t, layer.groups = s, cout // groups, groups
        layer.spatial = tuple(shape[2:])
        nd = len(layer.spatial)
        layer.strides = tuple(attr_ints(node, "strides", [1] * nd))
        layer.in_pixels = ctx.static_size(node.input[0], 2)
        layer.out_pixels = ctx.static_size(node.output[0], 2)
        if groups > 1 and s == 1:
            layer.skip = "depthwise convolution (one input channel per group): nothing to factor"
        elif layer.window == 1 and not cfg.pointwise:
            layer.skip = "1x1 convolution and pointwise factoring is off (--no-pointwise)"
        elif layer.window == 1 and min(s, layer.t) < 2:
            layer.skip = "1x1 convolution with a single channel: nothing to factor"
        return layer

    def kernels(self, layer: Layer, ctx: GraphContext) -> list[np.ndarray]:
        w = ctx.array(layer.weight)
        t = layer.t
        return [w[i * t : (i + 1) * t] for i in range(layer.groups)]

    def rewrite(self, layer: Layer, factors: Factors, ctx: GraphContext, used: set[str]) -> Emitter:
        em = Emitter(ctx, layer, factors, used)
        node = layer.node
        nd = len(layer.spatial)
        core_out = em.tensor("core_out")
        conv_chain(em, node.input[0], list(node.attribute), core_out)
        w_out = stack_groups(factors, "u_out", lambda u: expand(u, nd))  # (g*T, R4, 1..)
        inputs = [core_out, em.weight("out_1x1", w_out)]
        bias = em.bias(node.input[2] if len(node.input) > 2 and node.input[2] else None)
        if bias:
            inputs.append(bias)
        em.node("Conv", "out_1x1", inputs, [node.output[0]], kernel_shape=[1] * nd, group=layer.groups)
        return em
