"""Scoring a model on a data set with plain onnxruntime inference (any environment)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from wnc_onnx.finetune.sources import BatchSource, model_spec
from wnc_onnx.io.session import cpu_session


def evaluate(model: onnx.ModelProto, data: Any, loss: str = "cross_entropy", batch_size: int = 256) -> dict[str, float]:
    """``accuracy`` (cross-entropy: share of argmax hits) or ``mse``, over all of ``data``."""
    spec = model_spec(model, loss)
    source = BatchSource(data, spec, batch_size, shuffle=False, label="data")
    session = cpu_session(model, purpose="scoring")  # models above 2 GB go through external data
    hits, sq, seen = 0, 0.0, 0
    for x, y in source.epoch(0):
        out = np.asarray(session.run([spec.output_name], {spec.input_name: x})[0])
        if loss == "cross_entropy":
            hits += int((out.argmax(1) == y).sum())
        else:
            sq += float(((out - y.reshape(out.shape)) ** 2).mean()) * len(x)
        seen += len(x)
    return {"accuracy": hits / seen} if loss == "cross_entropy" else {"mse": sq / seen}
