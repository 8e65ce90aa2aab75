"""Pass: every node gets a unique, readable name (Netron, --ranks and the report use them).

Unnamed nodes become ``<OpType>_<index in its graph>``; repeated names get ``_2``, ``_3``...
Names are unique across the main graph and all subgraphs.
"""

from __future__ import annotations

import logging
import time

import onnx

from wnc_onnx.analyze.walk import all_graphs
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes.base import PassResult, working_copy

log = logging.getLogger(__name__)


def _needs_names(model: onnx.ModelProto) -> bool:
    seen: set[str] = set()
    for g in all_graphs(model.graph):
        for n in g.node:
            if not n.name or n.name in seen:
                return True
            seen.add(n.name)
    return False


class NameNodesPass:
    name = "name_nodes"

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        start = time.perf_counter()
        named = renamed = 0
        if _needs_names(model):
            model = working_copy(model, in_place)
            graphs = list(all_graphs(model.graph))
            taken = {n.name for g in graphs for n in g.node if n.name}
            seen: set[str] = set()
            for g in graphs:
                for i, n in enumerate(g.node):
                    if n.name and n.name not in seen:
                        seen.add(n.name)
                        continue
                    base = n.name or f"{n.op_type}_{i}"
                    name, k = base, 1
                    while name in seen or (name != n.name and name in taken):
                        k += 1
                        name = f"{base}_{k}"
                    named += not n.name
                    renamed += bool(n.name)
                    n.name = name
                    seen.add(name)
                    taken.add(name)
        if renamed:
            report.warnings.append(f"{renamed} repeated node name(s) made unique with a _2, _3 ... suffix")
        report.passes.append(
            {
                "name": self.name,
                "seconds": round(time.perf_counter() - start, 3),
                "modified": bool(named or renamed),
                "named": named,
                "renamed": renamed,
            }
        )
        return PassResult(model=model, report=report, modified=bool(named or renamed))
