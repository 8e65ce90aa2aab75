"""The before/after report (``data``: the data object, its table and JSON) and its plots (``plot``)."""

from wnc_onnx.report.data import SCHEMA_VERSION, LayerReport, Report, Totals, human

__all__ = ["SCHEMA_VERSION", "LayerReport", "Report", "Totals", "human"]
