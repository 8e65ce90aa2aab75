"""The inputs of one bench run: ``--inputs`` as given, else random at ``--input-shape`` sizes and ``--batch``."""

from __future__ import annotations

import numpy as np
import onnx

from wnc_onnx.analyze.graph import data_inputs, shape_hint
from wnc_onnx.bench.config import BenchConfig
from wnc_onnx.data.feeds import random_inputs
from wnc_onnx.errors import WncError


def model_feeds(
    model: onnx.ModelProto, cfg: BenchConfig, batch: int, label: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """The inputs of one run at ``batch``: --inputs as given, else random at --input-shape sizes."""
    inputs = data_inputs(model)
    if cfg.inputs is not None:
        missing = [vi.name for vi in inputs if vi.name not in cfg.inputs]
        if missing:
            raise WncError(f"--inputs lacks arrays for input(s) {missing} of {label}", "store one array per input")
        return {vi.name: cfg.inputs[vi.name] for vi in inputs}
    shapes: dict[str, list[int]] = {k: list(v) for k, v in cfg.input_shapes.items()}
    explicit = tuple(cfg.batches) != (1,)  # --batch given: it sets the first dim of every input
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if not dims or vi.name in cfg.input_values:
            continue
        first = dims[0].dim_value if dims[0].HasField("dim_value") else 0
        if vi.name in shapes:
            if explicit:
                shapes[vi.name][0] = batch
        elif first <= 0 or any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims):
            rest = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in list(dims)[1:]]
            shapes[vi.name] = [batch if first <= 0 or explicit else first, *rest]
        elif explicit and first != batch:
            raise WncError(
                f"{label}: input '{vi.name}' has a fixed batch of {first}; cannot measure batch {batch}",
                f"use --batch {first}, or export the model with a dynamic batch dimension",
            )
    unknown = {k: v for k, v in shapes.items() if any(d < 0 for d in v)}
    if unknown:
        name = next(iter(unknown))
        vi = next(v for v in inputs if v.name == name)
        raise WncError(
            f"{label}: input '{name}' has dynamic dims that only you know",
            f"give them, e.g. --input-shape {shape_hint(vi)}",
        )
    return random_inputs(model, shapes, seed=seed, values=cfg.input_values)
