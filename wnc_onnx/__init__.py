"""wnc-onnx: one-shot whole-network compression of ONNX CNNs (Kim et al., ICLR 2016).

import wnc_onnx
model, report = wnc_onnx.compress("model.onnx")
print(report.to_table())

The names below are imported on first use, so ``import wnc_onnx`` (for its version, or
one submodule) does not load numpy, scipy and onnx until the library is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "wnc_onnx.api",
    "inspect": "wnc_onnx.api",
    "load_ranks": "wnc_onnx.api",
    "CompressConfig": "wnc_onnx.config",
    "NothingToCompressError": "wnc_onnx.errors",
    "WncError": "wnc_onnx.errors",
    "load_model": "wnc_onnx.model_io",
    "save_model": "wnc_onnx.model_io",
    "LayerReport": "wnc_onnx.report",
    "Report": "wnc_onnx.report",
}

if TYPE_CHECKING:
    from wnc_onnx.api import compress, inspect, load_ranks
    from wnc_onnx.config import CompressConfig
    from wnc_onnx.errors import NothingToCompressError, WncError
    from wnc_onnx.model_io import load_model, save_model
    from wnc_onnx.report import LayerReport, Report


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wnc_onnx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "CompressConfig",
    "LayerReport",
    "NothingToCompressError",
    "Report",
    "WncError",
    "__version__",
    "compress",
    "inspect",
    "load_model",
    "load_ranks",
    "save_model",
]
