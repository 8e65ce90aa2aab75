"""Pass: weights computed from constants become initializers, so the rules can see them.

Exporters sometimes hand a Conv or MatMul a weight made by Mul / Add / Concat ... of
constants. onnx-graphsurgeon's ``fold_constants`` evaluates such subgraphs with
onnxruntime. Only the nodes that compute weights are folded (``foldable_nodes``): shape
arithmetic and the rest of the graph stay as exported, and the pass runs only when such a
node exists (Constant nodes and Identity / Cast / Transpose / Reshape chains of
initializers are read by the rules directly). Quantization nodes are never folded (that would turn a quantized model
into a float one), and weights kept in external data are not (folding would load them
all). If graphsurgeon fails, or its result fails the strict ONNX checker, the model goes
on unfolded and the report says so.
"""

from __future__ import annotations

import importlib.util
import logging
import time

import onnx

from wnc_onnx.analyze.graph import QUANTIZATION_OPS, is_pass_through, skeleton, subgraphs
from wnc_onnx.analyze.walk import all_graphs, count_nodes
from wnc_onnx.errors import one_line
from wnc_onnx.io import external_data
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes import gs_tools
from wnc_onnx.rewrite.passes.base import PassResult

log = logging.getLogger(__name__)

# Ops whose constant inputs are weights the later passes read (kernels, biases, BN parameters).
WEIGHT_READERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Mul", "Add"})


def foldable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute weights from constants, the ones folding replaces.

    A node qualifies when all its inputs are constant and its output feeds, through other
    such nodes only, an input of a Conv / Gemm / MatMul / BatchNormalization / Mul / Add.
    Constant nodes and Identity / float Cast / Transpose / Reshape chains are read by the
    rules directly; shape arithmetic and everything else is left as the exporter wrote it."""
    found = []
    for g in all_graphs(model.graph):
        const = {t.name for t in g.initializer}
        computed: dict[str, onnx.NodeProto] = {}
        through: dict[str, onnx.NodeProto] = {}  # Identity / Cast / Transpose / Reshape of constants
        for n in g.node:
            inputs = [i for i in n.input if i]
            if n.op_type == "Constant":
                const.update(n.output)
                continue
            if inputs and inputs[0] in const and is_pass_through(n, const.__contains__):
                const.update(n.output)
                through.update((o, n) for o in n.output)
                continue
            if inputs and all(i in const for i in inputs) and n.op_type not in QUANTIZATION_OPS and not subgraphs(n):
                const.update(n.output)
                computed.update((o, n) for o in n.output)
        # keep the computed constants that reach a weight reader, walking back from each reader;
        # a pass-through node that feeds one of them is folded with it (graphsurgeon needs
        # every input of a folded node to be constant to it)
        producers = {**through, **computed}
        wanted: set[str] = set()
        stack = [i for n in g.node if n.op_type in WEIGHT_READERS for i in n.input if i in computed]
        while stack:
            node = producers[stack.pop()]
            if node.name in wanted:
                continue
            wanted.add(node.name)
            stack.extend(i for i in node.input if i in producers)
        found += [n.name for n in g.node if n.name in wanted]
    return found


def _initializer_inputs(model: onnx.ModelProto) -> set[str]:
    inits = {t.name for t in model.graph.initializer}
    return {vi.name for vi in model.graph.input if vi.name in inits}


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
                out = self._fold(model, candidates)
                entry["tool"] = f"onnx-graphsurgeon {gs_tools.version()}"
                entry["nodes"] = [count_nodes(model), count_nodes(out)]
                if count_nodes(out) == count_nodes(model):  # graphsurgeon could evaluate nothing
                    entry["status"] = "nothing folded"
                    out = model
                else:
                    entry["status"] = "folded"
                    entry["modified"] = True
            except Exception as exc:  # never a single point of failure: go on unfolded
                msg = one_line(exc, 80)
                log.debug("fold_constants: onnx-graphsurgeon failed (%s); going on unfolded", msg)
                entry["status"] = f"failed: {one_line(exc, 400)}"
                report.warnings.append(
                    f"fold_constants: folding {len(candidates)} weight-computing node(s) failed ({msg}); "
                    "went on without it"
                )
                out = model
        entry["seconds"] = round(time.perf_counter() - start, 3)
        report.passes.append(entry)
        return PassResult(model=out, report=report, modified=out is not model)

    @staticmethod
    def _fold(model: onnx.ModelProto, candidates: list[str]) -> onnx.ModelProto:
        chosen = set(candidates)

        def work(graph) -> None:  # type: ignore[no-untyped-def]
            graph.fold_constants(
                error_ok=False,
                fold_shapes=False,  # shape arithmetic is not a weight; graphsurgeon drops Shape's start/end
                size_threshold=1 << 31,  # only weights are folded, whatever their size (below protobuf's limit)
                should_exclude_node=lambda node: node.name not in chosen,
            ).cleanup(remove_unused_graph_inputs=False)

        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # graphsurgeon evaluates with onnxruntime: no warning spam
        out = gs_tools.roundtrip(model, work)
        if out.ir_version < 4:  # before IR 4 every initializer is listed as a graph input too
            inits = {t.name for t in out.graph.initializer}
            mirrored = _initializer_inputs(model)
            kept = [vi for vi in out.graph.input if vi.name in inits or vi.name not in mirrored]
            listed = {vi.name for vi in kept}
            del out.graph.input[:]
            out.graph.input.extend(kept)
            out.graph.input.extend(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                for t in out.graph.initializer
                if t.name not in listed
            )
        # A fold that breaks the model is a failed fold: the strict checker (with shape
        # inference) must accept the result whenever it accepts the input.
        try:
            onnx.checker.check_model(skeleton(out), full_check=True)
        except Exception as exc:
            try:
                onnx.checker.check_model(skeleton(model), full_check=True)
            except Exception:
                onnx.checker.check_model(skeleton(out))  # the input fails strict checks too: not the fold's doing
            else:
                raise ValueError(f"the folded graph fails the ONNX checker: {one_line(exc, 120)}") from None
        return out
