"""Run the original and the compressed model in ONNX Runtime on the same inputs and compare.

Inputs are random (respecting dtypes; dynamic dims get defaults, overridable per input;
fixed values per input with ``input_values``) or come from the user's .npz file.

Per float output the error is the RMS of the difference divided by the RMS of the
reference ("rel to RMS"), a figure that stays meaningful where single values are near
zero. Outputs bounded by their last op (Sigmoid, Softmax, Tanh, ...: probabilities and
the like) are compared in absolute terms instead ("abs, bounded output"): their natural
scale is 1, and a detector that sees nothing in random noise has a reference near zero
everywhere. Top-1 agreement is given for class scores only: a softmax output (also one
written out as Exp / sum), or a linear layer's (N, C) output with C >= 10, integer outputs are
compared element by element. Where the error is large, ``layer_errors`` measures it at the
input and output of every decomposed layer, so the layers that add the most can be named.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from wnc_onnx.analyze.graph import with_outputs
from wnc_onnx.analyze.heads import heads, measured
from wnc_onnx.data.feeds import Drawn, random_inputs
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io.model_io import load_model
from wnc_onnx.io.session import cpu_session

log = logging.getLogger(__name__)

# An output error above this (relative RMS, or absolute for bounded outputs) gets a warning.
LARGE_ERROR = 0.1
# Ops whose output lies in [0, 1] or [-1, 1]: compared in absolute terms.
BOUNDED_OPS = frozenset({"Sigmoid", "Softmax", "HardSigmoid", "Tanh", "Softsign"})
# Ops of a final linear layer: their (N, C) output holds logits when C is large enough.
LINEAR_OPS = frozenset({"Gemm", "MatMul", "Add"})
# Ops looked through when finding what produced an output.
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast"})


@dataclass
class OutputDiff:
    name: str
    shape: list[int]
    # "float", "class scores" (logits), "class probabilities" (softmax: bounded class scores),
    # "bounded" (float in [0, 1] or [-1, 1]) or "integer"
    kind: str
    error: float | None  # the figure --tolerance checks (None for integer outputs)
    norm: str  # how ``error`` is normalized: "rel to RMS", "abs, bounded output", "abs, reference is 0"
    max_abs: float
    ref_rms: float
    ref_range: list[float]  # [min, max] of the reference
    finite: bool  # the compressed model's output has no NaN/inf
    top1_agreement: float | None = None  # class-score outputs
    equal_fraction: float | None = None  # integer outputs: elements that match exactly
    # an output made by post-processing (ArgMax, TopK, NMS, a Cast to integers) is measured at
    # the float tensor that feeds it: that tensor, and the op that makes the output
    measured_at: str | None = None
    made_by: str | None = None


@dataclass
class VerifyResult:
    outputs: list[OutputDiff] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    source: str = "random"
    tolerance: float | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)  # see layer_errors

    @property
    def worst(self) -> OutputDiff | None:
        scored = [o for o in self.outputs if o.error is not None]
        return max(scored, key=lambda o: o.error or 0.0, default=None)

    @property
    def worst_rel(self) -> float:
        worst = self.worst
        return worst.error or 0.0 if worst is not None else 0.0

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.worst_rel <= self.tolerance

    @property
    def large(self) -> bool:
        """Outputs differ enough that the user should act before shipping."""
        if self.worst_rel > LARGE_ERROR or any(not o.finite for o in self.outputs):
            return True
        return any(o.top1_agreement is not None and o.top1_agreement < 0.9 for o in self.outputs) or any(
            o.equal_fraction is not None and o.equal_fraction < 0.9 for o in self.outputs
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_rel"] = self.worst_rel
        d["passed"] = self.passed
        d["large_error"] = self.large
        return d

    def to_table(self) -> str:
        shapes = ", ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'}" for k, v in self.input_shapes.items())
        lines = [f"verify ({self.source} inputs: {shapes}):"]
        width = max([len(o.name) for o in self.outputs] + [6])
        for o in self.outputs:
            if o.error is None:
                figure = f"equal {100 * (o.equal_fraction or 0.0):.1f}% of elements (integer output)"
            else:
                figure = f"error {o.error:.3g} ({o.norm})  max abs {o.max_abs:.3g}"
                figure += f"  reference in [{o.ref_range[0]:.3g}, {o.ref_range[1]:.3g}]"
            if o.top1_agreement is not None:
                figure += f"  top-1 agreement {100 * o.top1_agreement:.1f}%"
            if o.measured_at is not None:
                figure += f"  (measured at '{o.measured_at}', which {o.made_by} turns into the output"
                if o.equal_fraction is not None:
                    figure += f"; the output equal on {100 * o.equal_fraction:.1f}%"
                figure += ")"
            if not o.finite:
                figure += "  NaN/Inf in the compressed output"
            lines.append(f"  {o.name:{width}s}  {figure}")
        if self.tolerance is not None:
            verdict = "within" if self.passed else "EXCEEDS"
            lines.append(f"  worst error {self.worst_rel:.3g} {verdict} tolerance {self.tolerance:g}")
        return "\n".join(lines)

    def advice(self, fix: str | None = None) -> str | None:
        """One line for a large error: what it is and what to do (``fix``, by default the
        low-rank knobs), naming the worst layers."""
        if not self.large:
            return None
        worst = self.worst
        what = f"error {worst.error:.3g} on '{worst.name}'" if worst is not None and worst.error else "outputs differ"
        top1 = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        if top1 and min(top1) < 0.9:
            what += f", top-1 agreement {100 * min(top1):.0f}%"
        culprits = [r["name"] for r in sorted(self.layers, key=lambda r: -r["added"])[:3] if r["added"] > 0]
        fix = fix or "fine-tune it (wnc-onnx finetune), raise --rank-boost (e.g. 0.3)"
        if culprits:
            pattern = "|".join(re.escape(n) for n in culprits)
            fix += f", or leave out the layers that add the most error: --exclude '^({pattern})$'"
        source = "random inputs" if self.source == "random" else "your inputs"
        return f"warning: the compressed model's outputs differ a lot ({what}, {source}); before shipping, {fix}"


ModelOrPath = onnx.ModelProto | str | os.PathLike[str]


def _graph(model: ModelOrPath) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _load_failure(exc: Exception) -> WncError:
    """onnxruntime could not load the original model: say so, with what can help."""
    text = one_line(exc, 240)
    if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
        fix = (
            "this onnxruntime has no kernel for an op at the model's opset; convert the model to a newer "
            "opset (onnx.version_converter.convert_version) to verify it, or drop --verify"
        )
    else:
        fix = "verify needs a model that onnxruntime loads; drop --verify, or re-export the model"
    return WncError(f"onnxruntime cannot load the original model: {text}", fix)


def _run_failure(exc: Exception, drawn: Drawn, sized: bool = False) -> WncError:
    """onnxruntime could not run the original model on the inputs: say which flags can help."""
    fixes = []
    if sized and not drawn.defaulted_dims:
        fixes.append("check the sizes given with --input-shape against the model's inputs")
    if drawn.defaulted_dims:
        fixes.append("give real sizes with " + " ".join(f"--input-shape {n}=D1,D2,..." for n in drawn.defaulted_dims))
    if drawn.guessed_values:
        fixes.append(
            "give valid values for "
            + ", ".join(drawn.guessed_values)
            + " with "
            + " ".join(f"--input-value {n}=V" for n in drawn.guessed_values)
        )
    fixes.append(("or give" if fixes else "give") + " real data with --inputs file.npz")
    return WncError(
        f"onnxruntime cannot run the original model on the verify inputs: {one_line(exc, 240)}", "; ".join(fixes)
    )


def _producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    """The node that produced ``name``, looking through reshapes and casts."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for _ in range(16):
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or not node.input:
            return node
        name = node.input[0]
    return None


