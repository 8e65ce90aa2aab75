"""Run the original and the compressed model in ONNX Runtime on the same inputs and compare.

Inputs are random (respecting dtypes; dynamic dims get defaults, overridable per input)
or come from the user's .npz file. Reports max abs / relative error per output and
top-1 agreement for classifier-like outputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from wnc_onnx import external_data
from wnc_onnx.errors import RUNTIME_HINT, WncError, one_line
from wnc_onnx.model_io import load_model, read_npz, save_model

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1
DEFAULT_DIM = 64  # unknown non-batch dims (a multiple of 32: fits stride-32 backbones)


@dataclass
class OutputDiff:
    name: str
    shape: list[int]
    max_abs: float
    rel: float  # max abs error / max abs reference value
    ref_max: float  # max abs reference value
    finite: bool  # the compressed model's output has no NaN/inf
    top1_agreement: float | None = None


@dataclass
class VerifyResult:
    outputs: list[OutputDiff] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    source: str = "random"
    tolerance: float | None = None

    @property
    def worst_rel(self) -> float:
        return max((o.rel for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.worst_rel <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_rel"] = self.worst_rel
        d["passed"] = self.passed
        return d

    def to_table(self) -> str:
        shapes = ", ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'}" for k, v in self.input_shapes.items())
        lines = [f"verify ({self.source} inputs: {shapes}):"]
        for o in self.outputs:
            top1 = f"  top-1 agreement {100 * o.top1_agreement:.1f}%" if o.top1_agreement is not None else ""
            lines.append(f"  {o.name:24s} max abs {o.max_abs:.3g}  relative {o.rel:.3g}{top1}")
        if self.tolerance is not None:
            verdict = "within" if self.passed else "EXCEEDS"
            lines.append(f"  worst relative error {self.worst_rel:.3g} {verdict} tolerance {self.tolerance:g}")
        return "\n".join(lines)


def parse_input_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["x=1,3,224,224"]`` -> ``{"x": [1, 3, 224, 224]}``."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")]
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise WncError(
                f"--input-shape {spec!r} is not NAME=D1,D2,...", "write e.g. --input-shape x=1,3,224,224"
            ) from None
    return shapes


ModelOrPath = onnx.ModelProto | str | os.PathLike[str]


def _session(model: ModelOrPath):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session; a path lets it find external data beside the model."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise WncError("checking outputs needs onnxruntime, which is not installed", RUNTIME_HINT) from None

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors reach the user as one line, not as ORT's log
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    if external_data.has_external(model):  # its data paths are absolute: write it out first
        with tempfile.TemporaryDirectory(prefix="wnc-onnx-verify-") as folder:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            path = Path(folder) / "model.onnx"
            save_model(copy, path, external=True)
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _graph(model: ModelOrPath) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def random_inputs(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    inputs = _graph_inputs(model)
    unknown = sorted(set(shapes) - {vi.name for vi in inputs})
    if unknown:
        raise WncError(
            f"--input-shape names unknown input(s) {unknown}", f"the model's inputs are {[vi.name for vi in inputs]}"
        )
    for vi in inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise WncError(f"input '{vi.name}' is not a tensor", "pass inputs with --inputs file.npz")
        if vi.name in shapes:
            shape = list(shapes[vi.name])
        else:
            shape = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(int(d.dim_value))
                else:
                    shape.append(DEFAULT_BATCH if i == 0 else DEFAULT_DIM)
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike[str], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    p = Path(path)
    feeds = read_npz(p, "inputs file", "with one array per model input", "numpy.savez(path, input_name=array)")
    names = [vi.name for vi in _graph_inputs(model)]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise WncError(f"{p} lacks arrays for input(s) {missing}", f"store one array per input: {names}")
    return {n: feeds[n] for n in names}


def verify(
    original: ModelOrPath,
    compressed: ModelOrPath,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    tolerance: float | None = None,
    seed: int = 0,
) -> VerifyResult:
    """Compare the two models' outputs on the same inputs (models or paths to them)."""
    graph = _graph(original)
    feeds = dict(inputs) if inputs is not None else random_inputs(graph, input_shapes, seed)
    try:
        ref = _session(original).run(None, feeds)
    except WncError:  # onnxruntime missing: its own message
        raise
    except Exception as exc:
        raise WncError(
            f"onnxruntime cannot run the original model on the verify inputs: {one_line(exc, 240)}",
            "give real shapes with --input-shape NAME=D1,D2,... or data with --inputs file.npz",
        ) from None
    got = _session(compressed).run(None, feeds)
    result = VerifyResult(
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        source="user" if inputs is not None else "random",
        tolerance=tolerance,
    )
    names = [o.name for o in graph.graph.output]
    for name, a, b in zip(names, ref, got, strict=True):
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            raise RuntimeError(f"output {name} changed shape: {a64.shape} -> {b64.shape} (a bug)")
        diff = np.abs(a64 - b64)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(a64).max()) if a64.size else 0.0
        rel = max_abs / scale if scale > 0 else max_abs
        top1 = None
        if a64.ndim == 2 and a64.shape[1] > 1:  # classifier-like: (batch, classes)
            top1 = float(np.mean(a64.argmax(1) == b64.argmax(1)))
        result.outputs.append(
            OutputDiff(name, list(a64.shape), max_abs, rel, scale, bool(np.all(np.isfinite(b64))), top1)
        )
    return result
