"""Fold BatchNormalization (and per-channel Mul / Add by constants) into the Conv or Gemm
that feeds it, so VBMF sees the kernel the network really applies.

Rule: match a BatchNormalization / Mul / Add whose data input is the only use of a
Conv (or Gemm) output; check that the weights and the affine parameters are constants
of per-output-channel shape; rewrite by scaling the kernel, shifting the bias, and
letting the Conv write the folded node's output.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
from onnx import numpy_helper

from wnc_onnx.analyze.graph import GraphContext, add_initializers, mirrors_inputs, prune_unread, subgraphs
from wnc_onnx.analyze.walk import all_graphs
from wnc_onnx.io import external_data
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes.base import PassResult, working_copy
from wnc_onnx.rewrite.passes.rules.base import attr_float, attr_int

log = logging.getLogger(__name__)


class FoldBatchNormPass:
    name = "fold_batchnorm"

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        start = time.perf_counter()
        model = working_copy(model, in_place)
        folded: list[str] = []
        skipped: list[str] = []
        shapes: dict = {}  # folding needs no tensor shapes (weights carry theirs)
        targets = {"BatchNormalization", "Mul", "Add"}
        graphs = (
            [(model.graph, "")] if any(n.op_type in targets for g in all_graphs(model.graph) for n in g.node) else []
        )
        for graph, prefix in graphs:  # main graph, then nested bodies
            while self._fold_one(model, graph, prefix, shapes, folded, skipped):
                pass
            for index, node in enumerate(graph.node):
                for label, sub in subgraphs(node):
                    graphs.append((sub, f"{prefix}{node.name or f'{node.op_type}_{index}'}/{label}/"))
        report.passes.append(
            {
                "name": self.name,
                "seconds": round(time.perf_counter() - start, 3),
                "modified": bool(folded),
                "folded": folded,
                "not_folded": skipped,
            }
        )
        if folded:
            log.info("folded %d BatchNormalization/Mul/Add node(s) into their Conv/Gemm", len(folded))
        return PassResult(model=model, report=report, modified=bool(folded))

    def _fold_one(
        self,
        model: onnx.ModelProto,
        graph: onnx.GraphProto,
        prefix: str,
        shapes: dict,
        folded: list[str],
        skipped: list[str],
    ) -> bool:  # type: ignore[type-arg]
        ctx = GraphContext(model, graph, prefix, shapes)
        for index, node in enumerate(graph.node):
            if node.op_type not in ("BatchNormalization", "Mul", "Add"):
                continue
            label = prefix + (node.name or f"{node.op_type}_{index}")
            found = self._match(node, ctx)
            if found is None:
                continue
            producer, scale, shift, reason = found
            if reason:
                if node.op_type == "BatchNormalization" and label not in skipped:
                    skipped.append(f"{label}: {reason}")
                continue
            self._rewrite(graph, ctx, producer, node, scale, shift)
            folded.append(label)
            return True
        return False

    def _match(self, node: onnx.NodeProto, ctx: GraphContext):  # type: ignore[no-untyped-def]
        """(producer, per-channel scale, per-channel shift, reason-not-to-fold) or None."""
        data = node.input[0]
        producer = ctx.producers.get(data)
        if node.op_type in ("Mul", "Add"):
            other = node.input[1]
            if producer is None or producer.op_type not in ("Conv", "Gemm"):
                data, other = node.input[1], node.input[0]
                producer = ctx.producers.get(data)
            if producer is None or producer.op_type not in ("Conv", "Gemm") or ctx.constant_reason(other):
                return None
        elif producer is None or producer.op_type not in ("Conv", "Gemm"):
            return None
        if len(ctx.consumers.get(data, [])) != 1 or data in ctx.graph_outputs:
            return producer, None, None, "the Conv/Gemm output has other uses"
        w = producer.input[1]
        reason = ctx.constant_reason(w)
        if reason is None and len(ctx.consumers.get(w, [])) > 1:
            reason = "the weight is shared"
        if reason is None and len(producer.input) > 2 and producer.input[2] and ctx.constant_reason(producer.input[2]):
            reason = "the bias is not constant"
        if reason:
            return producer, None, None, reason
        t = self._out_channels(producer, ctx)
        gemm_c = producer.input[2] if producer.op_type == "Gemm" and len(producer.input) > 2 else ""
        if gemm_c and ctx.array(gemm_c).size not in (1, t):
            return producer, None, None, "Gemm C is not a per-feature vector"
        if node.op_type == "BatchNormalization":
            if len(node.output) > 1 and any(node.output[1:]) or attr_int(node, "training_mode", 0):
                return producer, None, None, "training-mode BatchNormalization"
            params = node.input[1:5]
            if any(ctx.constant_reason(p) for p in params):
                return producer, None, None, "BatchNormalization parameters are not constant"
            gamma, beta, mean, var = (ctx.array(p).astype(np.float64).reshape(-1) for p in params)
            eps = attr_float(node, "epsilon", 1e-5)
            s = gamma / np.sqrt(var + eps)
            return producer, s, beta - mean * s, None
        value = ctx.array(node.input[1] if node.input[0] == data else node.input[0]).astype(np.float64)
        per_channel = _per_channel(value, t, producer.op_type)
        if per_channel is None:
            return None
        if node.op_type == "Mul":
            return producer, per_channel, np.zeros_like(per_channel), None
        return producer, np.ones_like(per_channel), per_channel, None

    @staticmethod
    def _out_channels(producer: onnx.NodeProto, ctx: GraphContext) -> int:
        shape = ctx.weight_shape(producer.input[1])
        if producer.op_type == "Conv":
            return shape[0]
        return shape[0] if attr_int(producer, "transB", 0) else shape[1]

    def _rewrite(
        self,
        graph: onnx.GraphProto,
        ctx: GraphContext,
        producer: onnx.NodeProto,
        node: onnx.NodeProto,
        scale: np.ndarray,
        shift: np.ndarray,
    ) -> None:
        w_name = producer.input[1]
        w = ctx.array(w_name)
        w64 = w.astype(np.float64)
        t = self._out_channels(producer, ctx)
        old_bias = producer.input[2] if len(producer.input) > 2 and producer.input[2] else None
        b = ctx.array(old_bias).astype(np.float64).reshape(-1) if old_bias else np.zeros(1)
        b = np.broadcast_to(b, (t,)).astype(np.float64)
        if producer.op_type == "Conv":
            w_new = w64 * scale.reshape((-1,) + (1,) * (w64.ndim - 1))
        else:  # Gemm: scale the output columns of B'; C moves inside with beta folded in
            w_new = w64 * (scale[:, None] if attr_int(producer, "transB", 0) else scale[None, :])
            b = b * attr_float(producer, "beta", 1.0)
            for a in producer.attribute:
                if a.name == "beta":
                    a.f = 1.0
        b_new = b * scale + shift
        used: set[str] = set()
        new_w = ctx.unique_name(f"{w_name}/folded", used)
        new_b = ctx.unique_name(f"{producer.name or w_name}/folded_bias", used)
        folded = [numpy_helper.from_array(v.astype(w.dtype), n) for v, n in ((w_new, new_w), (b_new, new_b))]
        if ctx.is_external(w_name):  # weights read from disk go back to disk, not to memory
            folded = [external_data.spill(tensor) for tensor in folded]
        add_initializers(ctx.model, graph, folded)
        producer.input[1] = new_w
        if old_bias:
            producer.input[2] = new_b
        else:
            producer.input.append(new_b)
        producer.output[0] = node.output[0]
        position = next(
            i
            for i, n in enumerate(graph.node)
            if n.output and n.output[0] == node.output[0] and n.op_type == node.op_type
        )
        del graph.node[position]
        # Drop what only the old layer used: its weight, bias, the BN / Mul / Add constants.
        dead = {name for src in [w_name, *node.input, *([old_bias] if old_bias else [])] for name in ctx.chain(src)}
        prune_unread(graph, dead, mirrors_inputs(ctx.model, graph))


def _per_channel(value: np.ndarray, t: int, op_type: str) -> np.ndarray | None:
    """A constant that acts per output channel: scalar, (T,), (1,T,1..) / (T,1..) for Conv."""
    if value.size == 1:
        return np.full(t, float(value.reshape(-1)[0]))
    squeezed = value.reshape(-1) if value.size == t else None
    if squeezed is None:
        return None
    if op_type == "Conv":
        dims = list(value.shape)
        # (T,1,1), (1,T,1,1): the channel axis must be the one of size T right before spatial axes
        if value.ndim >= 2 and dims.count(t) == 1 and all(d == 1 for d in dims[dims.index(t) + 1 :]):
            return squeezed
        return None
    return squeezed if value.shape[-1] == t else None