def _op(model: onnx.ModelProto, name: str) -> str | None:
    """The producing op, with a softmax written out as Exp / sum (Div of an Exp) named Softmax."""
    node = _producer(model, name)
    if node is None:
        return None
    if node.op_type == "Div" and node.input:
        numerator = _producer(model, node.input[0])
        if numerator is not None and numerator.op_type == "Exp":
            return "Softmax"
    return node.op_type


# A linear layer's output counts as class scores from this many classes on: below it,
# (N, 3) MOS scores, (N, 4) boxes and the like are far more often regressions.
MIN_CLASSES = 10


def output_kind(model: onnx.ModelProto, name: str, ref: np.ndarray) -> str:
    if not np.issubdtype(ref.dtype, np.floating):
        return "integer"
    op = _op(model, name)
    if op in ("Softmax", "LogSoftmax") and ref.ndim >= 2 and ref.shape[-1] > 1:
        return "class probabilities" if op == "Softmax" else "class scores"
    squeezed = [d for d in ref.shape[1:] if d != 1]
    if op in LINEAR_OPS and ref.ndim >= 2 and len(squeezed) == 1 and squeezed[0] >= MIN_CLASSES:
        return "class scores"
    if op in BOUNDED_OPS:
        return "bounded"
    return "float"


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Rows (samples, or positions for per-token outputs) where the compressed model's top
    class is one of the reference's (ties count). Classes lie on the last axis that is not 1."""
    if all(d == 1 for d in a.shape[2:]):
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    else:
        a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    top = a2.max(axis=1, keepdims=True)
    tied = a2 >= top - 1e-6 * np.maximum(np.abs(top), 1e-12)
    pick = b2.argmax(axis=1)
    return float(np.mean(tied[np.arange(a2.shape[0]), pick]))


