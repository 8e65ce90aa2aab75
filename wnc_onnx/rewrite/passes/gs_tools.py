"""onnx-graphsurgeon round trips that keep what graphsurgeon drops.

graphsurgeon rebuilds the model on export: node ``doc_string`` / ``metadata_props``
(wnc-onnx's provenance), model metadata, producer and functions would be lost, so they
are copied back by node name (names are unique after the name_nodes pass).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import onnx

from wnc_onnx.analyze.walk import all_graphs

log = logging.getLogger(__name__)


def version() -> str | None:
    """The installed onnx-graphsurgeon version, or None when it cannot be imported."""
    try:
        import onnx_graphsurgeon as gs
    except Exception:  # absent or broken install: the built-in fallback runs
        return None
    return str(getattr(gs, "__version__", "?"))


def roundtrip(model: onnx.ModelProto, work: Callable[[Any], None]) -> onnx.ModelProto:
    """import -> ``work(graph)`` -> export, then restore what export drops. Raises on failure."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    work(graph)
    out = gs.export_onnx(graph)
    _restore(model, out)
    return out


def _restore(src: onnx.ModelProto, out: onnx.ModelProto) -> None:
    nodes = {n.name: n for g in all_graphs(src.graph) for n in g.node if n.name}
    for g in all_graphs(out.graph):
        for n in g.node:
            old = nodes.get(n.name)
            if old is None:
                continue
            if old.doc_string and not n.doc_string:
                n.doc_string = old.doc_string
            if len(old.metadata_props) and not len(n.metadata_props):
                n.metadata_props.extend(old.metadata_props)
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(src, field))
    out.graph.name = src.graph.name
    out.graph.doc_string = src.graph.doc_string
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)
    if not len(out.functions) and len(src.functions):
        out.functions.extend(src.functions)
    have = {o.domain for o in out.opset_import}
    out.opset_import.extend(o for o in src.opset_import if o.domain not in have)
    # graphsurgeon may write "" and "ai.onnx" both; keep one default-domain entry
    default = [o for o in out.opset_import if o.domain in ("", "ai.onnx")]
    if len(default) > 1:
        keep = [o for o in out.opset_import if o.domain not in ("", "ai.onnx")]
        src_default = next(o for o in src.opset_import if o.domain in ("", "ai.onnx"))
        del out.opset_import[:]
        out.opset_import.extend([src_default, *keep])
