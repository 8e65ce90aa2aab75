"""BatchNormalization with frozen statistics for training, and back.

ONNX Runtime's training graph runs BatchNormalization in training mode: it normalizes
with each batch's statistics and overwrites the running mean and variance, even when
they are listed as frozen. Fine-tuning must keep the statistics the network was trained
with, so each inference-mode BatchNormalization of the main graph becomes, for training,
the affine map it computes: ``y = x * a + b`` with per-channel ``a = scale / sqrt(var +
eps)`` and ``b = bias - mean * a`` (both trained). After training, ``restore`` puts the
original node back with the same mean and variance and ``scale = a * sqrt(var + eps)``,
``bias = b + mean * a``: the same function, the same graph as the input model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wnc_onnx.errors import WncError

SUFFIX = ".wnc_frozen_bn"


@dataclass(frozen=True)
class FrozenBN:
    node: onnx.NodeProto  # the original BatchNormalization
    mean: np.ndarray
    var: np.ndarray
    eps: float
    a: str  # names of the trained per-channel factors
    b: str


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    vi = infos.get(name)
    if vi is not None and vi.type.tensor_type.HasField("shape"):
        return len(vi.type.tensor_type.shape.dim)
    return None


def to_affine(model: onnx.ModelProto) -> list[FrozenBN]:
    """Rewrite the BatchNormalization nodes of ``model`` (a copy the caller owns) in place."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    bns = [n for n in g.node if n.op_type == "BatchNormalization" and len(n.output) == 1]
    bns = [n for n in bns if all(i in inits for i in n.input[1:5])]
    if not bns:
        return []
    typed = onnx.shape_inference.infer_shapes(model)
    records: list[FrozenBN] = []
    for bn in bns:
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        if attrs.get("training_mode", 0):
            continue
        rank = _rank(typed, bn.input[0])
        if rank is None or rank < 2:
            raise WncError(
                f"cannot tell the rank of the input of BatchNormalization '{bn.name}' to freeze its statistics",
                "fold it into the conv before fine-tuning (wnc-onnx compress does by default)",
            )
        scale, bias, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        eps = float(attrs.get("epsilon", 1e-5))
        dtype = helper.tensor_dtype_to_np_dtype(inits[bn.input[1]].data_type)
        a = scale / np.sqrt(var + eps)
        b = bias - mean * a
        shape = (-1,) + (1,) * (rank - 2)
        base = (bn.name or bn.output[0]) + SUFFIX
        g.initializer.extend(
            [
                numpy_helper.from_array(a.reshape(shape).astype(dtype), base + ".a"),
                numpy_helper.from_array(b.reshape(shape).astype(dtype), base + ".b"),
            ]
        )
        mul = helper.make_node("Mul", [bn.input[0], base + ".a"], [base + ".x_a"], name=base + ".mul")
        add = helper.make_node("Add", [base + ".x_a", base + ".b"], [bn.output[0]], name=base + ".add")
        original = onnx.NodeProto()
        original.CopyFrom(bn)
        at = list(g.node).index(bn)
        g.node.remove(bn)
        g.node.insert(at, add)
        g.node.insert(at, mul)
        records.append(FrozenBN(original, mean, var, eps, base + ".a", base + ".b"))
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return records


def restore(model: onnx.ModelProto, records: list[FrozenBN], original: onnx.ModelProto) -> None:
    """Put the BatchNormalization nodes back into the trained ``model`` (in place)."""
    if not records:
        return
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    source = {t.name: t for t in original.graph.initializer}
    for r in records:
        a = numpy_helper.to_array(inits[r.a]).astype(np.float64).reshape(-1)
        b = numpy_helper.to_array(inits[r.b]).astype(np.float64).reshape(-1)
        scale_name, bias_name, mean_name, var_name = r.node.input[1:5]
        dtype = helper.tensor_dtype_to_np_dtype(source[scale_name].data_type)
        new = {
            scale_name: (a * np.sqrt(r.var + r.eps)).astype(dtype),
            bias_name: (b + r.mean * a).astype(dtype),
        }
        mul = next(n for n in g.node if n.name == r.a[: -len(".a")] + ".mul")
        add = next(n for n in g.node if n.name == r.a[: -len(".a")] + ".add")
        at = list(g.node).index(mul)
        g.node.remove(mul)
        g.node.remove(add)
        g.node.insert(at, r.node)
        for name in (scale_name, bias_name, mean_name, var_name):
            if name not in inits:
                inits[name] = g.initializer.add()  # the element itself (append() would store a copy)
                inits[name].CopyFrom(source[name])
        for name, value in new.items():
            inits[name].CopyFrom(numpy_helper.from_array(value.reshape(inits[name].dims), name))
    drop = {r.a for r in records} | {r.b for r in records}
    kept = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
