"""Pass: a clean output graph. Dead nodes and initializers go, nodes are in topological
order and intermediate tensors carry shapes from ONNX shape inference (Netron shows them).

onnx-graphsurgeon decides which nodes are dead and the order, on a weight-free view of the
model (``skeleton``: large weights become typed graph inputs, so they are never copied); the
decision is applied to the model's own nodes, so their names, doc strings and metadata stay
as they are, and an initializer that no kept node reads (in its graph or a nested one) goes
with them. A graph input stays (it is the interface; before IR 4, where every initializer is
also an input, an initializer and its input entry go together). When graphsurgeon fails on a model
the graph is left as it is, with a note: the rewriting passes remove what they replace
themselves, so only dead code the input already had would remain.
"""

from __future__ import annotations

import logging
import time

import onnx

from wnc_onnx.analyze.graph import mirrors_inputs, prune_unread, skeleton, subgraphs
from wnc_onnx.analyze.walk import count_initializers, count_nodes
from wnc_onnx.errors import one_line
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes import gs_tools
from wnc_onnx.rewrite.passes.base import PassResult, working_copy

log = logging.getLogger(__name__)


class CleanupPass:
    name = "cleanup"

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        start = time.perf_counter()
        model = working_copy(model, in_place)
        nodes_before, inits_before = count_nodes(model), count_initializers(model)
        tool = "none"
        version = gs_tools.version()
        if version is None:
            report.warnings.append("cleanup: onnx-graphsurgeon is not importable; dead nodes were not removed")
        else:
            try:
                _apply_gs_decision(model)
                tool = f"onnx-graphsurgeon {version}"
            except Exception as exc:  # a helper library is never a single point of failure
                msg = one_line(exc, 200)
                log.info("cleanup: onnx-graphsurgeon failed (%s); the graph is left as it is", msg)
                report.warnings.append(f"cleanup: onnx-graphsurgeon failed ({msg}); dead nodes were not removed")
        shapes = _infer_value_info(model, report)
        removed_nodes = nodes_before - count_nodes(model)
        removed_inits = inits_before - count_initializers(model)
        modified = bool(removed_nodes or removed_inits or shapes)
        report.passes.append(
            {
                "name": self.name,
                "seconds": round(time.perf_counter() - start, 3),
                "modified": modified,
                "tool": tool,
                "removed_nodes": removed_nodes,
                "removed_initializers": removed_inits,
                "value_info": shapes,
            }
        )
        return PassResult(model=model, report=report, modified=modified)


def _apply_gs_decision(model: onnx.ModelProto) -> None:
    """graphsurgeon cleanup + toposort on the skeleton; keep and order our nodes as it decided."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(skeleton(model))
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort(recurse_subgraphs=True)
    decided = gs.export_onnx(graph, do_type_check=False)
    _apply(model.graph, decided.graph, mirrors_inputs(model, model.graph))


def _apply(mine: onnx.GraphProto, theirs: onnx.GraphProto, mirrored: bool = False) -> None:
    by_name = {n.name: n for n in mine.node}
    if len(by_name) != len(mine.node):
        raise ValueError("node names are not unique")
    order = []
    for n in theirs.node:
        if n.name not in by_name:
            raise ValueError(f"graphsurgeon returned an unknown node '{n.name}'")
        order.append(by_name[n.name])
    if len({id(n) for n in order}) != len(order):
        raise ValueError("graphsurgeon returned a node twice")
    for kept, decided in zip(order, theirs.node, strict=True):
        for (_, sub_mine), (_, sub_theirs) in zip(subgraphs(kept), subgraphs(decided), strict=True):
            _apply(sub_mine, sub_theirs)
    # keep protos of surviving nodes (CopyFrom: the repeated field owns its elements)
    copies = []
    for n in order:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    del mine.node[:]
    mine.node.extend(copies)
    # initializers that no kept node reads go with the nodes (the passes' own remover: no node
    # output is a candidate, so it removes initializers, their IR < 4 input entries and stale
    # value_info only; an initializer that is an interface input stays)
    prune_unread(mine, {t.name for t in mine.initializer}, mirrored)


def _infer_value_info(model: onnx.ModelProto, report: Report) -> int:
    """Shapes and types of the main graph's intermediate tensors, from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), data_prop=True)
    except Exception as exc:
        report.warnings.append(f"cleanup: shape inference failed ({one_line(exc, 160)})")
        return 0
    produced = {o for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    infos = [
        vi
        for vi in inferred.graph.value_info
        if vi.name in produced and vi.name not in outputs and vi.type.HasField("tensor_type")
    ]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    return len(infos)
