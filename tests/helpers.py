"""One equivalence helper for every test: both models in ORT (CPU, no graph optimizations)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_feeds(model: onnx.ModelProto, seed: int = 0, dynamic: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else dynamic for d in vi.type.tensor_type.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def rel_diff(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> float:
    """Worst relative difference (Frobenius, per output) between two models' outputs."""
    feeds = random_feeds(a, seed)
    worst = 0.0
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        assert x.shape == y.shape
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30)))
    return worst


def with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fill the graph outputs' shapes from shape inference (the checker wants a shape)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    return model


def conv_model(
    cin: int,
    cout: int,
    kernel: Sequence[int],
    spatial: Sequence[int],
    *,
    groups: int = 1,
    bias: bool = True,
    seed: int = 0,
    opset: int = 17,
    **attrs: object,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // groups, *kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=groups, kernel_shape=list(kernel), **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def single_node_model(
    node: onnx.NodeProto,
    inputs: dict[str, Sequence[int | str]],
    inits: dict[str, np.ndarray],
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def small_classifier(side: int = 8, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Conv(1->6, 3x3) -> Relu -> MaxPool 2 -> Flatten -> Gemm: input 'image' (N, 1, side, side),
    output 'logits' (N, classes); IR 10 / opset 17, which the training build reads."""
    rng = np.random.default_rng(seed)
    flat = 6 * (side // 2) ** 2
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32) * 0.5, "conv.w"),
        numpy_helper.from_array(np.zeros(6, np.float32), "conv.b"),
        numpy_helper.from_array(rng.standard_normal((classes, flat)).astype(np.float32) * 0.2, "fc.w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def labelled_images(n: int, side: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random images labelled by another instance of the architecture (a learnable task)."""
    x = np.random.default_rng(seed).standard_normal((n, 1, side, side)).astype(np.float32)
    return x, run(small_classifier(side, seed=seed + 100), {"image": x})[0].argmax(1)


def with_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """``small_classifier`` with an inference-mode BatchNormalization after its conv."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    rng = np.random.default_rng(7)
    values = {"bn.s": 1 + 0.5 * rng.random(6), "bn.b": rng.standard_normal(6) * 0.1}
    values |= {"bn.m": rng.standard_normal(6) * 0.2, "bn.v": 1 + rng.random(6)}
    g.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items())
    g.node[0].output[0] = "c_pre_bn"
    bn = helper.make_node("BatchNormalization", ["c_pre_bn", "bn.s", "bn.b", "bn.m", "bn.v"], ["c"], name="bn")
    g.node.insert(1, bn)
    onnx.checker.check_model(out)
    return out
