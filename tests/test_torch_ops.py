"""The ONNX operators in PyTorch (finetune.torch_ops), run by finetune.torch_graph.GraphModule.

Every node test case of the ``onnx`` package whose ops the backend has and whose opset it covers runs on the
case's inputs and is compared with the case's expected outputs; a few cases whose expected outputs (from the
ONNX reference implementation) differ from onnxruntime's are compared with onnxruntime instead, and cases
the backend does not implement must raise NotImplementedError. Then the behaviours the node tests leave out
are compared with onnxruntime directly, and gradients are checked on a small CNN with a shared weight.
"""

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from wnc_onnx.finetune.backends.torch.graph import GraphModule, default_opset, unsupported  # noqa: E402
from wnc_onnx.finetune.backends.torch.ops import MAX_OPSET, MIN_OPSET  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5

# tensor element types the cases may use: no strings, bfloat16 or float8 (numpy cannot hand them to torch)
_ELEMENT_TYPES = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.BOOL,
    TensorProto.INT8,
    TensorProto.INT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.UINT8,
    TensorProto.UINT16,
    TensorProto.UINT32,
    TensorProto.UINT64,
}

# cases whose semantics the backend does not implement: each must raise NotImplementedError
_BN_TRAINING = "BatchNormalization in training mode (fine-tuning runs it in inference mode)"
_DROPOUT_TRAINING = "Dropout in training mode with a non-zero ratio (fine-tuning keeps dropout off)"
KNOWN_UNSUPPORTED = {
    "test_batchnorm_example_training_mode": _BN_TRAINING,
    "test_batchnorm_epsilon_training_mode": _BN_TRAINING,
    "test_training_dropout": _DROPOUT_TRAINING,
    "test_training_dropout_default": _DROPOUT_TRAINING,
    "test_training_dropout_default_mask": _DROPOUT_TRAINING,
    "test_training_dropout_mask": _DROPOUT_TRAINING,
}

# cases whose expected outputs onnxruntime does not give: compared with onnxruntime, which the backend follows
FOLLOW_ONNXRUNTIME = {
    "test_resize_downsample_scales_linear_align_corners": "align_corners over the integer output length",
    "test_resize_downsample_scales_cubic_align_corners": "align_corners over the integer output length",
}

# cases whose expected outputs are rounded: compared with this relative tolerance
LOOSE = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": 1e-3,  # written with 4 significant digits
}


def _node_cases() -> dict[str, object]:
    """The node test cases by name (generated in memory by recent onnx, read from its data folder by older)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators divide by zero on purpose
        return {case.name: case for case in load_model_tests(kind="node")}


def _model(case) -> onnx.ModelProto:
    return case.model if case.model is not None else onnx.load(Path(case.model_dir) / "model.onnx")


def _data(case) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The inputs and expected outputs of the case's first data set."""
    if case.data_sets is not None:
        inputs, outputs = case.data_sets[0]
        return list(inputs), list(outputs)
    folder = Path(case.model_dir) / "test_data_set_0"

    def read(kind: str) -> list[np.ndarray]:
        files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        return [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in files]

    return read("input"), read("output")


def _runnable(model: onnx.ModelProto) -> bool:
    """Whether the backend takes the model: its ops, its opset, plain tensors of numeric types in and out."""
    if unsupported(model) or not MIN_OPSET <= default_opset(model) <= MAX_OPSET:
        return False
    values = list(model.graph.input) + list(model.graph.output)
    return all(
        v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.elem_type in _ELEMENT_TYPES for v in values
    )


CASES = {name: case for name, case in _node_cases().items() if _runnable(_model(case))}


