"""What each graph output is, read from the ops that make it: the tensor whose values can be
trained on or compared, and how.

- An output made by non-differentiable post-processing (ArgMax / ArgMin, TopK, NonMaxSuppression,
  a Cast to an integer type, comparisons) stands for the last float tensor that feeds it.
- Class scores: a Softmax / LogSoftmax (also one written out as Exp / sum) stands for its input,
  the logits, with the softmax axis as the class axis; a rank-3 one is a sequence of scores
  (CTC recognizers: (N, T, C) or (T, N, C)), scored per position. A linear layer's (N, C) output
  with C >= ``MIN_CLASSES`` is taken as raw logits.
- Anything else (boxes, heatmaps, masks, embeddings, audio) is a plain float tensor.

Pass-through ops (Identity, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, a float Cast) are
looked through. Shapes come from ONNX shape inference where they are static.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from wnc_onnx.analyze.graph import FLOAT_TYPES, infer_shapes

# Ops whose output carries no gradient back to their float input: the head is that input.
POST_PROCESSING = frozenset(
    {"ArgMax", "ArgMin", "TopK", "NonMaxSuppression", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
)
PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
LINEAR_OPS = frozenset({"Gemm", "MatMul", "Add"})
# A linear layer's output counts as class scores from this many classes on: below it,
# (N, 3) MOS scores, (N, 4) boxes and the like are far more often regressions.
MIN_CLASSES = 10


@dataclass(frozen=True)
class Head:
    """One graph output as training sees it.

    ``tensor``: what is trained on (the output itself, the logits before its softmax, or the
    float scores before post-processing); ``kind``: "classes" (``axis`` is the class axis) or
    "values"; ``why``: how it was read from the graph."""

    output: str
    tensor: str
    kind: str
    axis: int
    rank: int | None
    why: str
    # the float tensor an output made by post-processing comes from (where its error means
    # something), and that post-processing; the output itself and None otherwise
    measured: str = ""
    post: str | None = None

    @property
    def classes(self) -> bool:
        return self.kind == "classes"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _is_integer_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and _attr(node, "to", onnx.TensorProto.FLOAT) not in FLOAT_TYPES


def _float_input(node: onnx.NodeProto) -> str | None:
    """The input a post-processing node reads its scores from (NMS: the scores, input 1)."""
    if node.op_type == "NonMaxSuppression":
        return node.input[1] if len(node.input) > 1 else None
    return node.input[0] if node.input else None


def heads(model: onnx.ModelProto, shapes: dict[str, list[int | str | None]] | None = None) -> list[Head]:
    """The head of every graph output of ``model``'s main graph, in output order."""
    graph = model.graph
    prod = _producers(graph)
    shapes = infer_shapes(model) if shapes is None else shapes
    opset = _opset(model)
    out = []
    for o in graph.output:
        out.append(_head(o.name, prod, shapes, opset))
    return out


def _rank(shapes: dict[str, list[int | str | None]], name: str) -> int | None:
    dims = shapes.get(name)
    return len(dims) if dims is not None else None


def _head(name: str, prod: dict[str, onnx.NodeProto], shapes: dict[str, list[int | str | None]], opset: int) -> Head:
    tensor, why, post = name, [], None
    # 1. through post-processing to the float scores
    for _ in range(32):
        node = prod.get(tensor)
        if node is None:
            break
        if node.op_type in PASS_THROUGH or (node.op_type == "Cast" and not _is_integer_cast(node)):
            tensor = node.input[0]
            continue
        if node.op_type in POST_PROCESSING or _is_integer_cast(node):
            src = _float_input(node)
            if src is None:
                break
            why.append(f"{node.op_type} '{node.name}' makes it from '{src}'")
            post = post or f"{node.op_type} '{node.name}'"
            tensor = src
            continue
        break
    measured = tensor if post else name
    # 2. a softmax: its input, the logits
    node = prod.get(tensor)
    looked = tensor
    while node is not None and (node.op_type in PASS_THROUGH or node.op_type == "Cast"):
        looked = node.input[0]
        node = prod.get(looked)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        axis = _attr(node, "axis", -1 if opset >= 13 else 1)
        rank = _rank(shapes, node.input[0])
        if rank is not None and axis < 0:
            axis += rank
        why.append(f"{node.op_type} '{node.name}': trained on its input, the logits")
        if rank is not None and rank >= 3:
            why.append("per position")
        return Head(name, node.input[0], "classes", axis, rank, "; ".join(why), measured, post)
    if node is not None and node.op_type == "Div" and node.input:
        num = prod.get(node.input[0])
        if num is not None and num.op_type == "Exp":
            rank = _rank(shapes, num.input[0])
            why.append(f"softmax written out as Exp / sum ('{node.name}'): trained on the Exp's input")
            return Head(name, num.input[0], "classes", (rank or 2) - 1, rank, "; ".join(why), measured, post)
    # 3. raw logits of a linear layer
    dims = shapes.get(tensor)
    if node is not None and node.op_type in LINEAR_OPS and dims is not None and len(dims) == 2:
        classes = dims[1]
        if isinstance(classes, int) and classes >= MIN_CLASSES:
            why.append(f"a {node.op_type}'s ({classes}) scores: raw logits")
            return Head(name, tensor, "classes", 1, 2, "; ".join(why), measured, post)
    why.append("float values")
    return Head(name, tensor, "values", -1, _rank(shapes, tensor), "; ".join(why), measured, post)


def measured(model: onnx.ModelProto) -> dict[str, str]:
    """output -> the tensor its error is measured at: the float tensor that feeds an output made
    by post-processing (ArgMax, TopK, NMS, a Cast to integers), else the output itself."""
    return {h.output: h.measured or h.output for h in heads(model)}
