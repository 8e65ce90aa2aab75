"""ONNX operators in PyTorch, for the torch fine-tuning backend (``torch_graph``).

Each entry of ``OPS`` takes the node's attributes (with ``_opset``, the model's default-domain
opset) and its inputs (torch tensors, None for an omitted optional input) and returns the
list of its outputs. Semantics follow the ONNX operator specification for opsets 7 to
``MAX_OPSET``, including the forms that changed (attributes that became inputs: Split,
Slice, Squeeze, Unsqueeze, Clip, Pad, Reduce*; Softmax's axis). Shape arithmetic runs on
int64 tensors, as onnxruntime does it; the float path is differentiable. Where onnxruntime,
the runtime the fine-tuned models go back to, departs from the ONNX reference implementation
(Resize's float32 coordinates, ConvTranspose's output_shape), the ops follow onnxruntime; where
onnxruntime 1.19 has a bug (pooling's last ceil_mode window), the specification. An attribute
combination an op does not implement raises NotImplementedError when it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from wnc_onnx.finetune.backends.torch.recurrent import RECURRENT

MIN_OPSET, MAX_OPSET = 7, 22
Attrs = dict[str, Any]
Op = Callable[[Attrs, list[Any]], list[Any]]
OPS: dict[str, Op] = {}

_DTYPES = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    4: torch.uint16,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    12: torch.uint32,
    13: torch.uint64,
    16: torch.bfloat16,
}
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)  # torch has few kernels for these: int64 does the work


def op(*names: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _ints(t: Any) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _text(v: Any, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def _given(x: list[Any], i: int) -> Any:
    """Input i, or None where it is omitted or an empty tensor."""
    t = x[i] if len(x) > i else None
    return t if t is not None and t.numel() else None


def _dtype(code: int) -> torch.dtype:
    if code not in _DTYPES:
        raise NotImplementedError(f"ONNX data type {code}")
    return _DTYPES[code]


def _extreme(dtype: torch.dtype, largest: bool) -> float | int | bool:
    """The largest (or lowest) value of dtype: the identity of ReduceMin (ReduceMax), the padding of MaxPool."""
    if dtype == torch.bool:
        return largest
    if dtype.is_floating_point:
        return math.inf if largest else -math.inf
    info = torch.iinfo(dtype)
    return info.max if largest else info.min


def _widened(fn: Callable[..., Any], ordered: bool = True) -> Callable[..., Any]:
    """fn computed on int64 copies of uint16/32/64 tensors, its int64 result cast back to the first input's type.

    Exact for every value with add, sub, mul and equality (two's complement wraps the same way); the others
    (``ordered``) raise NotImplementedError for uint64 values past 2**63 - 1.
    """

    def run(*args: Any) -> Any:
        if not any(isinstance(t, torch.Tensor) and t.dtype in _WIDE_UNSIGNED for t in args):
            return fn(*args)
        wide = [t.to(torch.int64) if isinstance(t, torch.Tensor) and t.dtype in _WIDE_UNSIGNED else t for t in args]
        if ordered and any(
            t.dtype == torch.uint64 and bool((w < 0).any()) for t, w in zip(args, wide, strict=True) if w is not t
        ):
            raise NotImplementedError("uint64 values past 2**63 - 1 in an ordered operation")
        out = fn(*wide)
        first = args[0]
        if isinstance(first, torch.Tensor) and first.dtype in _WIDE_UNSIGNED and out.dtype == torch.int64:
            return out.to(first.dtype)
        return out

    return run


# ---------------------------------------------------------------- element-wise


def _unary(fn: Callable[[Any], Any]) -> Op:
    return lambda a, x: [fn(x[0])]


_UNARY: dict[str, Callable[[Any], Any]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Erf": torch.erf,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Not": torch.logical_not,
    "Sign": torch.sign,
    "Round": torch.round,
    "Identity": lambda t: t,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = _unary(_fn)


def _binary(fn: Callable[[Any, Any], Any]) -> Op:
    return lambda a, x: [fn(x[0], x[1])]


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": _widened(torch.add, ordered=False),
    "Sub": _widened(torch.sub, ordered=False),
    "Mul": _widened(torch.mul, ordered=False),
    "Pow": _widened(lambda b, e: torch.pow(b, e).to(b.dtype)),
    "Equal": _widened(torch.eq, ordered=False),
    "Less": _widened(torch.lt),
    "LessOrEqual": _widened(torch.le),
    "Greater": _widened(torch.gt),
    "GreaterOrEqual": _widened(torch.ge),
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "PRelu": lambda x, s: torch.where(x >= 0, x, x * s),
}
for _name, _fn2 in _BINARY.items():
    OPS[_name] = _binary(_fn2)


def _divide(n: Any, d: Any) -> Any:
    return n / d if n.dtype.is_floating_point else torch.div(n, d, rounding_mode="trunc")


OPS["Div"] = _binary(_widened(_divide))


@op("Mod")
def _mod(a: Attrs, x: list[Any]) -> list[Any]:
    return [_widened(torch.fmod if a.get("fmod", 0) else torch.remainder)(x[0], x[1])]


def _fold(fn: Callable[[Any, Any], Any], mean: bool = False) -> Op:
    def run(a: Attrs, x: list[Any]) -> list[Any]:
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return [out / len(x) if mean else out]

    return run


OPS["Max"], OPS["Min"] = _fold(_widened(torch.maximum)), _fold(_widened(torch.minimum))
OPS["Sum"], OPS["Mean"] = _fold(_widened(torch.add, ordered=False)), _fold(torch.add, mean=True)


@op("Where")
def _where(a: Attrs, x: list[Any]) -> list[Any]:
    return [torch.where(x[0].bool(), x[1], x[2])]


@op("Clip")
def _clip(a: Attrs, x: list[Any]) -> list[Any]:
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    out = x[0]
    if lo is not None:
        out = torch.maximum(out, torch.as_tensor(lo, dtype=out.dtype, device=out.device))
    if hi is not None:
        out = torch.minimum(out, torch.as_tensor(hi, dtype=out.dtype, device=out.device))
    return [out]


@op("LeakyRelu")
def _leaky(a: Attrs, x: list[Any]) -> list[Any]:
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]


@op("Elu")
def _elu(a: Attrs, x: list[Any]) -> list[Any]:
    return [F.elu(x[0], a.get("alpha", 1.0))]


@op("Selu")
def _selu(a: Attrs, x: list[Any]) -> list[Any]:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x[0] > 0, x[0], alpha * (torch.exp(x[0]) - 1))]


@op("HardSigmoid")
def _hard_sigmoid(a: Attrs, x: list[Any]) -> list[Any]:
    return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0)]


@op("HardSwish")
def _hard_swish(a: Attrs, x: list[Any]) -> list[Any]:
    return [x[0] * torch.clamp(x[0] / 6 + 0.5, 0.0, 1.0)]


@op("Gelu")
def _gelu(a: Attrs, x: list[Any]) -> list[Any]:
    return [F.gelu(x[0], approximate=_text(a.get("approximate"), "none"))]


def _soft(kind: str) -> Op:
    def run(a: Attrs, x: list[Any]) -> list[Any]:
        t = x[0]
        old = a["_opset"] < 13  # before 13: the input is coerced to 2-D at axis (default 1)
        axis = a.get("axis", 1 if old else -1) % max(t.dim(), 1)
        shape = t.shape
        if old:
            t = t.reshape(math.prod(shape[:axis]), -1)
            axis = 1
        out = torch.softmax(t, axis) if kind == "Softmax" else torch.log_softmax(t, axis)
        return [out.reshape(shape)]

    return run


OPS["Softmax"], OPS["LogSoftmax"] = _soft("Softmax"), _soft("LogSoftmax")


@op("Cast")
def _cast(a: Attrs, x: list[Any]) -> list[Any]:
    return [x[0].to(_dtype(int(a["to"])))]


@op("CastLike")
def _cast_like(a: Attrs, x: list[Any]) -> list[Any]:
    return [x[0].to(x[1].dtype)]


# ---------------------------------------------------------------- convolution, pooling, normalization


def _pads(a: Attrs, x: Any, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """ONNX pads (begins then ends) with auto_pad resolved, for the spatial dims of x."""
    nd = len(kernel)
    mode = _text(a.get("auto_pad"), "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            small = total // 2
            begin = small if mode == "SAME_UPPER" else total - small
            begins.append(begin)
            ends.append(total - begin)
        return begins + ends
    if mode == "VALID":
        return [0] * 2 * nd
    return list(a.get("pads", [0] * 2 * nd))


def _padded(x: Any, pads: list[int], value: float = 0.0) -> tuple[Any, list[int]]:
    """x padded so the rest is symmetric: (x, symmetric pads per dim)."""
    nd = len(pads) // 2
    begins, ends = pads[:nd], pads[nd:]
    if begins == ends:
        return x, begins
    extra: list[int] = []
    for b, e in reversed(list(zip(begins, ends, strict=True))):  # F.pad: last dim first
        extra += [b - min(b, e), e - min(b, e)]
    return F.pad(x, extra, value=value), [min(b, e) for b, e in zip(begins, ends, strict=True)]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@op("Conv")
def _conv(a: Attrs, x: list[Any]) -> list[Any]:
    inp, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    kernel = a.get("kernel_shape", list(w.shape[2:]))
    strides, dilations = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    inp, pads = _padded(inp, _pads(a, inp, kernel, strides, dilations))
    return [_CONV[nd](inp, w, b, strides, pads, dilations, a.get("group", 1))]


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _transpose_crop(a: Attrs, i: int, nd: int, n: int, full: int) -> tuple[int, int]:
    """(begin, end) to crop off spatial dim i of a transposed convolution whose unpadded output is full long
    (output_padding included); a negative end extends it with zeros. As onnxruntime does it: output_shape
    overrides pads, and the odd unit of a total padding goes to the end with SAME_UPPER, else to the beginning."""
    mode = _text(a.get("auto_pad"), "NOTSET")
    shape = a.get("output_shape")
    if shape is None and mode not in ("SAME_UPPER", "SAME_LOWER"):
        pads = list(a.get("pads", [0] * 2 * nd))
        return pads[i], pads[nd + i]
    wanted = list(shape)[-nd:][i] if shape is not None else n * a.get("strides", [1] * nd)[i]
    total = max(full - wanted, 0)
    begin = total // 2 if mode == "SAME_UPPER" else total - total // 2
    length = wanted if shape is not None else full - total
    return begin, full - begin - length


@op("ConvTranspose")
def _conv_transpose(a: Attrs, x: list[Any]) -> list[Any]:
    inp, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    strides, dilations = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    extra = a.get("output_padding", [0] * nd)  # zeros at the end of each dim: added below, with the crops
    y = _CONV_T[nd](inp, w, None, strides, 0, 0, a.get("group", 1), dilations)
    crops = [_transpose_crop(a, i, nd, inp.shape[2 + i], y.shape[2 + i] + extra[i]) for i in range(nd)]
    y = F.pad(y, [-v for i in reversed(range(nd)) for v in (crops[i][0], crops[i][1] - extra[i])])
    return [y if b is None else y + b.reshape([1, -1] + [1] * nd)]


def _pool_args(a: Attrs, x: Any) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, strides, dilations and pads (begins then ends, auto_pad resolved) of a pooling node."""
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides, dilations = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
    # auto_pad SAME_*: as onnxruntime (and the reference implementation), the pads of the undilated kernel
    return kernel, strides, dilations, _pads(a, x, kernel, strides, [1] * nd)


def _pool_length(n: int, k: int, s: int, d: int, begin: int, end: int, ceil: bool) -> int:
    """Output length of one spatial dim; with ceil_mode the last window starts in the input or its begin pad."""
    span = n + begin + end - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    return out - 1 if ceil and (out - 1) * s >= n + begin else out


def _pool_widths(
    x: Any, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int], ceil: bool
) -> list[tuple[int, int]]:
    """(begin, end) to pad each spatial dim by so that unpadded windows give exactly the ONNX output."""
    nd = len(kernel)
    widths = []
    for i in range(nd):
        n, k, s, d = x.shape[2 + i], kernel[i], strides[i], dilations[i]
        out = _pool_length(n, k, s, d, pads[i], pads[nd + i], ceil)
        widths.append((pads[i], (out - 1) * s + d * (k - 1) + 1 - n - pads[i]))
    return widths


