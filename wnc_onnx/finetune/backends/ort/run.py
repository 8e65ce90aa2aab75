"""The ONNX Runtime training backend's run object: the methods the loop calls, as ``TorchRun``'s."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.finetune.backends.ort import distill_loss
from wnc_onnx.finetune.backends.ort.runtime import runtime_errors
from wnc_onnx.finetune.common import MISFIT, Scores, finite, write_back
from wnc_onnx.finetune.distill import Objective
from wnc_onnx.finetune.distributed import Dist
from wnc_onnx.finetune.sources import BatchSource, ModelSpec


class OrtRun:
    """The ORT training objects of one run (the methods the loop calls, as ``TorchRun``'s)."""

    suffix = ".ckpt"
    dist = Dist()

    def __init__(
        self, paths: dict[str, Path], state_file: Path, cfg: Any, spec: ModelSpec, objective: Objective | None = None
    ) -> None:
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        self.spec, self.objective = spec, objective
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
        """The trained graph as a plain inference model: ``model`` with the trained values in its
        initializers where it is given (distillation), else the graph ORT re-creates."""
        if model is not None:
            tuned = onnx.ModelProto()
            tuned.CopyFrom(model)
            write_back(tuned, {name: p.data for name, p in self.state.parameters})
            return tuned
        exported = work / "inference.onnx"
        self.module.export_model_for_inferencing(str(exported), [output_name])
        return onnx.load(str(exported))

    def _inputs(
        self, feeds: dict[str, np.ndarray], y: np.ndarray | None, targets: dict[str, np.ndarray] | None
    ) -> list[np.ndarray]:
        """The training graph's inputs in its order: the model's, then the labels and (distillation)
        the teacher's tensors."""
        if targets is None:
            return [*(feeds[p.name] for p in self.spec.inputs), y]  # type: ignore[list-item]
        given = {**feeds, **{distill_loss.teacher_input(k): np.ascontiguousarray(v) for k, v in targets.items()}}
        if y is not None:
            given[distill_loss.LABELS] = y
        return [given[name] for name in self.module.input_names()]

    def step(
        self, feeds: dict[str, np.ndarray], y: np.ndarray | None, targets: dict[str, np.ndarray] | None, where: str
    ) -> float:
        with runtime_errors(f"training step failed at {where}", MISFIT):
            loss = float(self.module(*self._inputs(feeds, y, targets))[0])
            self.optimizer.step()
        self.module.lazy_reset_grad()
        return finite(loss, where)

    def evaluate(self, source: BatchSource, teacher: Any = None) -> Scores:
        """The training loss on ``source``, the accuracy where it holds class labels the loss
        reads, and the top-1 agreement with the teacher where there is one."""
        if self.objective is not None:
            return self._evaluate_distilled(source, teacher)
        self.module.eval()
        total, correct, seen = 0.0, 0, 0
        classes = self.spec.loss == "cross_entropy"
        for feeds, y in source.epoch(0):
            with runtime_errors(f"evaluating {source.label} failed", MISFIT):
                loss_value, scores = self.module(*self._inputs(feeds, y, None))
            n = len(y) if y is not None else 0
            total += float(loss_value) * n
            if classes:
                correct += int((np.asarray(scores).argmax(1) == y).sum())
            seen += n
        self.module.train()
        return Scores(total / seen, correct / seen if classes else None)

    def _evaluate_distilled(self, source: BatchSource, teacher: Any) -> Scores:
        assert self.objective is not None
        self.module.eval()
        term = self.objective.agreement_term()
        mixed = self.spec.loss is not None  # labels mixed in: the eval graph reads them
        scored = source.spec.train_tensor if source.spec.loss == "cross_entropy" else None
        total, correct, seen, agree, positions, labelled = 0.0, 0, 0, 0, 0, False
        for feeds, y in source.epoch(0):
            targets = teacher(feeds)
            with runtime_errors(f"evaluating {source.label} failed", MISFIT):
                loss_value, *returned = self.module(*self._inputs(feeds, y if mixed else None, targets))
            n = len(next(iter(feeds.values())))
            total += float(loss_value) * n
            got = dict(zip(self.module.output_names()[1:], returned, strict=False))
            if y is not None and scored in got:
                correct += int((np.asarray(got[scored]).argmax(1) == y).sum())
                labelled = True
            if term is not None and term.tensor in got:
                same = np.argmax(got[term.tensor], term.axis) == np.argmax(targets[term.tensor], term.axis)
                agree, positions = agree + int(same.sum()), positions + same.size
            seen += n
        self.module.train()
        return Scores(total / seen, correct / seen if labelled else None, agree / positions if positions else None)
