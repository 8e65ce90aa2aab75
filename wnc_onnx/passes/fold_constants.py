"""Pass: weights computed from constants become initializers, so the rules can see them.

Exporters sometimes hand a Conv or MatMul a weight made by Cast / Transpose / Reshape /
Mul ... of constants. onnx-graphsurgeon's ``fold_constants`` evaluates such subgraphs with
onnxruntime. It only runs when the graph has such a node (plain Constant nodes and
Identity-wrapped initializers are read directly by the rules), never folds quantization
nodes (that would turn a quantized model into a float one), and is skipped for weights
kept in external data (folding would load them all). If graphsurgeon fails, the model
goes on unfolded and the report says so.
"""

from __future__ import annotations

import importlib.util
import logging
import time

import onnx

from wnc_onnx import external_data
from wnc_onnx.errors import one_line
from wnc_onnx.graph import skeleton, subgraphs
from wnc_onnx.passes import gs_tools
from wnc_onnx.passes.base import PassResult
from wnc_onnx.report import Report
from wnc_onnx.walk import all_graphs, count_nodes

log = logging.getLogger(__name__)

QUANTIZATION_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)
_PASS_THROUGH = frozenset({"Constant", "Identity"})  # the rules read these without folding


def foldable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes whose inputs are all constant (and that folding would replace)."""
    const = {t.name for g in all_graphs(model.graph) for t in g.initializer}
    found = []
    for g in all_graphs(model.graph):
        for n in g.node:
            inputs = [i for i in n.input if i]
            if n.op_type == "Constant" or (n.op_type == "Identity" and inputs and inputs[0] in const):
                const.update(n.output)
                continue
            if (
                inputs
                and all(i in const for i in inputs)
                and n.op_type not in QUANTIZATION_OPS
                and n.op_type not in _PASS_THROUGH
                and not subgraphs(n)
            ):
                const.update(n.output)
                found.append(n.name)
    return found


class FoldConstantsPass:
    name = "fold_constants"

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        start = time.perf_counter()
        entry: dict[str, object] = {"name": self.name, "modified": False}
        candidates = foldable_nodes(model)
        entry["candidates"] = len(candidates)
        out = model
        if not candidates:
            entry["status"] = "nothing to fold"
        elif external_data.has_external(model):
            entry["status"] = "skipped: weights in external data"
            report.warnings.append(
                f"fold_constants: {len(candidates)} node(s) compute constants, not folded because the weights are "
                "in external data; layers fed by them are listed as skipped"
            )
        elif gs_tools.version() is None:
            entry["status"] = "skipped: onnx-graphsurgeon is not importable"
            report.warnings.append("fold_constants: onnx-graphsurgeon is not importable; constants not folded")
        elif importlib.util.find_spec("onnxruntime") is None:
            entry["status"] = "skipped: onnxruntime is not installed"
            report.warnings.append(
                "fold_constants: onnxruntime is not installed (graphsurgeon folds with it); constants not folded; "
                "pip install 'wnc-onnx[runtime]'"
            )
        else:
            try:
                out = self._fold(model)
                entry["tool"] = f"onnx-graphsurgeon {gs_tools.version()}"
                entry["status"] = "folded"
                entry["modified"] = True
                entry["nodes"] = [count_nodes(model), count_nodes(out)]
            except Exception as exc:  # never a single point of failure: go on unfolded
                msg = one_line(exc, 200)
                log.info("fold_constants: onnx-graphsurgeon failed (%s); going on unfolded", msg)
                entry["status"] = f"failed: {msg}"
                report.warnings.append(
                    f"fold_constants: onnx-graphsurgeon failed ({msg}); went on without folding "
                    f"({len(candidates)} node(s) compute constants)"
                )
                out = model
        entry["seconds"] = round(time.perf_counter() - start, 3)
        report.passes.append(entry)
        return PassResult(model=out, report=report, modified=out is not model)

    @staticmethod
    def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
        largest = max((external_data.nbytes(t) for t in external_data.all_tensors(model)), default=0)

        def work(graph) -> None:  # type: ignore[no-untyped-def]
            graph.fold_constants(
                error_ok=False,
                size_threshold=max(1 << 20, 4 * largest),
                should_exclude_node=lambda node: node.op in QUANTIZATION_OPS,
            ).cleanup(remove_unused_graph_inputs=False)

        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # graphsurgeon evaluates with onnxruntime: no warning spam
        out = gs_tools.roundtrip(model, work)
        onnx.checker.check_model(skeleton(out))  # a fold that breaks the model is a failed fold
        return out
