"""Read-only facts about an ONNX graph that the rules need.

Constant weights, consumers of each tensor, and static shapes from ONNX shape
inference (run on a light copy of the model without the large weights).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx

from wnc_onnx import external_data
from wnc_onnx.walk import subgraphs

log = logging.getLogger(__name__)

Dim = int | str | None
_KEEP_DATA_BYTES = 1 << 16  # initializers below this size keep their data for inference
NOT_CONSTANT = "weight is not a constant initializer"


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with large initializers turned into typed graph inputs.

    Checker and shape inference see the same nodes, types and shapes at a fraction of
    the memory and time: the weights' bytes are never copied or serialized."""
    light = onnx.ModelProto()  # built field by field: the large weights are never copied
    for fname in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(light, fname, getattr(model, fname))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    src = model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    input_names = {i.name for i in src.input}
    for init in src.initializer:
        nbytes = external_data.nbytes(init)  # from dims: reading raw_data would copy it; ByteSize is slow
        if nbytes < _KEEP_DATA_BYTES and init.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(init)
        elif init.name not in input_names:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return light


def referenced_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node of ``graph`` or of its nested subgraphs."""
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for _, sub in subgraphs(node):
            names |= referenced_names(sub)
    return names


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads: its inputs plus outer-scope names used by its subgraphs."""
    names = {i for i in node.input if i}
    for _, sub in subgraphs(node):
        names |= referenced_names(sub)
    return names


def prune_unread(graph: onnx.GraphProto, candidates: set[str]) -> set[str]:
    """Remove, in place, what a rewrite left unread: nodes whose first output is in
    ``candidates`` and that nothing reads (repeatedly), initializers in ``candidates``
    that nothing reads, and value_info of tensors that no longer exist.
    Returns the names of the removed initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        reads = {name for n in graph.node for name in node_reads(n)} | outputs
        dead = [
            i
            for i, n in enumerate(graph.node)
            if n.output and n.output[0] in candidates and not any(o in reads for o in n.output)
        ]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    removed: set[str] = set()
    for i in range(len(graph.initializer) - 1, -1, -1):
        name = graph.initializer[i].name
        if name in candidates and name not in reads:
            removed.add(name)
            del graph.initializer[i]
    alive = {o for n in graph.node for o in n.output} | {vi.name for vi in graph.input}
    alive |= {t.name for t in graph.initializer}
    if any(vi.name not in alive for vi in graph.value_info):
        fresh = [vi for vi in graph.value_info if vi.name in alive]
        del graph.value_info[:]
        graph.value_info.extend(fresh)
    return removed


def _value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    infos = list(graph.input) + list(graph.value_info) + list(graph.output)
    for node in graph.node:
        for _, sub in subgraphs(node):
            infos += _value_infos(sub)
    return infos


def infer_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Static shapes of every tensor that shape inference can resolve."""
    shapes: dict[str, list[Dim]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), data_prop=True)
    except Exception as exc:  # inference is advisory: MACs become unknown
        log.warning("shape inference failed (%s); MAC counts may be missing", exc)
        inferred = model
    for vi in _value_infos(inferred.graph):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return shapes


class GraphContext:
    """Index of one graph: initializers, Constant outputs, consumers, shapes."""

    def __init__(
        self,
        model: onnx.ModelProto,
        graph: onnx.GraphProto | None = None,
        prefix: str = "",
        shapes: dict[str, list[Dim]] | None = None,
    ) -> None:
        self.model = model
        self.graph = g = model.graph if graph is None else graph
        self.prefix = prefix  # "<node>/<attribute>/" for a subgraph: qualifies layer names
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.constants: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            for name in node_reads(node):  # implicit uses inside subgraphs count too
                self.consumers[name].append(node)
            for name in node.output:
                self.producers[name] = node
            if node.op_type == "Constant" and len(node.output) == 1:
                self.constants[node.output[0]] = node
        self.graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.shapes = infer_shapes(model) if shapes is None else shapes
        self.node_names = {n.name for n in g.node if n.name}
        self.tensor_names = set(self.producers) | set(self.initializers) | self.graph_inputs

    def chain(self, name: str) -> list[str]:
        """``name`` and, through Identity nodes, the names it copies: [name, ..., source]."""
        names = [name]
        while names[-1] in self.producers and self.producers[names[-1]].op_type == "Identity" and len(names) < 64:
            names.append(self.producers[names[-1]].input[0])
        return names

    def constant_reason(self, name: str) -> str | None:
        """None when ``name`` is a constant weight usable by a rewrite, else why not.

        Identity-wrapped initializers and Constant outputs count as constants."""
        name = self.chain(name)[-1]
        producer = self.producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "weight comes from DequantizeLinear (quantized model): compress the float model, then quantize"
        if name in self.initializers:
            # Before IR 4 every initializer had to be listed as an input: still a constant.
            if name in self.graph_inputs and self.model.ir_version >= 4:
                return "weight is also a graph input (it can be overridden at run time)"
            return None
        if name in self.constants:
            return None
        return NOT_CONSTANT

    def array(self, name: str) -> np.ndarray:
        """The value of a constant tensor (initializer or Constant node, through Identity)."""
        name = self.chain(name)[-1]
        if name in self.initializers:
            return external_data.read_array(self.initializers[name])
        node = self.constants[name]
        for attr in node.attribute:
            if attr.name == "value":
                return external_data.read_array(attr.t)
        raise KeyError(f"Constant {name} has no tensor value")

    def is_external(self, name: str) -> bool:
        """Whether the constant's bytes live in an external data file."""
        name = self.chain(name)[-1]
        t = self.initializers.get(name)
        return t is not None and external_data.is_external(t)

    def dtype(self, name: str) -> int:
        name = self.chain(name)[-1]
        if name in self.initializers:
            return int(self.initializers[name].data_type)
        for attr in self.constants[name].attribute:
            if attr.name == "value":
                return int(attr.t.data_type)
        return onnx.TensorProto.FLOAT

    def weight_shape(self, name: str) -> list[int]:
        name = self.chain(name)[-1]
        if name in self.initializers:
            return [int(d) for d in self.initializers[name].dims]
        return list(self.array(name).shape)

    def numel(self, name: str) -> int:
        name = self.chain(name)[-1]
        if name in self.initializers:
            return int(np.prod(self.initializers[name].dims, dtype=np.int64))
        return int(self.array(name).size)

    def shape(self, name: str) -> list[Dim] | None:
        return self.shapes.get(name)

    def static_size(self, name: str, start: int = 0, stop: int | None = None) -> int | None:
        """Product of dims [start:stop] when all are known integers, else None."""
        shp = self.shapes.get(name)
        if shp is None:
            return None
        dims = [d for d in shp[start:stop] if isinstance(d, int)]
        if len(dims) != len(shp[start:stop]):
            return None
        return int(np.prod(dims, dtype=np.int64)) if dims else 1

    def unique_name(self, base: str, used: set[str]) -> str:
        name, k = base, 1
        while name in used or name in self.tensor_names or name in self.node_names:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name
