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


def working_copy(model: onnx.ModelProto, in_place: bool) -> onnx.ModelProto:
    """The model a pass may change: ``model`` itself only when the caller owns it."""
    if in_place:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


class Pass(Protocol):
    name: str

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        """Run on ``model`` (a copy unless ``in_place``), adding to ``report``."""
        ...
