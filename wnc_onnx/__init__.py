"""wnc-onnx: one-shot whole-network compression of ONNX CNNs (Kim et al., ICLR 2016).

import wnc_onnx
model, report = wnc_onnx.compress("model.onnx")
print(report.to_table())
"""

__version__ = "0.1.0"

from wnc_onnx.api import compress, inspect, load_ranks  # noqa: E402
from wnc_onnx.config import CompressConfig  # noqa: E402
from wnc_onnx.errors import NothingToCompressError, WncError  # noqa: E402
from wnc_onnx.model_io import load_model, save_model  # noqa: E402
from wnc_onnx.report import LayerReport, Report  # noqa: E402

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
