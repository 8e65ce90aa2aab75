"""Knowledge distillation: the compressed model (the student) learns the original (the teacher)
on inputs alone, no labels needed.

The objective (``Objective``) has a term per graph output, chosen from the graph
(``analyze.heads``) and overridable: class scores get the KL divergence between the teacher's
and the student's softmax at a temperature, per position for sequences (the softmax axis is the
class axis), read on the logits before a final Softmax / LogSoftmax; an output made by
non-differentiable post-processing (ArgMax, TopK, NMS, a Cast to integers) is distilled at the
float tensor that feeds it; every other output gets the mean squared error divided by the
teacher's variance of that output. Feature terms add the same normalized error on intermediate
tensors both graphs hold by name: by default the outputs of the layers the low-rank pass
rewrote (it keeps their names). With labels, ``alpha`` mixes the label loss in.

The teacher runs in onnxruntime (``Teacher``): the original model with the tensors the objective
reads added to its outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from wnc_onnx.analyze.graph import with_outputs
from wnc_onnx.analyze.heads import heads
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.sources import model_spec
from wnc_onnx.io.model_io import load_model
from wnc_onnx.io.session import cpu_session

log = logging.getLogger(__name__)

KINDS = ("kl", "mse", "none")


@dataclass(frozen=True)
class Term:
    """One distillation term: ``tensor`` of both models compared by ``kind`` ("kl": softmax
    along ``axis`` at the temperature; "mse": squared error over the teacher's variance)."""

    tensor: str
    kind: str
    axis: int
    weight: float
    source: str  # the graph output it stands for, or "feature"
    why: str


@dataclass(frozen=True)
class Objective:
    terms: tuple[Term, ...]
    temperature: float
    alpha: float | None  # the label loss's share; None: no labels
    feature_weight: float

    @property
    def tensors(self) -> list[str]:
        """What both models must return for the loss."""
        return list(dict.fromkeys(t.tensor for t in self.terms))

    @property
    def outputs(self) -> list[Term]:
        return [t for t in self.terms if t.source != "feature"]

    @property
    def features(self) -> list[Term]:
        return [t for t in self.terms if t.source == "feature"]

    def agreement_term(self) -> Term | None:
        """The first class-score term: the student's top-1 agreement with the teacher is read there."""
        return next((t for t in self.outputs if t.kind == "kl"), None)

    def describe(self) -> list[dict[str, object]]:
        return [
            {"tensor": t.tensor, "kind": t.kind, "axis": t.axis, "weight": t.weight, "for": t.source, "why": t.why}
            for t in self.terms
        ]


def parse_overrides(specs: Sequence[str], what: str) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` (--distill-loss / --output-weight) -> dict; one WncError when off."""
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise WncError(f"{what} {spec!r} is not OUTPUT=VALUE", f"write e.g. {what} logits=kl")
        out[name] = value
    return out


def rewritten_outputs(model: onnx.ModelProto) -> list[str]:
    """The output tensors of the layers the low-rank pass rewrote (its ``wnc_onnx`` metadata names
    them; each layer's last emitted node writes the original output name)."""
    meta = next((e.value for e in model.metadata_props if e.key == "wnc_onnx"), None)
    if meta is None:
        return []
    try:
        layers = list(json.loads(meta).get("layers", {}))
    except ValueError:
        return []
    found = []
    for layer in layers:
        prefix = f"{layer}/wnc/"
        nodes = [n for n in model.graph.node if n.name.startswith(prefix)]
        read = {i for n in nodes for i in n.input}
        ends = [o for n in nodes for o in n.output if o and o not in read]
        if len(ends) == 1:
            found.append(ends[0])
    return found


def build_objective(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    *,
    temperature: float = 2.0,
    alpha: float | None = None,
    features: str | Sequence[str] = "auto",
    feature_weight: float = 1.0,
    losses: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
) -> Objective:
    """The distillation objective for ``student`` learning ``teacher`` (see the module doc).

    ``losses``: output -> "kl" | "mse" | "none" overrides; ``weights``: output -> weight;
    ``features``: "auto" (the rewritten layers' outputs), "none", or tensor names."""
    losses, weights = dict(losses or {}), dict(weights or {})
    names = [o.name for o in student.graph.output]
    for flag, given in (("--distill-loss", losses), ("--output-weight", weights)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise WncError(f"{flag} names unknown output(s) {unknown}", f"the model's outputs are {names}")
    bad = {k: v for k, v in losses.items() if v not in KINDS}
    if bad:
        raise WncError(f"--distill-loss {bad}: unknown loss", f"choose one of {', '.join(KINDS)}")
    produced = _produced(student) & _produced(teacher)
    terms = []
    for h in heads(student):
        kind = losses.get(h.output) or ("kl" if h.classes else "mse")
        if kind == "none":
            continue
        tensor, why = h.tensor, h.why
        if tensor not in produced and tensor not in names:
            tensor, why = h.output, f"{why}; '{h.tensor}' is not in both graphs, so the output itself"
        axis = h.axis if kind == "kl" and h.classes else -1
        terms.append(Term(tensor, kind, axis, float(weights.get(h.output, 1.0)), h.output, why))
    if not terms:
        raise WncError("every output's distillation loss is 'none'", "keep at least one output (--distill-loss)")
    wanted = (
        rewritten_outputs(student)
        if features == "auto"
        else []
        if features in ("none", "", None)
        else [str(f) for f in features]
    )
    if features not in ("auto", "none", "", None):
        missing = [f for f in wanted if f not in produced]
        if missing:
            raise WncError(
                f"--features names tensor(s) {missing[:3]} that the two models do not both compute",
                "give tensor names of the main graph that the original and the compressed model share, or 'auto'",
            )
    have = {t.tensor for t in terms}
    feats = [f for f in wanted if f in produced and f not in have]
    if feature_weight > 0:
        terms += [Term(f, "mse", -1, feature_weight / max(len(feats), 1), "feature", "a rewritten layer's output")
                  for f in feats]  # fmt: skip
    return Objective(tuple(terms), temperature, alpha, feature_weight)


def _produced(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return {o for n in g.node for o in n.output} | {vi.name for vi in g.input}


def check_interface(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    """The teacher must take the student's inputs and give its outputs (names, ranks, fixed sizes)."""
    s_in, t_in = model_spec(student, None).inputs, model_spec(teacher, None).inputs
    s_out, t_out = model_spec(student, None).outputs, model_spec(teacher, None).outputs
    for what, a, b in (("inputs", s_in, t_in), ("outputs", s_out, t_out)):
        if [p.name for p in a] != [p.name for p in b]:
            raise WncError(
                f"the teacher's {what} {[p.name for p in b]} are not the model's {[p.name for p in a]}",
                "give the original model that was compressed into this one (--teacher)",
            )
        for p, q in zip(a, b, strict=True):
            clash = len(p.dims) != len(q.dims) or any(
                x is not None and y is not None and x != y for x, y in zip(p.dims, q.dims, strict=True)
            )
            if clash or p.dtype != q.dtype:
                raise WncError(
                    f"the teacher's {what[:-1]} '{p.name}' is {q.dtype} {list(q.dims)}, the model's {p.dtype} "
                    f"{list(p.dims)}",
                    "give the original model that was compressed into this one (--teacher)",
                )


@dataclass
class Teacher:
    """The original model in onnxruntime, returning what the objective reads."""

    model: onnx.ModelProto
    tensors: list[str]
    threads: int = 0
    session: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        probe = with_outputs(self.model, self.tensors)
        self.session = cpu_session(probe, self.threads, "distillation's teacher")
        self.names = [o.name for o in self.session.get_outputs()]  # type: ignore[attr-defined]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, dict(feeds))  # type: ignore[attr-defined]
        got = dict(zip(self.names, values, strict=True))
        return {t: np.asarray(got[t]) for t in self.tensors}


def load_teacher(path: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """The teacher as a ModelProto (its external data, if any, stays on disk: onnxruntime reads it)."""
    if isinstance(path, onnx.ModelProto):
        return path
    return load_model(Path(path))  # external data paths resolved, bytes checked
