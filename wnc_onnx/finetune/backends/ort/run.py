"""The ONNX Runtime training backend's run object: the methods the loop calls, as ``TorchRun``'s."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.finetune.backends.ort.runtime import runtime_errors
from wnc_onnx.finetune.common import MISFIT, Scores, finite
from wnc_onnx.finetune.distributed import Dist
from wnc_onnx.finetune.sources import BatchSource, ModelSpec


class OrtRun:
    """The ORT training objects of one run (the methods the loop calls, as ``TorchRun``'s)."""

    suffix = ".ckpt"
    dist = Dist()

    def __init__(self, paths: dict[str, Path], state_file: Path, cfg: Any, spec: ModelSpec) -> None:
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        self.spec = spec
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

    def _inputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feeds[p.name] for p in self.spec.inputs]

    def step(
        self, feeds: dict[str, np.ndarray], y: np.ndarray | None, targets: dict[str, np.ndarray] | None, where: str
    ) -> float:
        assert targets is None and y is not None, "the ort backend trains on labels (checked by the trainer)"
        with runtime_errors(f"training step failed at {where}", MISFIT):
            loss = float(self.module(*self._inputs(feeds), y)[0])
            self.optimizer.step()
        self.module.lazy_reset_grad()
        return finite(loss, where)

    def evaluate(self, source: BatchSource, teacher: Any = None) -> Scores:
        """The label loss and, for class scores, the accuracy (this backend trains on labels only)."""
        self.module.eval()
        total, correct, seen = 0.0, 0, 0
        classes = self.spec.loss == "cross_entropy"
        for feeds, y in source.epoch(0):
            with runtime_errors(f"evaluating {source.label} failed", MISFIT):
                loss_value, scores = self.module(*self._inputs(feeds), y)
            n = len(y) if y is not None else 0
            total += float(loss_value) * n
            if classes:
                correct += int((np.asarray(scores).argmax(1) == y).sum())
            seen += n
        self.module.train()
        return Scores(total / seen, correct / seen if classes else None)