def compare_output(name: str, kind: str, a: np.ndarray, b: np.ndarray) -> OutputDiff:
    if a.shape != b.shape:
        raise RuntimeError(f"output {name} changed shape: {a.shape} -> {b.shape} (a bug)")
    if kind == "integer":
        eq = float(np.mean(a == b)) if a.size else 1.0
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        max_abs = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        return OutputDiff(name, list(a.shape), kind, None, "exact", max_abs, 0.0, [lo, hi], True, None, eq)
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    finite = bool(np.all(np.isfinite(b64)))
    diff = a64 - b64
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    rms_diff = float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0
    ref_rms = float(np.sqrt(np.mean(a64**2))) if a64.size else 0.0
    if kind in ("bounded", "class probabilities"):
        error, norm = rms_diff, "abs, bounded output"
    elif ref_rms > 0:
        error, norm = rms_diff / ref_rms, "rel to RMS"
    else:
        error, norm = rms_diff, "abs, reference is 0"
    if not finite:
        error = float("inf")
    top1 = _top1_agreement(a64, b64) if kind.startswith("class") and a64.size else None
    lo, hi = (float(a64.min()), float(a64.max())) if a64.size else (0.0, 0.0)
    return OutputDiff(name, list(a.shape), kind, error, norm, max_abs, ref_rms, [lo, hi], finite, top1)


