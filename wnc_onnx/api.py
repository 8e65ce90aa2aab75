"""Library API: ``compress`` and ``inspect`` for export pipelines; the CLI wraps these.

A facade: the options are merged into one ``CompressConfig`` here, and the flows in
``wnc_onnx.rewrite.flow`` do the work.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import WncError, option_error
from wnc_onnx.report import Report
from wnc_onnx.rewrite import flow
from wnc_onnx.rewrite.pipeline import ModelLike


def _config(config: CompressConfig | None, overrides: dict[str, Any]) -> CompressConfig:
    cfg = config or CompressConfig()
    try:
        return replace(cfg, **overrides) if overrides else cfg
    except (TypeError, ValueError, re.error) as exc:
        raise option_error(exc) from None


def compress(model: ModelLike, config: CompressConfig | None = None, **options: Any) -> tuple[onnx.ModelProto, Report]:
    """Compress ``model`` (a path or a ModelProto, never modified).

    ``options`` override fields of ``config`` (see CompressConfig). Returns the new
    model and the report. Raises WncError for bad input, NothingToCompressError when
    the model holds no Conv/Gemm/MatMul.
    """
    return flow.compress(model, _config(config, options))


def inspect(model: ModelLike, config: CompressConfig | None = None, **options: Any) -> Report:
    """The plan: ranks, structure and costs per layer, without factoring anything."""
    return flow.inspect(model, _config(config, options))


def load_ranks(path: str | os.PathLike[str]) -> dict[str, int | tuple[int, int]]:
    """Read a ranks file: {"layer": [R3, R4]} for Tucker-2, {"layer": R} otherwise."""
    p = Path(path)
    if not p.is_file():
        raise WncError(f"ranks file not found: {p}", "check the --ranks path")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WncError(
            f"ranks file {p} is not valid JSON: {exc}", 'write e.g. {"conv2": [25, 59], "fc7": 301}'
        ) from None
    if not isinstance(raw, dict):
        raise WncError(f"ranks file {p} must hold a JSON object", 'write e.g. {"conv2": [25, 59], "fc7": 301}')
    out: dict[str, int | tuple[int, int]] = {}
    for name, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
        elif (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            out[name] = (value[0], value[1])
        else:
            raise WncError(
                f"ranks file {p}: value for '{name}' is {value!r}",
                "use [R3, R4] for a Tucker-2 layer or one integer for an SVD / Tucker-1 layer",
            )
    return out


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """All initializers as arrays (handy in tests and notebooks)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
