"""Pass (``--simplify``, off by default): onnx-simplifier (onnxsim) before the other passes.

onnxsim folds constant subgraphs, removes redundant ops and fuses some, with its own
shape inference. Measured on the real-model corpus (docs/how-it-works.md, "Simplify") it
changed which layers wnc-onnx compresses on one model of 13 and broke none; it is offered
for exports whose weights hide behind graph arithmetic that wnc-onnx's own folding does not
read. Input shapes are not fixed for it (fixed shapes made one corpus model unloadable).
Models in external data are passed over with a note (onnxsim loads every weight), as is a
model onnxsim fails on: a helper library is never a single point of failure.
"""

from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType

import onnx

from wnc_onnx.analyze.walk import count_nodes
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io import external_data
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes.base import PassResult

log = logging.getLogger(__name__)

INSTALL = "pip install 'wnc-onnx[simplify]' (onnx-simplifier)"


def onnxsim() -> ModuleType:
    """The onnxsim module; one WncError with the install command when it is missing."""
    try:
        return importlib.import_module("onnxsim")
    except Exception as exc:  # absent, or a broken build (a C++ extension)
        raise WncError(
            f"--simplify needs onnx-simplifier, which cannot be imported ({one_line(exc, 80)})", INSTALL
        ) from None


class SimplifyPass:
    name = "simplify"

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        sim = onnxsim()
        start = time.perf_counter()
        nodes_before = count_nodes(model)
        entry: dict[str, object] = {"name": self.name, "tool": f"onnxsim {getattr(sim, '__version__', '?')}"}
        result, modified = model, False
        if external_data.has_external(model):
            report.warnings.append("--simplify: the model's weights are in external data; onnxsim was not run")
        else:
            try:
                simplified, _ = sim.simplify(model)  # the input is never modified; check_n 0: --verify checks
                _keep_interface(model, simplified)
                result, modified = simplified, True
            except Exception as exc:
                msg = one_line(exc, 200)
                log.info("--simplify: onnxsim failed (%s); continuing with the model as it is", msg)
                report.warnings.append(f"--simplify: onnxsim failed ({msg}); the model was not simplified")
        entry.update(
            seconds=round(time.perf_counter() - start, 3),
            modified=modified,
            nodes_before=nodes_before,
            nodes_after=count_nodes(result),
        )
        report.passes.append(entry)
        log.info("--simplify: onnxsim %d -> %d nodes", nodes_before, count_nodes(result))
        return PassResult(model=result, report=report, modified=modified)


def _keep_interface(src: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """What a user of the output relies on stays as in the input: IR version, producer,
    metadata and the graph's inputs and outputs (names, types, shapes)."""
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(src, field))
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)
    if [o.name for o in out.graph.output] != [o.name for o in src.graph.output]:
        raise ValueError("onnxsim changed the graph's outputs")
    del out.graph.output[:]
    out.graph.output.extend(src.graph.output)
    inits = {t.name for t in out.graph.initializer}
    data = [vi for vi in src.graph.input if vi.name not in {t.name for t in src.graph.initializer}]
    if [vi.name for vi in out.graph.input if vi.name not in inits] != [vi.name for vi in data]:
        raise ValueError("onnxsim changed the graph's inputs")
