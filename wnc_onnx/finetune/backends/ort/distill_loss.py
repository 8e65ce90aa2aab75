"""The distillation objective (``finetune.distill``) as ONNX nodes, for ONNX Runtime training.

The teacher runs in its own inference session; its tensors enter the training graph as inputs
named ``teacher:<tensor>``, and the loss nodes read the student's tensors of the same names
where the graph makes them. Each term is the torch backend's (``backends.torch.losses``) in
ONNX ops: "kl", KL(teacher || student) of the softmax along the term's axis at the
temperature, summed over that axis, averaged over the rest, times T^2; "mse", the mean squared
error over the teacher's variance (floored). With labels (``--alpha``), the label loss
(SoftmaxCrossEntropyLoss of the logits, or the mean squared error) takes ``alpha`` of the total.
Only the teacher's inputs carry no gradient: the student's tensors are the graph's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wnc_onnx.analyze.graph import Dim, infer_shapes
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.distill import Objective, Term

VARIANCE_FLOOR = 1e-8  # as the torch backend's
TEACHER = "teacher:"
LABELS = "labels"


def teacher_input(tensor: str) -> str:
    return TEACHER + tensor


def build(base: onnx.ModelProto, objective: Objective, label: str | None, train_tensor: str | None) -> str:
    """Add the loss nodes and the teacher's (and labels') inputs to ``base``, in place; the name of
    the scalar loss. ``label``: "cross_entropy" / "mse" when labels mix in (``objective.alpha``)."""
    g = _Graph(base)
    known = infer_shapes(base)
    total = None
    for term in objective.terms:
        if term.tensor not in known:
            raise WncError(
                f"the ort backend cannot distill {term.tensor!r}: its shape is not known after shape inference",
                "use --backend torch, or give the model fixed input sizes",
            )
        rank = len(known[term.tensor])
        base.graph.input.append(
            helper.make_tensor_value_info(teacher_input(term.tensor), TensorProto.FLOAT, known[term.tensor])
        )
        value = _kl(g, term, objective.temperature, rank) if term.kind == "kl" else _mse(g, term)
        value = g.op("Mul", [value, g.const(term.weight)])
        total = value if total is None else g.op("Add", [total, value])
    assert total is not None, "an objective has a term"
    if label is not None and train_tensor is not None:
        alpha = float(objective.alpha or 0.0)
        label_value = _label_loss(g, base, label, train_tensor, known)
        total = g.op("Add", [g.op("Mul", [label_value, g.const(alpha)]), g.op("Mul", [total, g.const(1.0 - alpha)])])
    out = g.op("Identity", [total], name="distill_loss")
    base.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
    return out


class _Graph:
    """Nodes appended to a graph under fresh names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"wnc_distill/{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        out = name or self._name(op_type)
        self.graph.node.append(helper.make_node(op_type, inputs, [out], name=self._name(op_type), **attrs))
        return out

    def const(self, value: float | list[int], dtype: Any = np.float32) -> str:
        name = self._name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int] | None, keepdims: int) -> str:
        """ReduceSum / ReduceMean over ``axes`` (all when None), as the opset spells it."""
        if axes is None:
            return self.op(op_type, [x], keepdims=keepdims)
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, [x, self.const(axes, np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)


def _log_softmax(g: _Graph, x: str, axis: int, rank: int) -> tuple[str, int]:
    """LogSoftmax along one axis, and the axis it then lies on: before opset 13 the op flattens
    from the axis on, so a class axis that is not the last one is moved there first."""
    if g.opset >= 13 or axis % rank == rank - 1:
        return g.op("LogSoftmax", [x], axis=axis), axis
    a = axis % rank
    perm = [d for d in range(rank) if d != a] + [a]
    return g.op("LogSoftmax", [g.op("Transpose", [x], perm=perm)], axis=rank - 1), rank - 1


def _kl(g: _Graph, term: Term, temperature: float, rank: int) -> str:
    t_inv = g.const(1.0 / temperature)
    ls, axis = _log_softmax(g, g.op("Mul", [term.tensor, t_inv]), term.axis, rank)
    lt, _ = _log_softmax(g, g.op("Mul", [teacher_input(term.tensor), t_inv]), term.axis, rank)
    pointwise = g.op("Mul", [g.op("Exp", [lt]), g.op("Sub", [lt, ls])])
    per_position = g.reduce("ReduceSum", pointwise, [axis], keepdims=0)
    return g.op("Mul", [g.reduce("ReduceMean", per_position, None, keepdims=0), g.const(temperature**2)])


def _mse(g: _Graph, term: Term) -> str:
    t = teacher_input(term.tensor)
    d = g.op("Sub", [term.tensor, t])
    err = g.reduce("ReduceMean", g.op("Mul", [d, d]), None, keepdims=0)
    c = g.op("Sub", [t, g.reduce("ReduceMean", t, None, keepdims=1)])
    var = g.op("Max", [g.reduce("ReduceMean", g.op("Mul", [c, c]), None, keepdims=0), g.const(VARIANCE_FLOOR)])
    return g.op("Div", [err, var])


def _label_loss(g: _Graph, base: onnx.ModelProto, label: str, scores: str, known: dict[str, list[Dim]]) -> str:
    if label == "cross_entropy":
        base.graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.INT64, ["batch"]))
        if g.opset < 12:  # SoftmaxCrossEntropyLoss is opset 12
            raise WncError(
                f"the ort backend mixes labels in (--alpha) on opset 12 or later; this model has {g.opset}",
                "use --backend torch, or leave --alpha out",
            )
        return g.op("SoftmaxCrossEntropyLoss", [scores, LABELS], reduction="mean")
    if scores not in known:
        raise WncError(f"the shape of {scores!r} is not known after shape inference", "use --backend torch")
    base.graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.FLOAT, known[scores]))
    d = g.op("Sub", [scores, LABELS])
    return g.reduce("ReduceMean", g.op("Mul", [d, d]), None, keepdims=0)