def _pad_widths(x: Any, widths: Sequence[tuple[int, int]], value: float | int | bool = 0) -> Any:
    return F.pad(x, [v for b, e in reversed(widths) for v in (b, e)], value=value)


def _symmetric(pads: list[int], kernel: list[int]) -> bool:
    """Whether torch's own padding does it: the same at both ends and at most half the kernel."""
    nd = len(kernel)
    return pads[:nd] == pads[nd:] and all(2 * p <= k for p, k in zip(pads[:nd], kernel, strict=True))


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _flat_indices(idx: Any, grid: Sequence[int], shift: Sequence[int], shape: Sequence[int], by_column: bool) -> Any:
    """torch's indices into each plane of grid (the input, padded by shift at the beginning of each dim) as
    ONNX's: into the whole flattened input, each plane row-major (storage_order 0) or column-major (1)."""
    nd = len(grid)
    coords, rest = [], idx
    for size in reversed(grid):
        coords.append(rest % size)
        rest = rest // size
    coords = [c - s for c, s in zip(reversed(coords), shift, strict=True)]
    spatial = list(shape[2:])
    flat = torch.zeros_like(idx)
    for i in reversed(range(nd)) if by_column else range(nd):
        flat = flat * spatial[i] + coords[i]
    planes = torch.arange(shape[0] * shape[1], dtype=idx.dtype, device=idx.device)
    return flat + planes.reshape([shape[0], shape[1]] + [1] * nd) * math.prod(spatial)


