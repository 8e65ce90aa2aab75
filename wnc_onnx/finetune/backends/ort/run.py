"""The ONNX Runtime training backend's run object: the methods the loop calls, as ``TorchRun``'s."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.finetune.backends.ort.runtime import runtime_errors
from wnc_onnx.finetune.common import MISFIT, finite
from wnc_onnx.finetune.distributed import Dist
from wnc_onnx.finetune.sources import BatchSource


class OrtRun:
    """The ORT training objects of one run (the methods the loop calls, as ``TorchRun``'s)."""

    suffix = ".ckpt"
    dist = Dist()

    def __init__(self, paths: dict[str, Path], state_file: Path, cfg: Any) -> None:
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        options = ort.SessionOptions()
        if cfg.threads:
            options.intra_op_num_threads = cfg.threads
        with runtime_errors(
            "onnxruntime training cannot load this model",
            "fine-tune a float CNN of standard ops (opset <= 21), or report the model",
        ):
            self.state = CheckpointState.load_checkpoint(str(state_file))
            self.module = Module(str(paths["training"]), self.state, str(paths["eval"]), session_options=options)
            self.optimizer = Optimizer(str(paths["optimizer"]), self.module)

    @property
    def params(self) -> Any:
        return self.state.parameters

    def write_state(self, path: Path) -> None:
        from onnxruntime.training.api import CheckpointState

        CheckpointState.save_checkpoint(self.state, path, include_optimizer_state=True)

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_learning_rate(lr)

    def train_mode(self) -> None:
        self.module.train()

    def epoch_context(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def export(self, model: onnx.ModelProto | None, work: Path, output_name: str) -> onnx.ModelProto:
        """The trained graph as a plain inference model (ORT re-creates it: ``model`` is not needed)."""
        exported = work / "inference.onnx"
        self.module.export_model_for_inferencing(str(exported), [output_name])
        return onnx.load(str(exported))

    def step(self, x: np.ndarray, y: np.ndarray, where: str) -> float:
        with runtime_errors(f"training step failed at {where}", MISFIT):
            loss = float(self.module(x, y)[0])
            self.optimizer.step()
        self.module.lazy_reset_grad()
        return finite(loss, where)

    def evaluate(self, source: BatchSource, loss: str) -> tuple[float, float | None]:
        self.module.eval()
        total, correct, seen = 0.0, 0, 0
        for xb, yb in source.epoch(0):
            with runtime_errors(f"evaluating {source.label} failed", MISFIT):
                loss_value, scores = self.module(xb, yb)
            total += float(loss_value) * len(xb)
            if loss == "cross_entropy":
                correct += int((np.asarray(scores).argmax(1) == yb).sum())
            seen += len(xb)
        self.module.train()
        return total / seen, (correct / seen if loss == "cross_entropy" else None)
