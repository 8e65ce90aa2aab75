"""Measuring models on the target: latency, throughput, memory, energy, per-layer profiles.

``measure`` times several models interleaved in one run (machine drift cancels in
their ratios); ``profile_layers`` maps onnxruntime's profiler back to the layers the
compression pass rewrote. The latency-aware pass times single layers with the same
session code, so what it chooses is measured the way ``bench`` measures.
"""

from wnc_onnx.bench.config import BenchConfig
from wnc_onnx.bench.measure import measure
from wnc_onnx.bench.result import BenchResult

__all__ = ["BenchConfig", "BenchResult", "measure"]
