"""Rewrite rules of the low-rank pass, tried in this order (first match wins)."""

from wnc_onnx.rewrite.passes.rules.base import Rule
from wnc_onnx.rewrite.passes.rules.conv import ConvRule
from wnc_onnx.rewrite.passes.rules.flatten_gemm import FlattenGemmRule
from wnc_onnx.rewrite.passes.rules.gemm import GemmRule
from wnc_onnx.rewrite.passes.rules.matmul import MatMulRule
from wnc_onnx.rewrite.passes.rules.quantized import QuantizedRule

DEFAULT_RULES: tuple[Rule, ...] = (ConvRule(), FlattenGemmRule(), GemmRule(), MatMulRule(), QuantizedRule())

__all__ = ["DEFAULT_RULES", "ConvRule", "FlattenGemmRule", "GemmRule", "MatMulRule", "QuantizedRule", "Rule"]
