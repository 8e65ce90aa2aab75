"""Training artifacts for a compressed model, made with ``onnxruntime.training.artifacts``.

ONNX Runtime training 1.19.2 reads IR version <= 10 and opsets <= 21; newer onnx
releases write higher IR versions (also into the optimizer model they generate), so
the IR is lowered where the opsets allow it. Trainable: the weights and biases of
Conv / ConvTranspose / Gemm / MatMul (and an Add right after a MatMul), and the scale
and bias of BatchNormalization, whose running statistics stay frozen (``frozen_bn``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from wnc_onnx.analyze.graph import infer_shapes
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.backends.ort import distill_loss
from wnc_onnx.finetune.backends.ort.runtime import runtime_errors
from wnc_onnx.finetune.common import trainable
from wnc_onnx.finetune.distill import Objective

log = logging.getLogger(__name__)

MAX_IR = 10
MAX_OPSET = 21


def lower_ir(model: onnx.ModelProto, label: str) -> None:
    """Set IR version <= 10 in place, or say why the training build cannot take the model."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > MAX_OPSET:
        raise WncError(
            f"{label} uses opset {opset}; onnxruntime-training 1.19.2 supports opsets up to {MAX_OPSET}",
            "export the model with opset 21 or lower, or convert it with onnx.version_converter",
        )
    if model.ir_version > MAX_IR:
        model.ir_version = MAX_IR


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
    """The gradient graph builder writes ~40 info lines straight to fd 2, whatever the
    logger severity; they go to a temporary file, and to the debug log."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                log.debug("onnxruntime: %s", line)


def generate(
    model: onnx.ModelProto,
    folder: Path,
    loss: str | None,
    optimizer: str,
    outputs: list[str],
    extra: Sequence[str] = (),
    train_on: str | None = None,
    objective: Objective | None = None,
) -> dict[str, Path]:
    """Write training / eval / optimizer models and the initial checkpoint into ``folder``
    (``extra``: more initializers to train, e.g. the factors of frozen BatchNormalization;
    ``train_on``: the tensor the loss reads when it is not the graph output, e.g. the logits
    before a final Softmax, which stays in the graph as an extra output; ``objective``:
    distillation, whose loss graph (``distill_loss``) reads the teacher's tensors as inputs,
    ``loss`` then being the label loss mixed in with ``--alpha``, or None; ``outputs`` the
    tensors the run returns beside the loss)."""
    import onnxruntime as ort
    from onnxruntime.training import artifacts

    ort.set_default_logger_severity(3)  # the graph builder logs every transformer at info level
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    lower_ir(model_copy, "the model")
    if objective is not None:
        del model_copy.graph.output[:]  # the loss reads the terms' tensors; the run returns ``outputs``
        known = infer_shapes(model_copy)
        for name in dict.fromkeys([*outputs, *(t.tensor for t in objective.outputs)]):
            dims = known.get(name, [])  # an unknown one: distill_loss.build says so, by name
            model_copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    elif train_on is not None and train_on not in {o.name for o in model_copy.graph.output}:
        out = model_copy.graph.output[0]
        logits = onnx.ValueInfoProto()
        logits.CopyFrom(out)
        logits.name = train_on
        del model_copy.graph.output[:]
        model_copy.graph.output.append(logits)
    requires_grad, frozen = trainable(model_copy, extra)
    if not requires_grad:
        raise WncError("the model has no trainable Conv / Gemm / MatMul weights", "fine-tune a float CNN or MLP")
    loss_type: Any
    if objective is not None:
        loss_type = _distill_block(objective, loss, train_on)
    else:
        assert loss is not None, "a labelled run names its loss"
        loss_type = {"cross_entropy": artifacts.LossType.CrossEntropyLoss, "mse": artifacts.LossType.MSELoss}[loss]
    optim = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}[optimizer]
    folder.mkdir(parents=True, exist_ok=True)
    no_gradient = runtime_errors(
        "onnxruntime training cannot build the training graph of this model",
        "the model uses an op that onnxruntime-training 1.19.2 cannot differentiate; fine-tune it in its "
        "source framework, or compress a model without that op",
    )
    with _native_stderr_to_log(), no_gradient:
        artifacts.generate_artifacts(
            model_copy,
            requires_grad=requires_grad,
            frozen_params=frozen,
            loss=loss_type,
            optimizer=optim,
            artifact_directory=str(folder),
            additional_output_names=outputs,
        )
    paths = {
        "training": folder / "training_model.onnx",
        "eval": folder / "eval_model.onnx",
        "optimizer": folder / "optimizer_model.onnx",
        "checkpoint": folder / "checkpoint",
    }
    for key in ("training", "eval", "optimizer"):
        generated = onnx.load(str(paths[key]), load_external_data=False)
        if generated.ir_version > MAX_IR:  # newer onnx writes IR 11+: the 1.19.2 runtime refuses it
            generated.ir_version = MAX_IR
            onnx.save(generated, str(paths[key]))
    log.debug("training artifacts: %d trainable tensors, %d frozen, in %s", len(requires_grad), len(frozen), folder)
    return paths


def _distill_block(objective: Objective, label: str | None, train_on: str | None) -> Any:
    """The distillation loss as an onnxblock Block (the class is made here: onnxblock imports
    only with onnxruntime-training installed)."""
    from onnxruntime.training import onnxblock

    class DistillLoss(onnxblock.Block):  # type: ignore[misc]
        def build(self, *graph_outputs: str) -> str:
            return distill_loss.build(self.base, objective, label, train_on)

    return DistillLoss()
