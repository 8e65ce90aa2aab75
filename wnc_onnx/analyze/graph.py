"""Read-only facts about an ONNX graph that the rules need.

Constant weights, consumers of each tensor, and static shapes from ONNX shape
inference (run on a light copy of the model without the large weights).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from wnc_onnx.analyze.walk import all_graphs, subgraphs
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io import external_data

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


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (graph inputs and outputs
    already returned are not added again): for reading intermediate tensors in onnxruntime."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in have)
    return probe


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


def mirrors_inputs(model: onnx.ModelProto, graph: onnx.GraphProto) -> bool:
    """Whether ``graph`` lists its initializers as inputs because the IR requires it (IR < 4)."""
    return model.ir_version < 4 and graph is model.graph


def add_initializers(model: onnx.ModelProto, graph: onnx.GraphProto, tensors: list[onnx.TensorProto]) -> None:
    """Append initializers to ``graph``; before IR 4 the main graph lists them as inputs too."""
    graph.initializer.extend(tensors)
    if mirrors_inputs(model, graph):
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors)


def prune_unread(graph: onnx.GraphProto, candidates: set[str], mirrored_inputs: bool = False) -> set[str]:
    """Remove, in place, what a rewrite left unread: nodes whose first output is in
    ``candidates`` and that nothing reads (repeatedly), initializers in ``candidates``
    that nothing reads, and value_info of tensors that no longer exist.

    An initializer that is also a graph input is part of the graph's interface (an input
    with a default): it stays, unless ``mirrored_inputs`` (IR < 4, where every
    initializer is listed as an input), when its input entry goes with it.
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
    inputs = {vi.name for vi in graph.input}
    for i in range(len(graph.initializer) - 1, -1, -1):
        name = graph.initializer[i].name
        if name in candidates and name not in reads and (name not in inputs or mirrored_inputs):
            removed.add(name)
            del graph.initializer[i]
    if removed & inputs:
        keep = [vi for vi in graph.input if vi.name not in removed]
        del graph.input[:]
        graph.input.extend(keep)
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


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers: what a caller feeds."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _apply_input_shapes(light: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], names: set[str]) -> None:
    """Set the dims of the inputs ``names`` of ``light`` (a skeleton), in place.

    A name that is not one of them, or a rank that does not match, is a WncError."""
    inputs = {vi.name: vi for vi in light.graph.input if vi.name in names}
    unknown = sorted(set(input_shapes) - set(inputs))
    if unknown:
        raise WncError(f"--input-shape names unknown input(s) {unknown}", f"the model's inputs are {sorted(inputs)}")
    for name, dims in input_shapes.items():
        tt = inputs[name].type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
            raise WncError(
                f"--input-shape {name}={','.join(map(str, dims))} has {len(dims)} dims, "
                f"the input has {len(tt.shape.dim)}",
                f"give {len(tt.shape.dim)} dims, e.g. --input-shape {shape_hint(inputs[name])}",
            )
        del tt.shape.dim[:]
        for d in dims:
            tt.shape.dim.add().dim_value = int(d)


def shape_hint(vi: onnx.ValueInfoProto) -> str:
    """``NAME=1,3,<height>,<width>`` for an input: dynamic dims as placeholders (batch: 1)."""
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(str(d.dim_value))
        elif i == 0:
            dims.append("1")
        else:
            dims.append(f"<{d.dim_param}>" if d.dim_param.isidentifier() else f"<D{i}>")
    return f"{vi.name}={','.join(dims)}"