@op("MaxPool")
def _max_pool(a: Attrs, x: list[Any]) -> list[Any]:
    inp = x[0]
    kernel, strides, dilations, pads = _pool_args(a, inp)
    nd, ceil, with_indices = len(kernel), bool(a.get("ceil_mode", 0)), a["_outputs"] > 1
    fn = _MAX_POOL[nd]
    if _symmetric(pads, kernel):
        shift, grid = [0] * nd, inp.shape[2:]
        out = fn(inp, kernel, strides, pads[:nd], dilations, ceil, return_indices=with_indices)
    else:
        padded = _pad_widths(inp, _pool_widths(inp, kernel, strides, dilations, pads, ceil), _extreme(inp.dtype, False))
        shift, grid = pads[:nd], padded.shape[2:]
        out = fn(padded, kernel, strides, 0, dilations, False, return_indices=with_indices)
    if not with_indices:
        return [out]
    y, idx = out
    return [y, _flat_indices(idx, grid, shift, inp.shape, bool(a.get("storage_order", 0)))]


def _window_sums(t: Any, kernel: list[int], strides: list[int], dilations: list[int]) -> Any:
    """Sums over the (dilated) windows of each plane of t, unpadded."""
    nd = len(kernel)
    flat = t.reshape([t.shape[0] * t.shape[1], 1] + list(t.shape[2:]))
    ones = torch.ones([1, 1] + kernel, dtype=t.dtype, device=t.device)
    sums = _CONV[nd](flat, ones, None, strides, 0, dilations)
    return sums.reshape(list(t.shape[:2]) + list(sums.shape[2:]))


