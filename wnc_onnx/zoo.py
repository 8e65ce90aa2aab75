"""Synthetic models: the paper's layer shapes, a VGG-16-shaped net and a small demo CNN.

Random i.i.d. weights look like pure noise to EVBMF (rank 0), so the generators can
plant Tucker-2 / low-rank structure plus noise, as a trained network would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _orth(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q


def planted_kernel(
    rng: np.random.Generator, t: int, s: int, spatial: Sequence[int], r3: int | None, r4: int, noise: float = 0.05
) -> np.ndarray:
    """A (T, S, *spatial) kernel = Tucker-2 (or Tucker-1 when ``r3`` is None) + noise, He scale."""
    spatial = tuple(spatial)
    p = int(np.prod(spatial)) if spatial else 1
    u_out = _orth(rng, t, min(r4, t))
    if r3 is None:
        core = rng.standard_normal((u_out.shape[1], s * p))
        k = (u_out @ core).reshape((t, s) + spatial)
    else:
        u_in = _orth(rng, s, min(r3, s))
        core = rng.standard_normal((u_out.shape[1], u_in.shape[1], p))
        k = np.einsum("ta,abp,sb->tsp", u_out, core, u_in, optimize=True).reshape((t, s) + spatial)
    std = np.sqrt(2.0 / (s * p))
    k *= std / (k.std() + 1e-12)
    k += noise * std * rng.standard_normal(k.shape)
    return k.astype(np.float32)


@dataclass(frozen=True)
class TableLayer:
    """One row of Kim et al.'s Tables 2-5 (per-group S and T)."""

    name: str
    kind: str
    S: int
    T: int
    D: int
    groups: int
    stride: int
    pad: int
    in_hw: int
    out_hw: int
    R3: int | None = None  # the paper's ranks: planted into the weights with table_model(planted=True)
    R4: int | None = None


