"""Walking a model's graphs: the main graph and every If / Loop / Scan body.

No other wnc_onnx import, so every module (external data included) can use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """(attribute label, body) of each If/Loop/Scan (or other) subgraph of ``node``."""
    found: list[tuple[str, onnx.GraphProto]] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            found.append((a.name, a.g))
        elif a.type == onnx.AttributeProto.GRAPHS:
            found.extend((f"{a.name}{i}", g) for i, g in enumerate(a.graphs))
    return found


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every nested subgraph, parents first."""
    yield graph
    for node in graph.node:
        for _, sub in subgraphs(node):
            yield from all_graphs(sub)


def count_nodes(model: onnx.ModelProto) -> int:
    return sum(len(g.node) for g in all_graphs(model.graph))


def count_initializers(model: onnx.ModelProto) -> int:
    return sum(len(g.initializer) for g in all_graphs(model.graph))
