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

import onnx

from wnc_onnx.errors import WncError
from wnc_onnx.finetune.backends.ort.runtime import runtime_errors
from wnc_onnx.finetune.common import trainable

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
    loss: str,
    optimizer: str,
    outputs: list[str],
    extra: Sequence[str] = (),
    train_on: str | None = None,
) -> dict[str, Path]:
    """Write training / eval / optimizer models and the initial checkpoint into ``folder``
    (``extra``: more initializers to train, e.g. the factors of frozen BatchNormalization;
    ``train_on``: the tensor the loss reads when it is not the graph output, e.g. the logits
    before a final Softmax, which stays in the graph as an extra output)."""
    import onnxruntime as ort
    from onnxruntime.training import artifacts

    ort.set_default_logger_severity(3)  # the graph builder logs every transformer at info level
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    lower_ir(model_copy, "the model")
    if train_on is not None and train_on not in {o.name for o in model_copy.graph.output}:
        out = model_copy.graph.output[0]
        logits = onnx.ValueInfoProto()
        logits.CopyFrom(out)
        logits.name = train_on
        del model_copy.graph.output[:]
        model_copy.graph.output.append(logits)
    requires_grad, frozen = trainable(model_copy, extra)
    if not requires_grad:
        raise WncError("the model has no trainable Conv / Gemm / MatMul weights", "fine-tune a float CNN or MLP")
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