@op("AveragePool")
def _avg_pool(a: Attrs, x: list[Any]) -> list[Any]:
    inp = x[0]
    kernel, strides, dilations, pads = _pool_args(a, inp)
    nd, ceil, count_pad = len(kernel), bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0))
    if _symmetric(pads, kernel) and all(d == 1 for d in dilations):
        return [_AVG_POOL[nd](inp, kernel, strides, pads[:nd], ceil, count_pad)]
    widths = _pool_widths(inp, kernel, strides, dilations, pads, ceil)
    ones = torch.ones([1, 1] + list(inp.shape[2:]), dtype=inp.dtype, device=inp.device)
    counted = _pad_widths(ones, [(b, pads[nd + i]) for i, (b, _) in enumerate(widths)], float(count_pad))
    counted = _pad_widths(counted, [(0, e - pads[nd + i]) for i, (_, e) in enumerate(widths)])  # ceil_mode's tail
    sums = _window_sums(_pad_widths(inp, widths), kernel, strides, dilations)
    return [sums / _window_sums(counted, kernel, strides, dilations)]


@op("GlobalAveragePool")
def _gap(a: Attrs, x: list[Any]) -> list[Any]:
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(a: Attrs, x: list[Any]) -> list[Any]:
    return [x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("BatchNormalization")
def _batchnorm(a: Attrs, x: list[Any]) -> list[Any]:
    if a.get("training_mode", 0):
        raise NotImplementedError("BatchNormalization in training mode")
    inp, scale, bias, mean, var = x[:5]
    # opsets 7-8 with spatial=0: statistics per activation, of shape C x D1 x ... x Dn
    shape = [1, -1] + [1] * (inp.dim() - 2) if scale.dim() == 1 else [1] + list(scale.shape)
    k = scale / torch.sqrt(var + a.get("epsilon", 1e-5))
    return [inp * k.reshape(shape) + (bias - mean * k).reshape(shape)]


@op("InstanceNormalization")
def _instancenorm(a: Attrs, x: list[Any]) -> list[Any]:
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))]


@op("LayerNormalization")
def _layernorm(a: Attrs, x: list[Any]) -> list[Any]:
    t, eps = x[0], a.get("epsilon", 1e-5)
    axis = a.get("axis", -1) % t.dim()
    shape = t.shape[axis:]
    b = x[2] if len(x) > 2 else None
    if a["_outputs"] == 1:
        return [F.layer_norm(t, shape, x[1].expand(shape), None if b is None else b.expand(shape), eps)]
    dims = tuple(range(axis, t.dim()))
    u = t.to(_dtype(int(a.get("stash_type", 1))))  # Mean and InvStdDev: in the stash type
    mean = u.mean(dims, keepdim=True)
    inv_std = torch.rsqrt((u - mean).square().mean(dims, keepdim=True) + eps)
    y = ((u - mean) * inv_std).to(t.dtype) * x[1]
    return [y if b is None else y + b, mean, inv_std]


