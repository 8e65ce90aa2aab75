"""The shape of a rule: match a node, check it is safe (with a reason), rewrite it."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx

from wnc_onnx.analyze.graph import GraphContext
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.config import CompressConfig
from wnc_onnx.rewrite.passes.emit import Emitter


class Rule(Protocol):
    name: str

    def match(self, node: onnx.NodeProto, ctx: GraphContext, cfg: CompressConfig) -> Layer | None:
        """A Layer for a node this rule handles (with ``skip`` set when unsafe), else None."""
        ...

    def kernels(self, layer: Layer, ctx: GraphContext) -> list[np.ndarray]:
        """Per-group kernels in the (T, S, *spatial) layout."""
        ...

    def rewrite(self, layer: Layer, factors: Factors, ctx: GraphContext, used: set[str]) -> Emitter:
        """The replacement nodes; the last one writes the original output name."""
        ...


def attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    value = attr(node, name, default)
    return int(value) if isinstance(value, int | float) else default


def attr_float(node: onnx.NodeProto, name: str, default: float) -> float:
    value = attr(node, name, default)
    return float(value) if isinstance(value, int | float) else default


def attr_ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    value = attr(node, name, default)
    return [int(v) for v in value] if isinstance(value, list | tuple) else default


def layer_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def shared_reason(ctx: GraphContext, weight: str) -> str | None:
    # a weight behind Identity / Cast / Transpose / Reshape is shared when its source is
    users = max([len(ctx.consumers.get(weight, []))] + [ctx.uses(name) for name in ctx.chain(weight)])
    if users > 1:
        return f"weight '{weight}' is shared by {users} nodes"
    return None


def constant_matrix(ctx: GraphContext, name: str) -> tuple[str | None, list[int]]:
    """(reason it cannot be used, shape) for a weight that should be a constant matrix."""
    reason = ctx.constant_reason(name)
    if reason:
        return reason, []
    shape = ctx.weight_shape(name)
    reason = shared_reason(ctx, name)
    if reason:
        return reason, shape
    if len(shape) != 2:
        return f"weight is {len(shape)}-D, not a matrix", shape
    if min(shape) < 2:
        return f"weight {shape} has a dimension below 2: nothing to factor", shape
    return None, shape


def gemm_tail(
    em: Emitter, x: str, factor: np.ndarray, trans_b: int, c: str | None, beta: float, out: str, role: str
) -> None:
    """Gemm x @ B2 (+ beta C): ``factor`` is (T, R), stored like the original B."""
    w = factor if trans_b else factor.T
    inputs = [x, em.weight(role, w)]
    attrs: dict[str, object] = {"transB": int(trans_b)}
    if c:
        inputs.append(c)
        attrs["beta"] = float(beta)
    elif em.ctx.opset < 11:  # C is mandatory before opset 11
        inputs.append(em.constant(f"{role}.zero", np.zeros((1,), dtype=em.np_dtype)))
        attrs["beta"] = 0.0
    em.node("Gemm", role, inputs, [out], **attrs)
