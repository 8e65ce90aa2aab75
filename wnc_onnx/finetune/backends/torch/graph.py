"""An ONNX graph as a ``torch.nn.Module``, for the torch fine-tuning backend.

The module runs the graph's nodes in order with the ops of ``torch_ops``. Each float
initializer the trainer trains (``artifacts.trainable``) becomes a ``Parameter`` keyed by
its ONNX name, every other initializer and Constant a buffer, so a weight that two nodes
read is one parameter (tied, as in the graph), and the trained values go back into the
same initializers (``finetune.common.write_back``): the graph's nodes, names, attributes, opsets and
metadata stay as they were.

Why a translator of our own rather than onnx2torch (docs/finetune.md): onnx2torch imports
torchvision, which has no CPU wheel here and pulls a CUDA torch; it has no converter for
opsets 21-22 or ``auto_pad`` SAME_*; it builds a module per node, so a shared weight
becomes two parameters, and mapping its parameters back to initializers needs a
structural match. Here parameters are the initializers themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from wnc_onnx.errors import WncError
from wnc_onnx.finetune.backends.torch.ops import MAX_OPSET, MIN_OPSET, OPS

_CONTROL_FLOW = ("If", "Loop", "Scan")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def unsupported(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op, node name) of every node the backend cannot run."""
    out = []
    for i, n in enumerate(model.graph.node):
        known = n.op_type in OPS or n.op_type == "Constant"
        if n.domain not in ("", "ai.onnx") or not known or n.op_type in _CONTROL_FLOW:
            out.append((n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}", n.name or f"#{i}"))
    return out


def check_supported(model: onnx.ModelProto) -> None:
    """One WncError naming the first node the backend cannot run, or an opset outside its range."""
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise WncError(
            f"the torch backend runs ONNX opsets {MIN_OPSET}-{MAX_OPSET}; this model uses opset {opset}",
            f"convert it with onnx.version_converter.convert_version(model, {min(max(opset, MIN_OPSET), MAX_OPSET)}), "
            "or use --backend ort",
        )
    missing = unsupported(model)
    if missing:
        ops = sorted({o for o, _ in missing})
        first = missing[0]
        raise WncError(
            f"the torch backend cannot run op {first[0]} (node '{first[1]}'"
            + (f"; also {', '.join(o for o in ops if o != first[0])}" if len(ops) > 1 else "")
            + ")",
            "use --backend ort, or fine-tune the model in its source framework",
        )


def _attribute(value: Any) -> Any:
    if isinstance(value, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    return value


def _constant(node: onnx.NodeProto) -> torch.Tensor:
    a = {x.name: x for x in node.attribute}
    if "value" in a:
        return torch.from_numpy(np.array(numpy_helper.to_array(a["value"].t)))
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in a:
            return torch.from_numpy(np.array(helper.get_attribute_value(a[key]), dtype=dtype))
    raise WncError(
        f"Constant node '{node.name}' holds a kind of value the torch backend does not read", "use --backend ort"
    )


class GraphModule(torch.nn.Module):
    """The main graph of ``model`` as a module; ``trainable`` initializers are its parameters."""

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str]) -> None:
        super().__init__()
        check_supported(model)
        g = model.graph
        train = set(trainable)
        self.weights = torch.nn.ParameterDict()
        self._keys: dict[str, str] = {}  # ONNX name -> attribute key (names may hold any character)
        for i, t in enumerate(g.initializer):
            value = torch.from_numpy(np.array(numpy_helper.to_array(t)))
            key = f"t{i}"
            if t.name in train and value.is_floating_point():
                self.weights[key] = torch.nn.Parameter(value)
            else:
                self.register_buffer(key, value, persistent=False)
            self._keys[t.name] = key
        inits = {t.name for t in g.initializer}
        self.inputs = [vi.name for vi in g.input if vi.name not in inits]
        self.outputs = [o.name for o in g.output]
        opset = default_opset(model)
        self._nodes: list[tuple[str, list[str], list[str], dict[str, Any], str]] = []
        for i, n in enumerate(g.node):
            if n.op_type == "Constant":
                key = f"k{i}"
                self.register_buffer(key, _constant(n), persistent=False)
                self._keys[n.output[0]] = key
                continue
            attrs = {a.name: _attribute(helper.get_attribute_value(a)) for a in n.attribute}
            attrs["_opset"], attrs["_outputs"] = opset, len(n.output)
            self._nodes.append((n.op_type, list(n.input), list(n.output), attrs, n.name or f"#{i}"))

    def named_onnx_parameters(self) -> dict[str, torch.nn.Parameter]:
        """ONNX initializer name -> its parameter."""
        return {name: self.weights[key] for name, key in self._keys.items() if key in self.weights}

    def _value(self, key: str) -> torch.Tensor:
        return self.weights[key] if key in self.weights else getattr(self, key)

    def forward(self, *inputs: torch.Tensor, want: Sequence[str] | None = None) -> Any:
        """The graph's outputs (one tensor, or a tuple); with ``want``, a dict of those tensors by
        name (any tensor the graph computes: logits before a softmax, a layer's output)."""
        env: dict[str, Any] = dict(zip(self.inputs, inputs, strict=True))
        for op_type, ins, outs, attrs, node in self._nodes:
            args = [None if not name else env[name] if name in env else self._value(self._keys[name]) for name in ins]
            try:
                values = OPS[op_type](attrs, args)
            except NotImplementedError as exc:  # a form of the op the backend does not have: name the node
                raise NotImplementedError(f"{exc} (node '{node}')") from None
            for name, value in zip(outs, values, strict=False):
                if name:
                    env[name] = value
        if want is not None:
            return {name: env[name] if name in env else self._value(self._keys[name]) for name in want}
        values = [env[name] if name in env else self._value(self._keys[name]) for name in self.outputs]
        return values[0] if len(values) == 1 else tuple(values)
