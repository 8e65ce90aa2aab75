"""One-layer models: the original node, or the nodes a form would emit, at the layer's real input size.

The replacement nodes come from the layer's own rule (``rule.rewrite``) fed with random
factors of the form's shapes, so what is timed is exactly what the pass would write.
Weights are random: their values do not change the speed of dense kernels."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wnc_onnx.analyze.graph import GraphContext, data_inputs
from wnc_onnx.analyze.layer import Factors, Layer
from wnc_onnx.check.latency.forms import Form
from wnc_onnx.data.feeds import random_inputs
from wnc_onnx.errors import one_line
from wnc_onnx.io.session import session

log = logging.getLogger(__name__)


class NotTimeable(Exception):
    """The layer cannot be timed alone (an input of unknown size); the message says why."""


def _factors(layer: Layer, form: Form, rng: np.random.Generator) -> Factors:
    s, t, sp = layer.s, layer.t, tuple(layer.spatial)
    groups = []
    for _ in range(layer.groups):
        if form.method == "tucker2":
            r3 = int(form.r3 or 1)
            g = {
                "core": rng.standard_normal((form.r4, r3, *sp)),
                "u_in": rng.standard_normal((s, r3)),
                "u_out": rng.standard_normal((t, form.r4)),
            }
        elif form.method == "tucker1" or layer.rule in ("conv", "flatten_gemm"):
            # conv rules write SVD (a 1x1 conv) as Tucker-1 too: a core over all input channels, then u_out
            g = {"core": rng.standard_normal((form.r4, s, *sp)), "u_out": rng.standard_normal((t, form.r4))}
        else:
            g = {"left": rng.standard_normal((t, form.r4)), "right": rng.standard_normal((form.r4, s))}
        groups.append({k: v.astype(np.float32) for k, v in g.items()})
    return Factors(form.method, form.r3, form.r4, groups, 0.0)


def isolated(
    layer: Layer, rule: Any, ctx: GraphContext, form: Form, seed: int = 0
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(model, feeds) running ``layer`` alone in ``form``."""
    rng = np.random.default_rng(seed)
    if form.method == "original":
        nodes = [copy.deepcopy(layer.node)]
        inits: list[onnx.TensorProto] = []
    else:
        em = rule.rewrite(layer, _factors(layer, form, rng), ctx, set())
        nodes, inits = list(em.nodes), list(em.initializers)
    produced = {o for n in nodes for o in n.output}
    known = {t.name for t in inits}
    inputs, feeds = [], {}
    for n in nodes:
        for name in n.input:
            if not name or name in produced or name in known:
                continue
            known.add(name)
            if ctx.constant_reason(name) is None:  # a weight or bias: a constant of its real shape
                value = ctx.array(name)
                if np.issubdtype(value.dtype, np.floating):
                    value = rng.standard_normal(value.shape).astype(value.dtype)
                inits.append(numpy_helper.from_array(value, name))
                continue
            dims = ctx.shape(name)
            if dims and not isinstance(dims[0], int):  # a dynamic batch: timed at batch 1, as deployed on a device
                dims = [1, *dims[1:]]
            if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
                raise NotTimeable(f"the size of '{name}' is not known (give --input-shape)")
            dtype = helper.tensor_dtype_to_np_dtype(ctx.dtype(layer.weight))  # a layer computes in its weight's type
            sizes = [int(d) for d in dims if isinstance(d, int)]
            feeds[name] = rng.standard_normal(sizes).astype(dtype)
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), sizes))
    out = nodes[-1].output[0]
    out_shape = ctx.shape(out) or []
    out_dims = [
        1 if i == 0 and not isinstance(d, int) else d if isinstance(d, int) else f"d{i}"
        for i, d in enumerate(out_shape)
    ]
    outputs = [helper.make_tensor_value_info(out, ctx.dtype(layer.weight), out_dims if out_shape else None)]
    for n in nodes:  # names onnxruntime does not need; metadata stays (it documents the form)
        n.doc_string = ""
    graph = helper.make_graph(nodes, f"isolated_{form.method}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=list(ctx.model.opset_import))
    model.ir_version = ctx.model.ir_version
    return model, feeds


def unknown_sizes(ctx: GraphContext, names: Sequence[str]) -> list[str]:
    """Those of ``names`` whose size shape inference left open beyond the batch dim."""
    out = []
    for name in names:
        dims = ctx.shape(name)
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            out.append(name)
    return out


def runtime_shapes(
    model: onnx.ModelProto,
    names: Sequence[str],
    input_shapes: Mapping[str, Sequence[int]],
    input_values: Mapping[str, float] | None = None,
) -> dict[str, list[int]]:
    """The sizes of ``names`` from one onnxruntime run of ``model`` at the input sizes (random
    inputs): where static shape inference cannot follow (sizes computed by Shape / Resize
    nodes), the run can. Empty where an input has a size the user did not give (beyond the
    batch, run as 1), or the model cannot run: the layers stay untimed, saying why."""
    if not names:
        return {}
    for vi in data_inputs(model):  # a size the user did not give is not guessed
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in input_shapes and any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[1:]):
            return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    try:
        feeds = random_inputs(model, input_shapes, values=input_values)
        sess = session(probe, "CPUExecutionProvider", 1, {}, "disable")
        values = sess.run(list(names), feeds)
    except Exception as exc:  # e.g. a dynamic input the user did not size
        log.info("the sizes shape inference left open were not found by a run (%s)", one_line(exc, 150))
        return {}
    return {n: [int(d) for d in np.shape(v)] for n, v in zip(names, values, strict=True)}
