"""Pass infrastructure: a pass maps a model to (model, report) and leaves its input alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import onnx

from wnc_onnx.report import Report


@dataclass
class PassResult:
    model: onnx.ModelProto
    report: Report
    modified: bool


class Pass(Protocol):
    name: str

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        """Run on ``model`` (a copy unless ``in_place``), adding to ``report``."""
        ...
