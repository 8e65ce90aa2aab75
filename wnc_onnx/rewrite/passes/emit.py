"""Building the replacement nodes: names, weights in the model's dtype, provenance."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wnc_onnx.analyze.graph import FLOAT_TYPES, GraphContext
from wnc_onnx.analyze.layer import Factors, Layer


class Emitter:
    """Collects the nodes and initializers that replace one layer.

    Names are ``<layer>/wnc/<role>``; each node records its source layer and ranks in
    ``doc_string`` and (IR >= 10) ``metadata_props`` so Netron shows where it came from.
    """

    def __init__(self, ctx: GraphContext, layer: Layer, factors: Factors, used: set[str]) -> None:
        self.ctx = ctx
        self.layer = layer
        self.factors = factors
        self.used = used
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        dt = ctx.dtype(layer.weight)
        self.np_dtype = helper.tensor_dtype_to_np_dtype(dt)
        self.onnx_dtype = dt
        # A weight stored in another type (fp16 behind a Cast) keeps it: factors are stored
        # that way too and cast back, so the file does not grow.
        stored = ctx.storage_dtype(layer.weight)
        self.storage_dtype = stored if stored in FLOAT_TYPES else dt  # integers would truncate the factors

    def _prefix(self) -> str:
        return f"{self.layer.name}/wnc"

    def tensor(self, role: str) -> str:
        return self.ctx.unique_name(f"{self._prefix()}/{role}", self.used)

    def weight(self, role: str, value: np.ndarray) -> str:
        name = self.tensor(f"{role}.weight")
        if self.storage_dtype == self.onnx_dtype:
            self.initializers.append(numpy_helper.from_array(np.asarray(value).astype(self.np_dtype), name))
            return name
        stored = helper.tensor_dtype_to_np_dtype(self.storage_dtype)
        self.initializers.append(numpy_helper.from_array(np.asarray(value).astype(stored), name))
        cast = self.tensor(f"{role}.weight_cast")
        self.node("Cast", f"{role}.cast", [name], [cast], to=self.onnx_dtype)
        return cast

    def bias(self, original: str | None, scale: float = 1.0, beta: float = 1.0) -> str | None:
        """The bias input of the layer's last node: ``original`` as it was, or (with a bias shift
        from --calibration) a new one, beta * original + scale * shift, to use with beta = 1."""
        shift = self.factors.bias_shift
        if shift is None:
            return original
        base = beta * self.ctx.array(original).astype(np.float64).reshape(-1) if original else 0.0
        return self.weight("bias", np.asarray(base + scale * shift))

    def constant(self, role: str, value: np.ndarray) -> str:
        name = self.tensor(role)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, role: str, inputs: list[str], outputs: list[str], **attrs: object) -> onnx.NodeProto:
        f = self.factors
        ranks = f"R3={f.r3}, R4={f.r4}" if f.r3 is not None else f"R={f.r4}"
        n = helper.make_node(op_type, inputs, outputs, name=self.ctx.unique_name(f"{self._prefix()}/{role}", self.used))
        n.doc_string = (
            f"wnc-onnx {f.method} of {self.layer.op_type} '{self.layer.name}' "
            f"({ranks}, groups={self.layer.groups}, kernel rel. error {f.rel_error:.4g}): {role}"
        )
        n.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        if self.ctx.model.ir_version >= 10:
            for key, value in (
                ("wnc.source", self.layer.name),
                ("wnc.method", f.method),
                ("wnc.ranks", ranks),
                ("wnc.role", role),
            ):
                entry = n.metadata_props.add()
                entry.key, entry.value = key, value
        self.nodes.append(n)
        return n


def stack_groups(factors: Factors, key: str, transform=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Concatenate a per-group factor along axis 0 (the grouped-conv channel layout)."""
    parts = [g[key] if transform is None else transform(g[key]) for g in factors.groups]
    return np.concatenate(parts, axis=0)


def expand(mat: np.ndarray, ndim: int) -> np.ndarray:
    """(out, in) matrix -> 1x1(x1) convolution weight with ``ndim`` spatial dims."""
    return mat.reshape(mat.shape + (1,) * ndim)


def conv_chain(
    em: Emitter,
    x: str,
    conv_attrs: list[onnx.AttributeProto],
    core_out: str,
) -> None:
    """Emit [1x1 in] -> DxD core with the original conv attributes; output ``core_out``.

    The 1x1 output stage is left to the caller (a conv, or Flatten + Gemm).
    """
    f, layer = em.factors, em.layer
    nd = len(layer.spatial)
    g = layer.groups
    src = x
    if f.method == "tucker2":
        w_in = stack_groups(f, "u_in", lambda u: expand(u.T, nd))  # (g*R3, S, 1..)
        mid = em.tensor("in_1x1_out")
        em.node("Conv", "in_1x1", [src, em.weight("in_1x1", w_in)], [mid], kernel_shape=[1] * nd, group=g)
        src = mid
    core = stack_groups(f, "core")  # (g*R4, R3 or S, *k)
    attrs = {a.name: a for a in conv_attrs if a.name not in ("group", "kernel_shape")}
    ksize = "x".join(str(k) for k in layer.spatial)
    node = em.node(
        "Conv",
        f"core_{ksize}",
        [src, em.weight(f"core_{ksize}", core)],
        [core_out],
        kernel_shape=list(layer.spatial),
        group=g,
    )
    node.attribute.extend(attrs.values())