def dynamic_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs (not initializers) with a dim that is not a fixed positive integer."""
    out = []
    for vi in data_inputs(model):
        if not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims):
            out.append(vi)
    return out


def infer_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, list[Dim]]:
    """Static shapes of every tensor that shape inference can resolve (inputs set to
    ``input_shapes`` first, where given)."""
    shapes: dict[str, list[Dim]] = {}
    light = skeleton(model)  # its large initializers become inputs: only the model's own inputs may be sized
    if input_shapes:
        _apply_input_shapes(light, input_shapes, {vi.name for vi in data_inputs(model)})
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # inference is advisory: MACs become unknown
        log.warning("shape inference failed (%s); MAC counts may be missing", one_line(exc, 200))
        inferred = light
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


# Ops only a quantized model holds (QDQ pairs, integer kernels): folding leaves them alone,
# --int8 refuses a model that has them, finetune names its float parent.
QUANTIZATION_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QGemm",
        "QAttention",
    }
)

FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)


def _cast_to(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "to"), onnx.TensorProto.FLOAT)


def is_pass_through(node: onnx.NodeProto, constant: Callable[[str], bool]) -> bool:
    """A node whose output the rules compute from its first input with numpy: Identity, a
    Cast between float types, a Transpose, or a Reshape to a constant shape
    (``constant(name)`` says whether a tensor is a constant)."""
    if node.op_type in ("Identity", "Transpose"):
        return True
    if node.op_type == "Cast":
        return _cast_to(node) in FLOAT_TYPES
    return node.op_type == "Reshape" and len(node.input) > 1 and constant(node.input[1])


def apply_pass_through(node: onnx.NodeProto, value: np.ndarray, shape: np.ndarray | None = None) -> np.ndarray:
    """``node`` (see ``is_pass_through``) applied to ``value``; ``shape`` is a Reshape's target."""
    if node.op_type == "Cast":
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(_cast_to(node)))
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return np.transpose(value, perm or None)
    if node.op_type == "Reshape":
        assert shape is not None
        allow_zero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
        dims = [int(d) for d in shape.reshape(-1)]
        if not allow_zero:  # 0 copies the input's dim
            dims = [value.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return value.reshape(dims)
    return value


def count_reads(graph: onnx.GraphProto) -> dict[str, int]:
    """How many nodes read each name as a direct input, over ``graph`` and all its subgraphs."""
    counts: dict[str, int] = defaultdict(int)
    for g in all_graphs(graph):
        for node in g.node:
            for name in set(node.input):
                if name:
                    counts[name] += 1
    return counts


class GraphContext:
    """Index of one graph: initializers, Constant outputs, consumers, shapes.

    A subgraph's context has ``outer``, the context of the graph around it: weights that
    the subgraph reads from there are found too; ``reads`` counts uses over the whole model."""

    def __init__(
        self,
        model: onnx.ModelProto,
        graph: onnx.GraphProto | None = None,
        prefix: str = "",
        shapes: dict[str, list[Dim]] | None = None,
        outer: GraphContext | None = None,
        reads: dict[str, int] | None = None,
    ) -> None:
        self.model = model
        self.outer = outer
        self.reads = reads
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
        """``name`` and, through Identity / float Cast / Transpose / Reshape-to-a-constant-shape
        nodes, the names it comes from: [name, ..., source]. The rules read such a weight
        directly (no folding needed).
        Names from enclosing graphs are followed too (a subgraph may read outer weights)."""
        names = [name]
        while len(names) < 64:
            owner = self._owner(names[-1])
            node = owner.producers.get(names[-1])
            if node is None or not node.input or not is_pass_through(node, owner._is_constant):
                break
            names.append(node.input[0])
        return names

    def _is_constant(self, name: str) -> bool:
        return self.constant_reason(name) is None

    def _owner(self, name: str) -> GraphContext:
        """The graph (this one or an enclosing one) where ``name`` is defined."""
        ctx: GraphContext | None = self
        while ctx is not None:
            if name in ctx.producers or name in ctx.initializers or name in ctx.graph_inputs:
                return ctx
            ctx = ctx.outer
        return self

    def _source(self, name: str) -> tuple[GraphContext, str]:
        source = self.chain(name)[-1]
        return self._owner(source), source

    def uses(self, name: str) -> int:
        """How many nodes read ``name``, in this graph, its subgraphs and the graphs around it."""
        if self.reads is not None:
            return self.reads.get(name, 0)
        return len(self.consumers.get(name, []))

    def constant_reason(self, name: str) -> str | None:
        """None when ``name`` is a constant weight usable by a rewrite, else why not.

        Initializers and Constant outputs, also behind the nodes ``chain`` follows or in an
        enclosing graph, count as constants."""
        ctx, name = self._source(name)
        producer = ctx.producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "weight comes from DequantizeLinear (quantized model): compress the float model, then quantize"
        if name in ctx.initializers:
            # Before IR 4 every initializer had to be listed as an input: still a constant.
            if name in ctx.graph_inputs and self.model.ir_version >= 4:
                return "weight is also a graph input (it can be overridden at run time; see --keep-initializer-inputs)"
            return None
        if name in ctx.constants:
            return None
        return NOT_CONSTANT

    def array(self, name: str) -> np.ndarray:
        """The value of a constant tensor (initializer or Constant node, through ``chain``)."""
        names = self.chain(name)
        ctx, source = self._owner(names[-1]), names[-1]
        if source in ctx.initializers:
            value = external_data.read_array(ctx.initializers[source])
        else:
            tensors = [a.t for a in ctx.constants[source].attribute if a.name == "value"]
            if not tensors:
                raise KeyError(f"Constant {source} has no tensor value")
            value = external_data.read_array(tensors[0])
        for outer in reversed(names[:-1]):  # apply the chain, source first
            node = self._owner(outer).producers[outer]
            shape = self.array(node.input[1]) if node.op_type == "Reshape" else None
            value = apply_pass_through(node, value, shape)
        return value

    def is_external(self, name: str) -> bool:
        """Whether the constant's bytes live in an external data file."""
        ctx, name = self._source(name)
        t = ctx.initializers.get(name)
        return t is not None and external_data.is_external(t)

    def storage_dtype(self, name: str) -> int:
        """The element type the constant is stored in (before any Cast)."""
        ctx, name = self._source(name)
        if name in ctx.initializers:
            return int(ctx.initializers[name].data_type)
        for attr in ctx.constants[name].attribute:
            if attr.name == "value":
                return int(attr.t.data_type)
        return onnx.TensorProto.FLOAT

    def dtype(self, name: str) -> int:
        """The element type the layer computes in: the nearest Cast's target, else the storage type."""
        for n in self.chain(name)[:-1]:
            node = self._owner(n).producers[n]
            if node.op_type == "Cast":
                return _cast_to(node)
        return self.storage_dtype(name)

    def _reshaped(self, name: str) -> bool:
        """Whether a Transpose / Reshape sits between ``name`` and its stored source."""
        return any(self._owner(n).producers[n].op_type in ("Transpose", "Reshape") for n in self.chain(name)[:-1])

    def weight_shape(self, name: str) -> list[int]:
        ctx, source = self._source(name)
        if source in ctx.initializers and not self._reshaped(name):
            return [int(d) for d in ctx.initializers[source].dims]
        return list(self.array(name).shape)

    def numel(self, name: str) -> int:
        ctx, source = self._source(name)
        if source in ctx.initializers:  # Transpose / Reshape keep the count
            return int(np.prod(ctx.initializers[source].dims, dtype=np.int64))
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