@op("LRN")
def _lrn(a: Attrs, x: list[Any]) -> list[Any]:
    """Over the channels c - (size - 1) // 2 .. c + size // 2 (torch's local_response_norm mirrors this window
    for an even size)."""
    t, size = x[0], int(a["size"])
    squares = (t * t).reshape(t.shape[0], 1, t.shape[1], -1)
    squares = F.pad(squares, [0, 0, (size - 1) // 2, size // 2])
    mean = F.avg_pool2d(squares, (size, 1), stride=1).reshape(t.shape)
    return [t / (a.get("bias", 1.0) + a.get("alpha", 1e-4) * mean) ** a.get("beta", 0.75)]


@op("Dropout")
def _dropout(a: Attrs, x: list[Any]) -> list[Any]:
    """Inference semantics (fine-tuning keeps dropout off); the mask is all true (opset < 10: all ones of x's type)."""
    training = _given(x, 2)
    ratio = _given(x, 1)
    if training is not None and bool(training.item()) and (ratio is None or float(ratio.item()) != 0.0):
        raise NotImplementedError("Dropout in training mode")
    return [x[0], torch.ones_like(x[0], dtype=torch.bool if a["_opset"] >= 10 else x[0].dtype)]


# ---------------------------------------------------------------- linear algebra


@op("Gemm")
def _gemm(a: Attrs, x: list[Any]) -> list[Any]:
    m, w = x[0], x[1]
    c = x[2] if len(x) > 2 else None
    if a.get("transA", 0):
        m = m.transpose(0, 1)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transB", 0) and alpha == 1.0 and (c is None or beta == 1.0) and (c is None or c.dim() <= 1):
        return [F.linear(m, w, c)]
    y = m @ (w.transpose(0, 1) if a.get("transB", 0) else w)
    y = y * alpha if alpha != 1.0 else y
    return [y if c is None else y + beta * c]


@op("MatMul")
def _matmul(a: Attrs, x: list[Any]) -> list[Any]:
    return [torch.matmul(x[0], x[1])]


@op("Einsum")
def _einsum(a: Attrs, x: list[Any]) -> list[Any]:
    return [torch.einsum(_text(a["equation"], ""), *x)]


# ---------------------------------------------------------------- shapes and indexing


@op("Shape")
def _shape(a: Attrs, x: list[Any]) -> list[Any]:
    dims = list(x[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@op("Size")
def _size(a: Attrs, x: list[Any]) -> list[Any]:
    return [torch.tensor(x[0].numel(), dtype=torch.int64)]


@op("Reshape")
def _reshape(a: Attrs, x: list[Any]) -> list[Any]:
    dims = _ints(x[1]) if len(x) > 1 else list(a["shape"])
    if not a.get("allowzero", 0):
        dims = [x[0].shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return [x[0].reshape(dims)]


@op("Flatten")
def _flatten(a: Attrs, x: list[Any]) -> list[Any]:
    t = x[0]
    axis = a.get("axis", 1)
    axis = axis + t.dim() if axis < 0 else axis  # axis may be rank: all dims go to the first
    return [t.reshape(math.prod(t.shape[:axis]), math.prod(t.shape[axis:]))]


@op("Transpose")
def _transpose(a: Attrs, x: list[Any]) -> list[Any]:
    perm = a.get("perm", list(range(x[0].dim()))[::-1])
    return [x[0].permute(*perm)]


@op("Squeeze")
def _squeeze(a: Attrs, x: list[Any]) -> list[Any]:
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
    if axes is None:
        return [x[0].squeeze()]
    t = x[0]
    for ax in sorted((ax % t.dim() for ax in axes), reverse=True):
        t = t.squeeze(ax)
    return [t]


@op("Unsqueeze")
def _unsqueeze(a: Attrs, x: list[Any]) -> list[Any]:
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a["axes"])
    t = x[0]
    rank = t.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        t = t.unsqueeze(ax)
    return [t]


@op("Concat")
def _concat(a: Attrs, x: list[Any]) -> list[Any]:
    parts = [t for t in x if t is not None and (t.numel() or t.dim() > 1)]
    return [torch.cat(parts or x, dim=a["axis"])]


@op("Split")
def _split(a: Attrs, x: list[Any]) -> list[Any]:
    t = x[0]
    axis = a.get("axis", 0) % t.dim()
    sizes = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("split")
    if sizes is None:
        parts = int(a.get("num_outputs") or a["_outputs"])
        step = -(-t.shape[axis] // parts)
        sizes = [min(step, t.shape[axis] - i * step) for i in range(parts)]
    return list(torch.split(t, list(sizes), dim=axis))


@op("Slice")
def _slice(a: Attrs, x: list[Any]) -> list[Any]:
    t = x[0]
    if len(x) > 1:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
    index: list[Any] = [slice(None)] * t.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax %= t.dim()
        n = t.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[ax] = slice(s, max(s, e), st)
        else:  # negative steps: torch slices forward only, so the picks as indices (descending)
            s = max(0, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            picks = list(range(s, e, st)) if n else []
            index[ax] = torch.tensor(picks, dtype=torch.int64, device=t.device) if picks else slice(0, 0)
    out = t
    for ax, ix in enumerate(index):
        if isinstance(ix, torch.Tensor):
            out = out.index_select(ax, ix)
        elif ix != slice(None):
            out = out[(slice(None),) * ax + (ix,)]
    return [out]


@op("Gather")
def _gather(a: Attrs, x: list[Any]) -> list[Any]:
    t, idx = x[0], x[1].long()
    axis = a.get("axis", 0) % t.dim()
    idx = torch.where(idx < 0, idx + t.shape[axis], idx)
    out = t.index_select(axis, idx.reshape(-1).to(t.device))
    return [out.reshape(t.shape[:axis] + idx.shape + t.shape[axis + 1 :])]


@op("GatherElements")
def _gather_elements(a: Attrs, x: list[Any]) -> list[Any]:
    axis = a.get("axis", 0) % x[0].dim()
    idx = x[1].long()
    return [torch.gather(x[0], axis, torch.where(idx < 0, idx + x[0].shape[axis], idx))]


@op("Expand")
def _expand(a: Attrs, x: list[Any]) -> list[Any]:
    shape = _ints(x[1])
    t = x[0]
    rank = max(t.dim(), len(shape))
    shape = [1] * (rank - len(shape)) + shape
    have = [1] * (rank - t.dim()) + list(t.shape)
    return [t.reshape(have).expand([max(s, h) if s == 1 or h == 1 else s for s, h in zip(shape, have, strict=True)])]


@op("Tile")
def _tile(a: Attrs, x: list[Any]) -> list[Any]:
    return [x[0].repeat(*_ints(x[1]))]


@op("ConstantOfShape")
def _constant_of_shape(a: Attrs, x: list[Any]) -> list[Any]:
    value = a.get("value")
    fill = torch.as_tensor(value).reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return [torch.full(_ints(x[0]), fill.item(), dtype=fill.dtype)]


@op("Range")
def _range(a: Attrs, x: list[Any]) -> list[Any]:
    """start + i * delta for i < max(ceil((limit - start) / delta), 0): empty, not an error, where the signs differ."""
    start, limit, delta = (v.item() for v in x[:3])
    if x[0].dtype.is_floating_point:
        count = max(math.ceil((limit - start) / delta), 0)
        return [(torch.arange(count, dtype=torch.float64) * delta + start).to(x[0].dtype)]
    count = max(-((start - limit) // delta), 0)
    return [torch.arange(count, dtype=x[0].dtype) * delta + start]


@op("Pad")
def _pad(a: Attrs, x: list[Any]) -> list[Any]:
    t = x[0]
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a["pads"])
    value = x[2].item() if len(x) > 2 and x[2] is not None and x[2].numel() else a.get("value", 0.0)
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(t.dim()))
    n = len(axes)
    full = [0] * (2 * t.dim())
    for i, ax in enumerate(axes):
        ax %= t.dim()
        full[ax], full[t.dim() + ax] = pads[i], pads[n + i]
    mode = _text(a.get("mode"), "constant")
    if mode == "constant":
        extra: list[int] = []
        for ax in reversed(range(t.dim())):
            extra += [full[ax], full[t.dim() + ax]]
        while len(extra) > 2 and extra[-2:] == [0, 0]:
            extra = extra[:-2]
        return [F.pad(t, extra, value=value)]
    if mode not in ("reflect", "edge", "wrap"):
        raise NotImplementedError(f"Pad mode {mode}")
    for ax in range(t.dim()):  # any rank, any axis: gathers (F.pad's modes take the last 1-3 dims of 2-5-D tensors)
        t = _pad_axis(t, ax, full[ax], full[t.dim() + ax], mode)
    return [t]


def _pad_axis(t: Any, axis: int, begin: int, end: int, mode: str) -> Any:
    """t padded along axis in mode reflect, edge or wrap (negative pads crop first)."""
    t = t.narrow(axis, max(-begin, 0), t.shape[axis] - max(-begin, 0) - max(-end, 0))
    begin, end, n = max(begin, 0), max(end, 0), t.shape[axis]
    if not begin and not end:
        return t
    picks = []
    for i in range(-begin, n + end):
        if mode == "edge":
            picks.append(min(max(i, 0), n - 1))
        elif mode == "wrap":
            picks.append(i % n)
        else:  # reflect: mirrored about the first and last elements, which are not repeated
            period = 2 * (n - 1)
            j = i % period if period else 0
            picks.append(j if j < n else period - j)
    return t.index_select(axis, torch.tensor(picks, dtype=torch.int64, device=t.device))


# ---------------------------------------------------------------- resizing


@dataclass(frozen=True)
class _Resampling:
    """How Resize and Upsample place each output position in the input and weigh its neighbours."""

    mode: str = "nearest"  # nearest, linear or cubic
    coordinates: str = "half_pixel"
    nearest: str = "round_prefer_floor"  # or round_prefer_ceil, floor, ceil; legacy (opset < 11): floor, ceil down
    cubic_a: float = -0.75
    exclude_outside: bool = False
    antialias: bool = False
    extrapolation: float = 0.0


def _source(how: _Resampling, y: Any, n: int, length: int, scale: float, roi: tuple[float, float]) -> Any:
    """The input coordinate of each output position y (float32), a dim of n resized to length by scale.

    As onnxruntime computes it: in float32 (in float64, as the ONNX reference implementation, some land on the
    other side of a rounding boundary), align_corners over the integer output length (the reference: over
    scale * n, which differs when that is not whole), pytorch_half_pixel mapping a single output to 0."""
    mode, s = how.coordinates, torch.tensor(scale, dtype=torch.float32)
    if mode == "asymmetric":
        return y / s
    if mode == "half_pixel":
        return (y + 0.5) / s - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / s - 0.5 if length > 1 else torch.zeros_like(y)
    if mode == "tf_half_pixel_for_nn":  # opsets 11-12
        return (y + 0.5) / s
    if mode == "align_corners":
        return y * (n - 1) / (length - 1) if length > 1 else torch.zeros_like(y)
    if mode == "half_pixel_symmetric":  # the offset in float32, the rest in float64, as onnxruntime
        adjustment = torch.tensor(length, dtype=torch.float32) / (s * n)  # (not length / tensor: a reciprocal)
        offset = torch.tensor(n / 2, dtype=torch.float32) * (1 - adjustment)
        return (offset.double() + (y.double() + 0.5) / s.double() - 0.5).float()
    if mode == "tf_crop_and_resize":
        lo, hi = (torch.tensor(v, dtype=torch.float32) for v in roi)
        if length > 1:
            return lo * (n - 1) + y * (hi - lo) * (n - 1) / (length - 1)
        return ((lo + hi) / 2 * (n - 1)).expand(y.shape)
    raise NotImplementedError(f"Resize coordinate_transformation_mode {mode}")


def _nearest(how: _Resampling, src: Any, scale: float) -> Any:
    """The input position nearest each source coordinate, by how.nearest."""
    rule = how.nearest if how.nearest != "legacy" else "ceil" if scale < 1 else "floor"
    if rule == "round_prefer_floor":
        return torch.ceil(src - 0.5)
    if rule == "round_prefer_ceil":
        return torch.floor(src + 0.5)
    if rule in ("floor", "ceil"):
        return torch.floor(src) if rule == "floor" else torch.ceil(src)
    raise NotImplementedError(f"Resize nearest_mode {rule}")


def _kernel(how: _Resampling, d: Any) -> Any:
    """The linear (triangle) or cubic (Keys, coefficient cubic_a) kernel at distances d."""
    d = d.abs()
    if how.mode == "linear":
        return (1 - d).clamp(min=0)
    a = how.cubic_a
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _taps(how: _Resampling, src: Any, scale: float) -> tuple[Any, Any]:
    """Input positions and weights (output positions x taps) of linear or cubic interpolation; antialiased,
    the kernel is stretched by 1 / scale when downsampling."""
    if how.mode not in ("linear", "cubic"):
        raise NotImplementedError(f"Resize mode {how.mode}")
    base = torch.ceil(src) - 1  # the fraction is in (0, 1]: a whole coordinate is the right tap of its pair
    stretch = min(scale, 1.0) if how.antialias else 1.0
    first = math.floor(-(1 if how.mode == "linear" else 2) / stretch) + 1
    offsets = torch.arange(first, 2 - first, dtype=torch.float64)
    weights = _kernel(how, (offsets[None, :] - (src - base).double()[:, None]) * stretch)
    return base[:, None] + offsets[None, :], weights


def _resize_axis(t: Any, axis: int, length: int, scale: float, how: _Resampling, roi: tuple[float, float]) -> Any:
    n = t.shape[axis]
    # float32 coordinates, as onnxruntime: in float64 some fall on the other side of a rounding boundary
    src = _source(how, torch.arange(length, dtype=torch.float32), n, length, scale, roi)
    if how.mode == "nearest":
        out = t.index_select(axis, _nearest(how, src, scale).clamp(0, n - 1).long().to(t.device))
    else:
        positions, weights = _taps(how, src, scale)
        if how.exclude_outside:
            weights = weights * ((positions >= 0) & (positions <= n - 1))
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)
        positions = positions.clamp(0, n - 1).long().to(t.device)
        weights = weights.to(device=t.device, dtype=t.dtype)
        shape = [-1 if d == axis else 1 for d in range(t.dim())]
        out = t.index_select(axis, positions[:, 0]) * weights[:, 0].reshape(shape)
        for j in range(1, positions.shape[1]):
            out = out + t.index_select(axis, positions[:, j]) * weights[:, j].reshape(shape)
    if how.coordinates == "tf_crop_and_resize":
        outside = ((src < 0) | (src > n - 1)).to(t.device).reshape([-1 if d == axis else 1 for d in range(t.dim())])
        out = torch.where(outside, torch.tensor(how.extrapolation, dtype=out.dtype, device=out.device), out)
    return out


def _resize_plan(
    shape: Sequence[int], axes: list[int], scales: list[float] | None, sizes: list[int] | None, policy: str
) -> list[tuple[int, float, int]]:
    """(axis, scale, output length) of each resized axis; lengths from scales are floored in float32, as
    onnxruntime computes them."""
    if sizes is None:
        assert scales is not None
        return [(ax, s, math.floor(float(torch.tensor(s) * shape[ax]))) for ax, s in zip(axes, scales, strict=True)]
    ratios = [size / shape[ax] if shape[ax] else 1.0 for ax, size in zip(axes, sizes, strict=True)]
    if policy == "stretch":
        return list(zip(axes, ratios, sizes, strict=True))
    if policy not in ("not_larger", "not_smaller"):
        raise NotImplementedError(f"Resize keep_aspect_ratio_policy {policy}")
    r = float(torch.tensor(min(ratios) if policy == "not_larger" else max(ratios), dtype=torch.float32))
    return [(ax, r, math.floor(float(torch.tensor(r) * shape[ax]) + 0.5)) for ax in axes]


def _resampled(
    t: Any, plan: list[tuple[int, float, int]], how: _Resampling, rois: dict[int, tuple[float, float]]
) -> Any:
    """t resized axis by axis (the interpolations are separable).

    As onnxruntime: integers interpolate in float32, then truncate; an axis of scale 1 is left as it is; and an
    output of the input's shape is the input, whatever the scales and the roi."""
    if all(length == t.shape[axis] for axis, _, length in plan):
        return t
    exact = how.mode == "nearest" and how.coordinates != "tf_crop_and_resize"
    work = t
    if not exact and t.dtype not in (torch.float32, torch.float64):
        work = t.to(torch.float32)
    for axis, scale, length in plan:
        if scale == 1 and length == t.shape[axis]:
            continue
        work = _resize_axis(work, axis, length, scale, how, rois.get(axis, (0.0, 1.0)))
    if work.dtype == t.dtype:
        return work
    if t.dtype.is_floating_point:
        return work.to(t.dtype)
    info = torch.iinfo(t.dtype)
    return work.trunc().clamp(info.min, info.max).to(t.dtype)


def _legacy_resize(t: Any, scales: list[float], mode: str) -> Any:
    """Upsample (opsets 7-9) and Resize-10: asymmetric coordinates, nearest rounding down (up when downsampling)."""
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    how = _Resampling(mode=mode, coordinates="asymmetric", nearest="legacy")
    return _resampled(t, _resize_plan(t.shape, list(range(t.dim())), scales, None, "stretch"), how, {})


@op("Upsample")
def _upsample(a: Attrs, x: list[Any]) -> list[Any]:
    scales = x[1].tolist() if len(x) > 1 else list(a["scales"])  # opset 7: an attribute
    return [_legacy_resize(x[0], [float(s) for s in scales], _text(a.get("mode"), "nearest"))]


@op("Resize")
def _resize(a: Attrs, x: list[Any]) -> list[Any]:
    t = x[0]
    mode = _text(a.get("mode"), "nearest")
    if a["_opset"] < 11:
        return [_legacy_resize(t, [float(s) for s in x[1].tolist()], mode)]
    how = _Resampling(
        mode=mode,
        coordinates=_text(a.get("coordinate_transformation_mode"), "half_pixel"),
        nearest=_text(a.get("nearest_mode"), "round_prefer_floor"),
        cubic_a=float(a.get("cubic_coeff_a", -0.75)),
        exclude_outside=bool(a.get("exclude_outside", 0)),
        antialias=bool(a.get("antialias", 0)),
        extrapolation=float(a.get("extrapolation_value", 0.0)),
    )
    axes = [ax % t.dim() for ax in a.get("axes", range(t.dim()))]
    roi, scales, sizes = _given(x, 1), _given(x, 2), _given(x, 3)
    policy = _text(a.get("keep_aspect_ratio_policy"), "stretch")
    if sizes is not None:
        plan = _resize_plan(t.shape, axes, None, _ints(sizes), policy)
    elif scales is not None:
        plan = _resize_plan(t.shape, axes, [float(s) for s in scales.tolist()], None, policy)
    else:
        raise NotImplementedError("Resize without scales or sizes")
    bounds = [float(v) for v in roi.tolist()] if roi is not None else []
    rois = {ax: (bounds[i], bounds[len(axes) + i]) for i, ax in enumerate(axes)} if bounds else {}
    return [_resampled(t, plan, how, rois)]


# ---------------------------------------------------------------- reductions


def _reduce(fn: Callable[..., Any]) -> Op:
    def run(a: Attrs, x: list[Any]) -> list[Any]:
        t = x[0]
        axes = _ints(x[1]) if len(x) > 1 and x[1] is not None and x[1].numel() else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0):
                return [t]
            axes = list(range(t.dim()))
        return [fn(t, dim=tuple(ax % max(t.dim(), 1) for ax in axes), keepdim=keep)]

    return run


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(lambda t, dim, keepdim: _bound(t, dim, keepdim, largest=True))
OPS["ReduceMin"] = _reduce(lambda t, dim, keepdim: _bound(t, dim, keepdim, largest=False))
OPS["ReduceProd"] = _reduce(lambda t, dim, keepdim: _prod(t, dim, keepdim))
OPS["ReduceSumSquare"] = _reduce(lambda t, dim, keepdim: torch.sum(t * t, dim=dim, keepdim=keepdim))
OPS["ReduceL2"] = _reduce(lambda t, dim, keepdim: torch.sqrt(torch.sum(t * t, dim=dim, keepdim=keepdim)))
OPS["ReduceL1"] = _reduce(lambda t, dim, keepdim: torch.sum(t.abs(), dim=dim, keepdim=keepdim))
OPS["ReduceLogSumExp"] = _reduce(torch.logsumexp)


def _bound(t: Any, dim: tuple[int, ...], keepdim: bool, largest: bool) -> Any:
    """amax (amin) over dim; over an empty set, the lowest (largest) value of the type, as ONNX defines it."""
    if all(t.shape[d] for d in dim):
        return torch.amax(t, dim=dim, keepdim=keepdim) if largest else torch.amin(t, dim=dim, keepdim=keepdim)
    shape = [1 if d in dim else n for d, n in enumerate(t.shape) if keepdim or d not in dim]
    return torch.full(shape, _extreme(t.dtype, not largest), dtype=t.dtype, device=t.device)


def _prod(t: Any, dim: tuple[int, ...], keepdim: bool) -> Any:
    for d in sorted(dim, reverse=True):
        t = torch.prod(t, dim=d, keepdim=keepdim)
    return t


def _arg_of(fn: Callable[..., Any]) -> Op:
    def run(a: Attrs, x: list[Any]) -> list[Any]:
        t = x[0]
        axis = a.get("axis", 0) % t.dim()
        if a.get("select_last_index", 0):
            flipped = fn(t.flip(axis), dim=axis, keepdim=bool(a.get("keepdims", 1)))
            return [t.shape[axis] - 1 - flipped]
        return [fn(t, dim=axis, keepdim=bool(a.get("keepdims", 1)))]

    return run


OPS["ArgMax"], OPS["ArgMin"] = _arg_of(torch.argmax), _arg_of(torch.argmin)


OPS.update(RECURRENT)  # RNN, GRU, LSTM (recurrent.py)
