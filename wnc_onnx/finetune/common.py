"""What both fine-tuning backends share: which initializers train, the divergence check, the
misfit hint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wnc_onnx.errors import WncError

_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2)}
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def trainable(model: onnx.ModelProto, extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(requires_grad, frozen): float initializers of the main graph split by role; ``extra`` also trained."""
    g = model.graph
    floats = {t.name for t in g.initializer if t.data_type in _FLOAT}
    producers = {o: n for n in g.node for o in n.output}
    train: list[str] = [e for e in extra if e in floats]
    for n in g.node:
        picks = [n.input[i] for i in _WEIGHT_INPUTS.get(n.op_type, ()) if i < len(n.input)]
        if (
            n.op_type == "MatMul"
            or n.op_type == "Add"
            and any(producers.get(i) is not None and producers[i].op_type == "MatMul" for i in n.input)
        ):
            picks = list(n.input)
        train += [p for p in picks if p in floats and p not in train]
    frozen = [t.name for t in g.initializer if t.name in floats and t.name not in train]
    return train, frozen


MISFIT = "check that x and y fit the model input and the loss (shape, type)"


def finite(loss: float, where: str) -> float:
    """The step's loss, or one WncError when training diverged."""
    if not math.isfinite(loss):
        raise WncError(f"training diverged: the loss is {loss} at {where}", "lower --lr (e.g. 10x)")
    return loss


class Scores(NamedTuple):
    """A model scored on a data set: the training loss, accuracy on class labels (None without
    them) and top-1 agreement with the teacher (None without one)."""

    loss: float
    accuracy: float | None
    agreement: float | None = None


def write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Put new values into ``model``'s initializers of those names, in place (same names, types, order)."""
    for i, t in enumerate(model.graph.initializer):
        if t.name in values:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            new = numpy_helper.from_array(np.asarray(values[t.name], dtype=dtype).reshape(tuple(t.dims)), t.name)
            model.graph.initializer[i].CopyFrom(new)
