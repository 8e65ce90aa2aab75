"""Scoring a model on a data set with plain onnxruntime inference (any environment)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from wnc_onnx.check.verify import compare_output, output_kind
from wnc_onnx.finetune.sources import BatchSource, model_spec
from wnc_onnx.io.session import cpu_session


def evaluate(model: onnx.ModelProto, data: Any, loss: str = "cross_entropy", batch_size: int = 256) -> dict[str, float]:
    """``accuracy`` (cross-entropy: share of argmax hits) or ``mse``, over all of ``data``."""
    spec = model_spec(model, loss)
    source = BatchSource(data, spec, batch_size, shuffle=False, label="data")
    session = cpu_session(model, purpose="scoring")  # models above 2 GB go through external data
    hits, sq, seen = 0, 0.0, 0
    for feeds, y in source.epoch(0):
        assert y is not None  # the spec has a label loss: check_batch requires labels
        out = np.asarray(session.run([spec.output_name], feeds)[0])
        if loss == "cross_entropy":
            hits += int((out.argmax(1) == y).sum())
        else:
            sq += float(((out - y.reshape(out.shape)) ** 2).mean()) * len(y)
        seen += len(y)
    return {"accuracy": hits / seen} if loss == "cross_entropy" else {"mse": sq / seen}


def against_teacher(
    model: onnx.ModelProto, teacher: onnx.ModelProto, data: Any, batch_size: int = 256
) -> dict[str, float]:
    """The model's outputs against the teacher's on all of ``data`` (its inputs; labels unused),
    as ``--verify`` measures them: the worst ``output_error`` over the outputs and, where an
    output holds class scores, the lowest ``agreement`` (top-1)."""
    spec = model_spec(model, None)
    source = BatchSource(data, spec, batch_size, shuffle=False, label="data")
    ours, theirs = cpu_session(model, purpose="scoring"), cpu_session(teacher, purpose="scoring")
    names = [p.name for p in spec.outputs]
    got: list[list[np.ndarray]] = [[] for _ in names]
    ref: list[list[np.ndarray]] = [[] for _ in names]
    for feeds, _ in source.epoch(0):
        for i, (a, b) in enumerate(zip(theirs.run(names, feeds), ours.run(names, feeds), strict=True)):
            ref[i].append(np.asarray(a))
            got[i].append(np.asarray(b))
    worst, agree = 0.0, None
    for name, a, b in zip(names, ref, got, strict=True):
        ra, rb = np.concatenate(a), np.concatenate(b)
        diff = compare_output(name, output_kind(teacher, name, ra), ra, rb)
        worst = max(worst, diff.error if diff.error is not None else 1.0 - (diff.equal_fraction or 0.0))
        if diff.top1_agreement is not None:
            agree = diff.top1_agreement if agree is None else min(agree, diff.top1_agreement)
    return {"output_error": worst, **({"agreement": agree} if agree is not None else {})}