def table_model(rows: Sequence[TableLayer], seed: int = 0, planted: bool = False) -> onnx.ModelProto:
    """One independent branch per table row (own input and output), random weights.

    Conv rows become Conv nodes; FC rows with D > 1 become Flatten -> Gemm over an
    S x D x D map (the paper's fc6); FC rows with D == 1 a plain Gemm. ``planted``: each
    weight is a Tucker-2 / Tucker-1 / low-rank kernel at the row's R3, R4 plus noise, so
    EVBMF has structure to find (i.i.d. weights look like pure noise to it).
    """
    rng = np.random.default_rng(seed)

    def weight_of(row: TableLayer, t: int, scale: float) -> np.ndarray:
        if not planted or row.R4 is None:
            return rng.standard_normal((t, row.S, row.D, row.D)).astype(np.float32) * scale
        per = t // row.groups
        parts = [planted_kernel(rng, per, row.S, (row.D, row.D), row.R3, row.R4) for _ in range(row.groups)]
        return np.concatenate(parts, axis=0)

    nodes, inits, inputs, outputs = [], [], [], []
    for row in rows:
        x, y = f"{row.name}_in", f"{row.name}_out"
        w = f"{row.name}.weight"
        if row.kind == "conv":
            # Smallest total padding that gives out_hw (the floor of the conv arithmetic may
            # need none even when the formula says -1); split as the row's pad allows.
            total = max((row.out_hw - 1) * row.stride + row.D - row.in_hw, 0)
            begin = min(row.pad, max(total, 0))
            pads = [begin, begin, total - begin, total - begin]
            cin, cout = row.S * row.groups, row.T * row.groups
            inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, cin, row.in_hw, row.in_hw]))
            outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, cout, row.out_hw, row.out_hw]))
            weight = weight_of(row, cout, 0.05)
            inits.append(numpy_helper.from_array(weight, w))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, w],
                    [y],
                    name=row.name,
                    kernel_shape=[row.D, row.D],
                    strides=[row.stride] * 2,
                    pads=pads,
                    group=row.groups,
                )
            )
        else:
            k = row.S * row.D * row.D
            weight = weight_of(row, row.T, 0.01).reshape(row.T, k)
            inits.append(numpy_helper.from_array(weight, w))
            outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, row.T]))
            src = x
            if row.D > 1:
                inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, row.S, row.D, row.D]))
                src = f"{row.name}_flat"
                nodes.append(helper.make_node("Flatten", [x], [src], name=f"{row.name}_flatten", axis=1))
            else:
                inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, row.S]))
            nodes.append(helper.make_node("Gemm", [src, w], [y], name=row.name, transB=1))
    graph = helper.make_graph(nodes, "paper_table_layers", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wnc_onnx.zoo")


# VGG-16: (out channels, planted R3, planted R4) per conv; "M" is a 2x2 max-pool.
# The planted ranks of conv1_2..conv5_3 are those of Kim et al.'s Table 5.
VGG16_CONVS: tuple[tuple[str, int, int | None, int], ...] = (
    ("conv1_1", 64, None, 12),
    ("conv1_2", 64, 11, 18),
    ("M", 0, None, 0),
    ("conv2_1", 128, 22, 34),
    ("conv2_2", 128, 39, 36),
    ("M", 0, None, 0),
    ("conv3_1", 256, 58, 117),
    ("conv3_2", 256, 138, 132),
    ("conv3_3", 256, 124, 119),
    ("M", 0, None, 0),
    ("conv4_1", 512, 148, 194),
    ("conv4_2", 512, 212, 207),
    ("conv4_3", 512, 178, 163),
    ("M", 0, None, 0),
    ("conv5_1", 512, 185, 164),
    ("conv5_2", 512, 172, 170),
    ("conv5_3", 512, 120, 120),
    ("M", 0, None, 0),
)
VGG16_FCS: tuple[tuple[str, int, int | None, int], ...] = (
    ("fc6", 4096, 160, 320),
    ("fc7", 4096, None, 300),
    ("fc8", 1000, None, 200),
)


def _conv3x3_relu(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x: str, name: str, k: np.ndarray, bias: np.ndarray
) -> str:
    """Append a padded 3x3 Conv (weights ``k``, ``bias``) and a Relu; return the output name."""
    inits += [numpy_helper.from_array(k, f"{name}.weight"), numpy_helper.from_array(bias, f"{name}.bias")]
    nodes.append(
        helper.make_node(
            "Conv",
            [x, f"{name}.weight", f"{name}.bias"],
            [f"{name}_out"],
            name=name,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        )
    )
    nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu"))
    return f"{name}_relu"


def vgg16(seed: int = 0, noise: float = 0.05, image: int = 224) -> onnx.ModelProto:
    """A VGG-16-shaped classifier (13 convs + 3 FC, 138M weights) with planted structure."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x, c, hw = "input", 3, image
    for name, cout, r3, r4 in VGG16_CONVS:
        if name == "M":
            y = f"pool_{hw}"
            nodes.append(helper.make_node("MaxPool", [x], [y], name=y, kernel_shape=[2, 2], strides=[2, 2]))
            x, hw = y, hw // 2
            continue
        k = planted_kernel(rng, cout, c, (3, 3), r3 if c > 3 else None, r4, noise)
        x, c = _conv3x3_relu(nodes, inits, x, name, k, np.zeros(cout, np.float32)), cout
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x, spatial = "flat", (hw, hw)
    for i, (name, cout, r3, r4) in enumerate(VGG16_FCS):
        if i == 0:
            k = planted_kernel(rng, cout, c, spatial, r3, r4, noise).reshape(cout, -1)
        else:
            k = planted_kernel(rng, cout, c, (), None, r4, noise)
        inits += [
            numpy_helper.from_array(k, f"{name}.weight"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"),
        ]
        y = f"{name}_out" if i == len(VGG16_FCS) - 1 else f"{name}_gemm"
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, transB=1))
        if i < len(VGG16_FCS) - 1:
            nodes.append(helper.make_node("Relu", [y], [f"{name}_relu"], name=f"{name}_relu"))
            y = f"{name}_relu"
        x, c = y, cout
    graph = helper.make_graph(
        nodes,
        "vgg16_planted",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wnc_onnx.zoo")


def demo_cnn(seed: int = 0) -> onnx.ModelProto:
    """A small image classifier (3x32x32 -> 10) with planted low-rank kernels."""
    rng = np.random.default_rng(seed)
    spec = [
        ("conv1", 3, 32, None, 12),
        ("conv2", 32, 64, 12, 20),
        ("conv3", 64, 128, 24, 40),
        ("conv4", 128, 128, 32, 48),
    ]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "image"
    for i, (name, cin, cout, r3, r4) in enumerate(spec):
        k = planted_kernel(rng, cout, cin, (3, 3), r3, r4)
        x = _conv3x3_relu(nodes, inits, x, name, k, (0.01 * rng.standard_normal(cout)).astype(np.float32))
        if i % 2 == 1:
            nodes.append(
                helper.make_node(
                    "MaxPool", [x], [f"{name}_pool"], name=f"{name}_pool", kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            x = f"{name}_pool"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    fc1 = planted_kernel(rng, 256, 128, (8, 8), 32, 64).reshape(256, -1)
    fc2 = planted_kernel(rng, 10, 256, (), None, 8)
    inits += [
        numpy_helper.from_array(fc1, "fc1.weight"),
        numpy_helper.from_array(np.zeros(256, np.float32), "fc1.bias"),
        numpy_helper.from_array(fc2, "fc2.weight"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc2.bias"),
    ]
    nodes += [
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["fc1_relu"], name="fc1_relu"),
        helper.make_node("Gemm", ["fc1_relu", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "demo_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wnc_onnx.zoo")
