"""int8 through onnxruntime's own quantization tools (``onnxruntime.quantization``).

Static QDQ quantization, per channel, calibrated on the user's data where data is given; dynamic
quantization (weights int8, activations quantized at run time) where it is not, for the ops
onnxruntime's CPU kernels run that way (MatMul, Gemm: a Conv has no dynamic int8 kernel with
int8 weights). Activations are uint8 on x86 (the U8S8 kernels of AVX2 / AVX-512 / VNNI) and int8
on ARM (its S8S8 dot-product kernels)."""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter

from wnc_onnx.analyze.graph import QUANTIZATION_OPS
from wnc_onnx.errors import WncError, one_line

log = logging.getLogger(__name__)

STATIC_OPS = ("Conv", "Gemm", "MatMul")
DYNAMIC_OPS = ("Gemm", "MatMul")
PER_CHANNEL_OPSET = 13
LARGE_BYTES = 1_800_000_000  # models above this go to the tools with their weights in external data
UNAVAILABLE = "--int8 needs onnxruntime's quantization tools (onnxruntime.quantization)"


def tools() -> Any:
    """``onnxruntime.quantization``, or a WncError saying how to get it."""
    try:
        import onnxruntime.quantization as q
    except Exception as exc:  # not installed, or a build without the tools
        raise WncError(f"{UNAVAILABLE}: {one_line(exc, 120)}", "pip install onnxruntime") from None
    return q


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """The op types of ``model`` that only quantized models hold (empty for a float model)."""
    found = {n.op_type for n in model.graph.node if n.op_type in QUANTIZATION_OPS}
    return sorted(found)


def types() -> tuple[str, str]:
    """(activation, weight) types for this machine's CPU kernels."""
    arm = platform.machine().lower() in ("aarch64", "arm64")
    return ("int8" if arm else "uint8"), "int8"


class _Reader:
    """Feeds for onnxruntime's calibrator, one batch at a time (its CalibrationDataReader protocol)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def quantize(
    model: onnx.ModelProto,
    data: Sequence[dict[str, np.ndarray]] | None,
    exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """``model`` in int8; what onnxruntime's tools cannot do is one WncError."""
    try:
        return _quantize(model, data, exclude)
    except WncError:
        raise
    except Exception as exc:
        raise WncError(
            f"--int8: onnxruntime's quantization tools failed on this model: {one_line(exc, 150)}",
            "drop --int8 (or exclude the layer the message names)",
        ) from None


def _quantize(
    model: onnx.ModelProto,
    data: Sequence[dict[str, np.ndarray]] | None,
    exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """``model`` in int8 (a new model; ``model`` is left alone): static QDQ per channel on
    ``data``, else dynamic for MatMul / Gemm. ``exclude``: node names kept in float."""
    q = tools()
    act, weight = types()
    model, per_channel = per_channel_ready(model)
    qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="wnc-onnx-int8-") as tmp:
        # the tools take a path: given a ModelProto they rewrite it in place, and some releases
        # (1.19) then fail to read the external data they wrote for it
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        large = model.ByteSize() > LARGE_BYTES
        onnx.save(model, str(src), save_as_external_data=large, location="float.onnx.data")
        quiet = logging.getLogger()  # the tools warn on the root logger ("consider pre-processing")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            if data:
                reader = _Reader(data)
                q.quantize_static(
                    src,
                    out,
                    reader,
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=list(STATIC_OPS),
                    per_channel=per_channel,
                    activation_type=qtype[act],
                    weight_type=qtype[weight],
                    nodes_to_exclude=list(exclude),
                    use_external_data_format=large,
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
            else:
                q.quantize_dynamic(
                    src,
                    out,
                    op_types_to_quantize=list(DYNAMIC_OPS),
                    per_channel=per_channel,
                    weight_type=qtype[weight],
                    nodes_to_exclude=list(exclude),
                    use_external_data_format=large,
                )
        finally:
            quiet.setLevel(level)
        result = onnx.load(str(out), load_external_data=True)
    for key in ("wnc_onnx",):  # the metadata the float model carried stays
        for e in model.metadata_props:
            if e.key == key and not any(x.key == key for x in result.metadata_props):
                result.metadata_props.add(key=e.key, value=e.value)
    return result


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def per_channel_ready(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """(model, per_channel): per-channel scales need DequantizeLinear's ``axis`` (opset 13), so an
    older model is converted to opset 13 first; where onnx cannot convert it, per tensor."""
    if opset(model) >= PER_CHANNEL_OPSET:
        return model, True
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:
        log.info("int8: opset %d kept, per-tensor scales (%s)", opset(model), one_line(exc, 120))
        return model, False
    return converted, True


def layer_nodes(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """The node names of ``model`` that belong to ``layers``: the layer's own node, or the nodes
    a decomposition wrote for it (``<layer>/wnc/...``)."""
    names = set(layers)
    out = []
    for n in model.graph.node:
        if n.name in names or n.name.split("/wnc/")[0] in names and "/wnc/" in n.name:
            out.append(n.name)
    return out


def count_quantized(model: onnx.ModelProto) -> int:
    """Conv / Gemm / MatMul nodes of ``model`` whose weight reaches them through DequantizeLinear,
    or that run as integer ops."""
    deq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    integer = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm"}
    count = 0
    for n in model.graph.node:
        if n.op_type in integer or n.op_type in STATIC_OPS and len(n.input) > 1 and n.input[1] in deq:
            count += 1
    return count
