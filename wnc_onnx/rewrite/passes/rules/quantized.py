"""Quantized layers are listed with the reason they are left alone."""

from __future__ import annotations

import numpy as np
import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.emit import Emitter

QUANTIZED_OPS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")


class QuantizedRule:
    name = "quantized"

    def match(self, node: onnx.NodeProto, ctx: GraphContext, cfg: CompressConfig) -> Layer | None:
        if node.op_type not in QUANTIZED_OPS:
            return None
        return Layer(
            node=node,
            name=node.name,
            rule=self.name,
            skip=f"quantized layer ({node.op_type}): compress the float model, then quantize",
        )

    def kernels(self, layer: Layer, ctx: GraphContext) -> list[np.ndarray]:
        raise NotImplementedError("quantized layers are never factored")

    def rewrite(self, layer: Layer, factors: Factors, ctx: GraphContext, used: set[str]) -> Emitter:
        raise NotImplementedError("quantized layers are never factored")