def verify(
    original: ModelOrPath,
    compressed: ModelOrPath,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    input_values: Mapping[str, float] | None = None,
    tolerance: float | None = None,
    seed: int = 0,
    threads: int = 0,
    layers: Sequence[tuple[str, str, str]] = (),
) -> VerifyResult:
    """Compare the two models' outputs on the same inputs (models or paths to them).

    ``layers``: (name, input tensor, output tensor) of decomposed layers; where the error
    is large, the error at each is measured too (``VerifyResult.layers``)."""
    graph = _graph(original)
    drawn = Drawn()
    feeds = dict(inputs) if inputs is not None else random_inputs(graph, input_shapes, seed, input_values, drawn)
    other = _graph(compressed)
    names = [o.name for o in graph.graph.output]
    points = measurement_points(graph, other)
    wanted = names + list(points.values())
    try:
        ref_session = cpu_session(with_outputs(graph, wanted), threads)
    except WncError:  # onnxruntime missing: its own message
        raise
    except Exception as exc:
        raise _load_failure(exc) from None
    try:
        ref = dict(zip([o.name for o in ref_session.get_outputs()], ref_session.run(None, feeds), strict=True))
    except Exception as exc:
        raise _run_failure(exc, drawn if inputs is None else Drawn(), bool(input_shapes) and inputs is None) from None
    ours = cpu_session(with_outputs(other, wanted), threads)
    got = dict(zip([o.name for o in ours.get_outputs()], ours.run(None, feeds), strict=True))
    result = VerifyResult(
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        source="user" if inputs is not None else "random",
        tolerance=tolerance,
    )
    for name in names:
        result.outputs.append(compare_measured(graph, name, points, ref, got))
    if layers and result.large:  # worth a second pair of runs only when the user has to act
        result.layers = layer_errors(graph, other, feeds, layers, threads)
    return result


def measurement_points(original: onnx.ModelProto, compressed: onnx.ModelProto | None = None) -> dict[str, str]:
    """output -> the float tensor it is measured at, for the outputs made by post-processing
    (``analyze.heads``) whose tensor both models compute."""
    produced = {o for n in original.graph.node for o in n.output}
    if compressed is not None:
        produced &= {o for n in compressed.graph.node for o in n.output}
    return {out: at for out, at in measured(original).items() if at != out and at in produced}


def compare_measured(
    model: onnx.ModelProto,
    name: str,
    points: Mapping[str, str],
    ref: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
) -> OutputDiff:
    """Output ``name`` compared as ``--verify`` does, at its measurement point when it has one."""
    a, b = np.asarray(ref[name]), np.asarray(got[name])
    at = points.get(name)
    if at is None:
        return compare_output(name, output_kind(model, name, a), a, b)
    fa, fb = np.asarray(ref[at]), np.asarray(got[at])
    diff = compare_output(name, output_kind(model, at, fa), fa, fb)
    diff.measured_at = at
    diff.made_by = next((h.post for h in heads(model) if h.output == name), None)
    if a.shape == b.shape and a.size:
        diff.equal_fraction = float(np.mean(a == b))
    return diff


def layer_errors(
    original: onnx.ModelProto,
    compressed: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    layers: Sequence[tuple[str, str, str]],
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Relative RMS error of the compressed model at the input and output of each layer.

    Both models keep every tensor name outside the rewritten layers, so each layer's input
    and output can be read from both. ``added`` = error at the output - error at the input:
    what the layer itself adds, the figure that ranks the layers to leave out."""

    def tensors(model: onnx.ModelProto) -> set[str]:
        return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}

    visible = tensors(original) & tensors(compressed)
    wanted = sorted({t for _, i, o in layers for t in (i, o) if t in visible})
    if not wanted:
        return []
    runs = []
    for model in (original, compressed):
        sess = cpu_session(with_outputs(model, wanted), threads)
        out_names = [o.name for o in sess.get_outputs()]
        values = {**feeds, **dict(zip(out_names, sess.run(None, dict(feeds)), strict=True))}  # inputs too
        runs.append(values)
    errors = {}
    for t in wanted:
        a, b = np.asarray(runs[0][t], dtype=np.float64), np.asarray(runs[1][t], dtype=np.float64)
        if a.shape != b.shape or not a.size:
            continue
        ref = float(np.sqrt(np.mean(a**2)))
        errors[t] = float(np.sqrt(np.mean((a - b) ** 2))) / ref if ref > 0 else 0.0
    out = []
    for name, i, o in layers:
        if o not in errors:
            continue
        err_in = errors.get(i, 0.0)
        out.append({"name": name, "error_in": err_in, "error_out": errors[o], "added": errors[o] - err_in})
    return out
