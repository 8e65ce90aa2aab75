"""Pass: weights that old exporters also list as graph inputs become plain constants.

Exports of that era (PyTorch's ``keep_initializers_as_inputs``, keras2onnx) list every
initializer among the graph inputs as well. From IR 4 on such an input is optional: its
initializer is the default, and a caller may override it at run time, so no rewrite may
assume the weight is constant and every layer would be skipped. Nobody feeds weights at
inference time; this pass removes those entries from the graph inputs (the initializers
stay), which is what ``onnxruntime`` and onnx-simplifier users do by hand. The report
lists how many; ``--keep-initializer-inputs`` (skipping the pass) keeps the old interface.

IR < 4 models must list initializers as inputs; they are left as they are (their
weights count as constants anyway).
"""

from __future__ import annotations

import time

import onnx

from wnc_onnx.analyze.graph import data_inputs
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes.base import PassResult, working_copy


class InitializerInputsPass:
    name = "initializer_inputs"

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        start = time.perf_counter()
        inits = {t.name for t in model.graph.initializer}
        doubled = [vi.name for vi in model.graph.input if vi.name in inits] if model.ir_version >= 4 else []
        if doubled:
            model = working_copy(model, in_place)
            keep = data_inputs(model)
            del model.graph.input[:]
            model.graph.input.extend(keep)
            report.warnings.append(
                f"{len(doubled)} weight(s) were also listed as graph inputs (an old export style); they are no "
                "longer inputs, so the model takes only its data inputs (--keep-initializer-inputs keeps them)"
            )
        report.passes.append(
            {
                "name": self.name,
                "seconds": round(time.perf_counter() - start, 3),
                "modified": bool(doubled),
                "removed_inputs": len(doubled),
            }
        )
        return PassResult(model=model, report=report, modified=bool(doubled))
