"""wnc-onnx: one-shot whole-network compression of ONNX CNNs (Kim et al., ICLR 2016).

import wnc_onnx
model, report = wnc_onnx.compress("model.onnx")
print(report.to_table())

The package follows the flow of a run (docs/how-it-works.md draws the map):
``io`` (model files, sessions, threads) and ``data`` (what is fed to a model) ->
``analyze`` (graph facts, numeric core, calibration statistics) -> ``rewrite`` (the
passes and the flows that run them) -> ``check`` (verify, latency choices) and ``bench``
-> ``report``; ``finetune`` beside it and ``cli`` on top; ``api`` is the facade.
"""

from wnc_onnx.api import compress, inspect, load_ranks
from wnc_onnx.config import CompressConfig
from wnc_onnx.errors import NothingToCompressError, WncError
from wnc_onnx.io.model_io import load_model, save_model
from wnc_onnx.report import LayerReport, Report
from wnc_onnx.version import __version__

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