def _run(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs from GraphModule, its graph inputs given in the graph's order."""
    module = GraphModule(model, [])
    given = {v.name: x for v, x in zip(model.graph.input, inputs, strict=False)}
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.array(given[name])) for name in module.inputs])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _onnxruntime(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = min(model.ir_version, 10)  # onnxruntime-training 1.19 reads IR <= 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [v.name for v in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=True)))


def _assert_same(got: list[np.ndarray], want: list[np.ndarray], rtol: float = RTOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        assert g.shape == w.shape
        assert g.dtype.kind == w.dtype.kind, (g.dtype, w.dtype)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=ATOL)
        else:
            np.testing.assert_array_equal(g, w)


def test_the_node_cases_are_found():
    assert len(CASES) > 600
    assert set(KNOWN_UNSUPPORTED) | set(FOLLOW_ONNXRUNTIME) | set(LOOSE) <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_node_case(name):
    case = CASES[name]
    model = _model(case)
    inputs, expected = _data(case)
    if name in KNOWN_UNSUPPORTED:
        with pytest.raises(NotImplementedError):
            _run(model, inputs)
        return
    if name in FOLLOW_ONNXRUNTIME:
        expected = _onnxruntime(model, inputs)
    _assert_same(_run(model, inputs), expected, LOOSE.get(name, RTOL))


# ---------------------------------------------------------------- against onnxruntime, beyond the node cases


def _single_node(op: str, attrs: dict, inputs: list[np.ndarray], consts: list, opset: int, outputs: int = 1):
    """A model of one node: inputs are graph inputs, consts initializers (None: an omitted input)."""
    names = [f"x{i}" for i in range(len(inputs))] + [f"c{i}" if c is not None else "" for i, c in enumerate(consts)]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [
            helper.make_tensor_value_info(f"x{i}", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
            for i, x in enumerate(inputs)
        ],
        [onnx.ValueInfoProto(name=f"y{i}") for i in range(outputs)],
        [numpy_helper.from_array(np.asarray(c), f"c{i}") for i, c in enumerate(consts) if c is not None],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


_rng = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


_NO_ROI = _f32()
# (op, attributes, graph inputs, initializers, opset, outputs): behaviours the node cases leave out
AGAINST_ONNXRUNTIME = {
    # ConvTranspose: output_shape overrides pads; an odd total padding goes to the beginning, to the end with SAME_UPPER
    "convtranspose_output_shape_odd": (  # the full output is 9 long: a total padding of 1
        "ConvTranspose",
        {"strides": [2], "output_shape": [8]},
        [_x(1, 2, 4)],
        [_x(2, 3, 3)],
        17,
        1,
    ),
    "convtranspose_output_shape_pads": (
        "ConvTranspose",
        {"strides": [2, 2], "pads": [0, 1, 1, 0], "output_shape": [8, 8]},
        [_x(1, 2, 4, 4)],
        [_x(2, 3, 3, 3), _x(3)],
        17,
        1,
    ),
    "convtranspose_same_upper": (
        "ConvTranspose",
        {"strides": [2, 2], "auto_pad": "SAME_UPPER", "group": 2},
        [_x(1, 2, 4, 5)],
        [_x(2, 2, 3, 3), _x(4)],
        17,
        1,
    ),
    "convtranspose_same_lower_dilated": (
        "ConvTranspose",
        {"strides": [3], "auto_pad": "SAME_LOWER", "dilations": [2], "output_padding": [1]},
        [_x(1, 2, 5)],
        [_x(2, 3, 2)],
        17,
        1,
    ),
    # MaxPool: indices (flattened over the whole input, either storage order) with pads torch does not take
    "maxpool_indices_asymmetric_pads": (
        "MaxPool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [2, 0, 0, 2]},
        [_x(2, 3, 7, 6)],
        [],
        12,
        2,
    ),
    "maxpool_indices_column_major": (
        "MaxPool",
        {"kernel_shape": [2, 3], "pads": [1, 1, 1, 1], "storage_order": 1},
        [_x(2, 3, 5, 6)],
        [],
        12,
        2,
    ),
    "maxpool_indices_3d_dilated": (
        "MaxPool",
        {"kernel_shape": [2, 2, 2], "dilations": [2, 1, 2], "pads": [1, 0, 1, 1, 1, 0]},
        [_x(1, 2, 5, 4, 5)],
        [],
        12,
        2,
    ),
    "maxpool_same_dilated": (
        "MaxPool",
        {"kernel_shape": [3, 2], "dilations": [2, 2], "strides": [1, 2], "auto_pad": "SAME_UPPER"},
        [_x(1, 2, 7, 8)],
        [],
        12,
        1,
    ),
    # AveragePool: asymmetric pads, dilations
    "averagepool_asymmetric_pads": (
        "AveragePool",
        {"kernel_shape": [3, 3], "strides": [2, 1], "pads": [2, 0, 1, 2]},
        [_x(1, 2, 7, 6)],
        [],
        19,
        1,
    ),
    "averagepool_asymmetric_pads_counted": (
        "AveragePool",
        {"kernel_shape": [3], "strides": [2], "pads": [0, 2], "count_include_pad": 1},
        [_x(2, 2, 8)],
        [],
        19,
        1,
    ),
    "averagepool_dilated_same_lower": (
        "AveragePool",
        {"kernel_shape": [2, 3], "dilations": [2, 2], "auto_pad": "SAME_LOWER"},
        [_x(1, 2, 6, 7)],
        [],
        19,
        1,
    ),
    # Resize and Upsample
    "resize_nearest_asymmetric_integer_scale": (
        "Resize",
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"},
        [_x(1, 2, 3, 4)],
        [_NO_ROI, _f32(1, 1, 3, 3)],
        13,
        1,
    ),
    "resize_nearest_float32_coordinates": (
        "Resize",
        {"mode": "nearest", "nearest_mode": "floor"},
        [_x(1, 1, 4, 10)],
        [_NO_ROI, _f32(1, 1, 0.6, 0.6)],
        13,
        1,
    ),
    "resize_scale_output_length_in_float32": (
        "Resize",
        {"mode": "linear"},
        [_x(1, 1, 10, 10)],
        [_NO_ROI, _f32(1, 1, 0.7, 1.3)],
        13,
        1,
    ),
    "resize_linear_align_corners_sizes": (
        "Resize",
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        [_x(2, 3, 5, 4)],
        [_NO_ROI, None, _i64(2, 3, 3, 9)],
        13,
        1,
    ),
    "resize_cubic_half_pixel_exclude_outside": (
        "Resize",
        {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5},
        [_x(1, 2, 5, 6)],
        [_NO_ROI, _f32(1, 1, 1.7, 0.6)],
        13,
        1,
    ),
    "resize_linear_antialias": (
        "Resize",
        {"mode": "linear", "antialias": 1},
        [_x(1, 2, 9, 10)],
        [_NO_ROI, _f32(1, 1, 0.4, 0.7)],
        18,
        1,
    ),
    "resize_cubic_antialias": (
        "Resize",
        {"mode": "cubic", "antialias": 1},
        [_x(1, 2, 9, 10)],
        [_NO_ROI, _f32(1, 1, 0.6, 1.5)],
        18,
        1,
    ),
    "resize_half_pixel_symmetric": (
        "Resize",
        {"mode": "nearest", "coordinate_transformation_mode": "half_pixel_symmetric", "nearest_mode": "floor"},
        [_x(1, 1, 5, 11)],
        [_NO_ROI, _f32(1, 1, 0.6, 0.6)],
        19,
        1,
    ),
    "resize_tf_crop_and_resize_extrapolation": (
        "Resize",
        {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -2.0},
        [_x(1, 2, 5, 6)],
        [_f32(0, 0, 0.1, -0.2, 1, 1, 0.8, 1.1), _f32(1, 1, 1.4, 1.5)],
        13,
        1,
    ),
    "resize_keep_aspect_ratio": (
        "Resize",
        {"mode": "linear", "keep_aspect_ratio_policy": "not_smaller", "axes": [2, 3]},
        [_x(1, 2, 4, 6)],
        [_NO_ROI, None, _i64(7, 5)],
        18,
        1,
    ),
    "resize_same_shape_is_identity": (
        "Resize",
        {"mode": "linear"},
        [_x(1, 2, 1, 2)],
        [_NO_ROI, _f32(1, 1, 1.3, 1.3)],
        13,
        1,
    ),
    "resize_10_nearest_downsample": ("Resize", {"mode": "nearest"}, [_x(1, 2, 7, 7)], [_f32(1, 1, 0.34, 0.6)], 10, 1),
    "resize_10_linear": ("Resize", {"mode": "linear"}, [_x(1, 2, 5, 6)], [_f32(1, 1, 2.5, 0.5)], 10, 1),
    "upsample_9_nearest": ("Upsample", {"mode": "nearest"}, [_x(1, 2, 3, 4)], [_f32(1, 1, 2.5, 1.5)], 9, 1),
    "resize_uint8_linear_truncates": (
        "Resize",
        {"mode": "linear"},
        [(_rng.random((1, 1, 5, 6)) * 255).astype(np.uint8)],
        [_NO_ROI, _f32(1, 1, 1.7, 0.6)],
        13,
        1,
    ),
    # Pad's other modes on any axes, LRN, Range, Slice, Flatten
    "pad_reflect_leading_axes": ("Pad", {"mode": "reflect"}, [_x(3, 4, 5)], [_i64(2, 1, 0, 1, 3, 0)], 13, 1),
    "pad_edge_crop": ("Pad", {"mode": "edge"}, [_x(3, 4)], [_i64(-1, 2, 3, -2)], 13, 1),
    "pad_wrap_axes": ("Pad", {"mode": "wrap"}, [_x(2, 3, 4)], [_i64(1, 2, 2, 3), None, _i64(0, -1)], 19, 1),
    "lrn_size_5": ("LRN", {"size": 5, "alpha": 0.3, "beta": 0.6, "bias": 1.5}, [_x(2, 7, 3, 3)], [], 13, 1),
    "range_empty": ("Range", {}, [np.array(0, np.int64), np.array(5, np.int64), np.array(-1, np.int64)], [], 13, 1),
    "range_float": (
        "Range",
        {},
        [np.array(0.1, np.float32), np.array(2.0, np.float32), np.array(0.3, np.float32)],
        [],
        13,
        1,
    ),
    "range_negative_delta": (
        "Range",
        {},
        [np.array(10, np.int32), np.array(1, np.int32), np.array(-3, np.int32)],
        [],
        13,
        1,
    ),
    "slice_negative_step_from_before_start": (
        "Slice",
        {},
        [_x(6, 5)],
        [_i64(-100, 3), _i64(-200, 0), _i64(0, 1), _i64(-1, 1)],
        13,
        1,
    ),
    "flatten_negative_axis": ("Flatten", {"axis": -3}, [_x(2, 3, 4, 5)], [], 13, 1),
}


@pytest.mark.parametrize("name", sorted(AGAINST_ONNXRUNTIME))
def test_against_onnxruntime(name):
    op, attrs, inputs, consts, opset, outputs = AGAINST_ONNXRUNTIME[name]
    model = _single_node(op, attrs, inputs, consts, opset, outputs)
    _assert_same(_run(model, inputs), _onnxruntime(model, inputs))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize(
    ("op", "reference"),
    [("Less", np.less), ("Div", np.floor_divide), ("Mod", np.mod), ("Max", np.maximum), ("Sub", np.subtract)],
)
def test_wide_unsigned_arithmetic(op, reference, dtype):
    """torch has few kernels for uint16/32/64, and onnxruntime lacks some of these ops for them: against numpy."""
    top = np.iinfo(dtype).max if dtype != np.uint64 else 2**63 - 1
    a = np.array([7, 9, top, 3], dtype)
    b = np.array([2, 3, 5, 4], dtype)
    got = _run(_single_node(op, {}, [a, b], [], 13), [a, b])[0]
    with np.errstate(over="ignore"):
        want = reference(a, b)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_uint64_values_past_int64():
    """Ordered operations refuse them; add and subtract wrap, as uint64 arithmetic does."""
    x = np.array([2**63 + 1], np.uint64)
    with pytest.raises(NotImplementedError):
        _run(_single_node("Less", {}, [x, x], [], 13), [x, x])
    total = _run(_single_node("Add", {}, [x, x], [], 13), [x, x])[0]
    assert total.dtype == np.uint64 and total[0] == np.uint64(2)


# ---------------------------------------------------------------- gradients


def _cnn() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x -> Conv(W, B) -> Relu -> Conv(W) -> Relu -> MaxPool -> Flatten -> Gemm(Wfc, Bfc): W is read twice."""
    rng = np.random.default_rng(1)
    weights = {
        "W": (rng.standard_normal((3, 3, 3, 3)) * 0.4).astype(np.float32),
        "B": (rng.standard_normal(3) * 0.1).astype(np.float32),
        "Wfc": (rng.standard_normal((5, 48)) * 0.2).astype(np.float32),
        "Bfc": (rng.standard_normal(5) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "Wfc", "Bfc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def _cnn_by_hand(x, w1, w2, b, wfc, bfc):
    """The same network in torch, the two reads of W as w1 and w2."""
    h = F.relu(F.conv2d(F.relu(F.conv2d(x, w1, b, padding=1)), w2, None, padding=1))
    return F.linear(F.max_pool2d(h, 2).flatten(1), wfc, bfc)


def _loss(y):
    return (y * torch.linspace(-1.0, 2.0, y.numel()).reshape(y.shape)).sum()


def test_every_parameter_gets_a_finite_gradient():
    model, weights = _cnn()
    module = GraphModule(model, list(weights))
    params = module.named_onnx_parameters()
    assert sorted(params) == sorted(weights)
    assert len(list(module.parameters())) == len(weights)  # W, read by two nodes, is one parameter
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32))
    _loss(module(x)).backward()
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_a_shared_weight_gets_the_sum_of_both_gradients():
    model, weights = _cnn()
    module = GraphModule(model, list(weights))
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32))
    _loss(module(x)).backward()
    params = module.named_onnx_parameters()

    hand = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    w2 = torch.tensor(weights["W"], requires_grad=True)  # the second read, a leaf of its own
    y = _cnn_by_hand(x, hand["W"], w2, hand["B"], hand["Wfc"], hand["Bfc"])
    np.testing.assert_allclose(module(x).detach().numpy(), y.detach().numpy(), rtol=1e-5, atol=1e-6)
    _loss(y).backward()

    assert (hand["W"].grad - w2.grad).abs().max() > 1e-3  # the two uses differ, so the sum is a real test
    np.testing.assert_allclose(params["W"].grad.numpy(), (hand["W"].grad + w2.grad).numpy(), rtol=1e-4, atol=1e-6)
    for name in ("B", "Wfc", "Bfc"):
        np.testing.assert_allclose(params[name].grad.numpy(), hand[name].grad.numpy(), rtol=1e-4, atol=1e-6)


def _recurrent_case(kind, direction, layout, lens, extra):
    """A single RNN / GRU / LSTM node with every input given, random weights, and its inputs."""
    rng = np.random.default_rng(len(kind) * 100 + len(direction) * 10 + layout + 7 * lens + len(extra))
    gates, dirs, seq, batch, size, hidden = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind], 1, 5, 3, 4, 6
    dirs = 2 if direction == "bidirectional" else 1
    f = np.float32
    x = rng.standard_normal((batch, seq, size) if layout else (seq, batch, size)).astype(f)
    w = (rng.standard_normal((dirs, gates * hidden, size)) * 0.5).astype(f)
    r = (rng.standard_normal((dirs, gates * hidden, hidden)) * 0.5).astype(f)
    b = (rng.standard_normal((dirs, 2 * gates * hidden)) * 0.3).astype(f)
    lengths = np.array([5, 2, 4] if lens else [5, 5, 5], dtype=np.int32)
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    h0 = rng.standard_normal(state).astype(f)
    inputs, consts = [x], [w, r, b, lengths, h0]
    if kind == "LSTM":
        consts += [rng.standard_normal(state).astype(f), (rng.standard_normal((dirs, 3 * hidden)) * 0.3).astype(f)]
    attrs = {"hidden_size": hidden, "direction": direction, **dict(extra)}
    if layout:
        attrs["layout"] = 1
    return _single_node(kind, attrs, inputs, consts, 14, outputs=3 if kind == "LSTM" else 2), inputs


RECURRENT_CASES = [
    (kind, direction, layout, lens, extra)
    for kind in ("RNN", "GRU", "LSTM")
    for direction, layout, lens in [
        ("forward", 0, False),
        ("reverse", 0, True),
        ("bidirectional", 0, True),
        ("bidirectional", 1, True),
        ("forward", 1, False),
    ]  # fmt: skip
    for extra in [()]
] + [
    ("RNN", "bidirectional", 0, True, (("activations", ["Relu", "LeakyRelu"]), ("activation_alpha", [0.5, 0.2]))),
    ("GRU", "forward", 0, True, (("linear_before_reset", 1),)),
    (
        "GRU",
        "bidirectional",
        0,
        False,
        (
            ("activations", ["HardSigmoid", "Tanh", "Sigmoid", "Softsign"]),
            ("activation_alpha", [0.3, 0.25]),
            ("activation_beta", [0.4, 0.6]),
        ),
    ),  # fmt: skip
    ("LSTM", "forward", 0, True, (("input_forget", 1),)),
    ("LSTM", "bidirectional", 0, True, (("clip", 0.7),)),
    ("LSTM", "forward", 0, False, (("activations", ["Sigmoid", "Elu", "Softplus"]),)),
]


@pytest.mark.parametrize("kind, direction, layout, lens, extra", RECURRENT_CASES)
def test_recurrent_ops_match_onnxruntime(kind, direction, layout, lens, extra):
    """Directions, layouts, sequence lengths, initial states, peepholes, clip, input_forget,
    linear_before_reset and activations with their alpha / beta, against onnxruntime; and the
    gradient reaches every weight."""
    model, inputs = _recurrent_case(kind, direction, layout, lens, extra)
    if layout:  # onnxruntime's CPU kernels refuse layout 1: against its layout-0 twin, transposed
        twin, twin_inputs = _recurrent_case(kind, direction, 0, lens, extra)
        for t in twin.graph.initializer:  # the same weights; the states transposed as the layouts differ
            if t.name in ("c4", "c5"):
                given = next(u for u in model.graph.initializer if u.name == t.name)
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(given).transpose(1, 0, 2), t.name))
            elif t.name in ("c0", "c1", "c2", "c6"):
                t.CopyFrom(next(u for u in model.graph.initializer if u.name == t.name))
        want = _onnxruntime(twin, [inputs[0].transpose(1, 0, 2)])
        want = [want[0].transpose(2, 0, 1, 3), *(w.transpose(1, 0, 2) for w in want[1:])]
        _assert_same(_run(model, inputs), want)
    else:
        _assert_same(_run(model, inputs), _onnxruntime(model, inputs))
    trained = [t.name for t in model.graph.initializer if t.name in ("c0", "c1", "c2")]  # W, R, B
    module = GraphModule(model, trained)
    out = module(torch.from_numpy(inputs[0]))
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
