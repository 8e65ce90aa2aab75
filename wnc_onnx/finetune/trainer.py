"""The fine-tuning loop (paper section 3.3) on ONNX Runtime's training API.

Forward/backward with ``Module``, updates with ``Optimizer``, the paper's step decay of
the learning rate (divide by ``lr_gamma`` every ``lr_step`` epochs), validation after
each epoch, and the result exported as a plain inference model with the original
inputs and outputs.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from wnc_onnx.errors import WncError
from wnc_onnx.finetune import artifacts
from wnc_onnx.finetune.data import ArrayData
from wnc_onnx.finetune.runtime import require_training

log = logging.getLogger(__name__)

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adamw"
    loss: str = "cross_entropy"
    lr_step: int = 5  # epochs between learning-rate decays (the paper: 5)
    lr_gamma: float = 0.1  # factor of each decay (the paper: 1/10)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr_step < 1:
            raise WncError("epochs, batch size and lr step must be at least 1", "pass positive integers")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 < self.lr_gamma <= 1:
            raise WncError("learning rate must be > 0 and lr gamma in (0, 1]", "e.g. --lr 1e-3 --lr-gamma 0.1")
        if self.loss not in LOSSES:
            raise WncError(f"unknown loss {self.loss!r}", f"choose one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise WncError(f"unknown optimizer {self.optimizer!r}", f"choose one of {', '.join(OPTIMIZERS)}")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_gamma ** (epoch // self.lr_step)


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    samples_per_s: float


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    initial_val_accuracy: float | None = None
    initial_val_loss: float | None = None
    runtime: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "initial": {"val_loss": self.initial_val_loss, "val_accuracy": self.initial_val_accuracy},
            "epochs": [asdict(e) for e in self.epochs],
        }


def _io(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise WncError(
            f"fine-tuning takes a model with one input and one output; this one has {len(inputs)} and "
            f"{len(model.graph.output)}",
            "export the network with a single image input and a single score output",
        )
    return inputs[0], model.graph.output[0]


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]


def check_data(model: onnx.ModelProto, data: ArrayData, cfg: FinetuneConfig) -> ArrayData:
    """The data must fit the model: sample shape, label kind and range. Returns typed arrays."""
    inp, out = _io(model)
    want = _dims(inp)
    got = [None, *data.x.shape[1:]]
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want[1:], got[1:], strict=True)):
        raise WncError(
            f"{data.name}: samples have shape {list(data.x.shape[1:])}, the model input '{inp.name}' takes "
            f"{['N' if d is None else d for d in want]}",
            "reshape x to (N, *input shape) as the model was exported",
        )
    x = data.x.astype(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type), copy=False)
    out_dims = _dims(out)
    if cfg.loss == "cross_entropy":
        if len(out_dims) != 2:
            raise WncError(
                f"cross-entropy needs a score per class, shape (N, classes); output '{out.name}' has rank "
                f"{len(out_dims)}",
                "use --loss mse for regression-like outputs",
            )
        y = np.asarray(data.y)
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
            raise WncError(f"{data.name}: y must hold one integer class label per sample", "store labels as int64")
        classes = out_dims[1]
        if y.min() < 0 or (classes is not None and y.max() >= classes):
            raise WncError(
                f"{data.name}: labels range over {int(y.min())}..{int(y.max())}, the model scores "
                f"{classes if classes is not None else '?'} classes",
                f"use labels 0..{classes - 1 if classes else 'C-1'}",
            )
        return ArrayData(x, y.astype(np.int64), data.name)
    return ArrayData(x, np.asarray(data.y, dtype=np.float32), data.name)


class _Progress:
    """One line per epoch on stderr, redrawn in place on a terminal."""

    def __init__(self, total: int, epoch: int, epochs: int, quiet: bool) -> None:
        self.total, self.epoch, self.epochs, self.quiet = total, epoch, epochs, quiet
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if self.quiet or not self.tty:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        width = 24
        bar = "#" * int(width * done / self.total)
        sys.stderr.write(
            f"\repoch {self.epoch + 1}/{self.epochs} [{bar:<{width}}] {done}/{self.total} loss {loss:.4f} {rate:.0f}/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            sys.stderr.write("\n")


def _run_eval(module: Any, data: ArrayData, batch_size: int, loss: str) -> tuple[float, float | None]:
    module.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for xb, yb in data.batches(batch_size):
        loss_value, scores = module(xb, yb)
        total_loss += float(loss_value) * len(xb)
        if loss == "cross_entropy":
            correct += int((np.asarray(scores).argmax(1) == yb).sum())
        seen += len(xb)
    return total_loss / seen, (correct / seen if loss == "cross_entropy" else None)


def finetune(
    model: onnx.ModelProto,
    train: ArrayData,
    val: ArrayData | None = None,
    cfg: FinetuneConfig | None = None,
    *,
    workdir: str | Path | None = None,
    quiet: bool = False,
) -> tuple[onnx.ModelProto, History]:
    """Fine-tune ``model`` (never modified) on ``train``; returns the tuned inference model."""
    cfg = cfg or FinetuneConfig()
    version = require_training()
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    inp, out = _io(model)
    train = check_data(model, train, cfg)
    val = check_data(model, val, cfg) if val is not None else None
    history = History(runtime=f"onnxruntime-training {version}")
    with tempfile.TemporaryDirectory(prefix="wnc-onnx-train-") as tmp:
        folder = Path(workdir) if workdir else Path(tmp)
        paths = artifacts.generate(model, folder / "artifacts", cfg.loss, cfg.optimizer, [out.name])
        state = CheckpointState.load_checkpoint(str(paths["checkpoint"]))
        module = Module(str(paths["training"]), state, str(paths["eval"]))
        optimizer = Optimizer(str(paths["optimizer"]), module)
        if val is not None:
            history.initial_val_loss, history.initial_val_accuracy = _run_eval(module, val, cfg.batch_size, cfg.loss)
        for epoch in range(cfg.epochs):
            lr = cfg.lr_at(epoch)
            optimizer.set_learning_rate(lr)
            module.train()
            bar = _Progress(len(train), epoch, cfg.epochs, quiet)
            t0 = time.perf_counter()
            total, seen = 0.0, 0
            for xb, yb in train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch):
                loss_value = float(module(xb, yb)[0])
                optimizer.step()
                module.lazy_reset_grad()
                total += loss_value * len(xb)
                seen += len(xb)
                bar.update(seen, total / seen)
            seconds = time.perf_counter() - t0
            bar.close()
            v_loss, v_acc = _run_eval(module, val, cfg.batch_size, cfg.loss) if val is not None else (None, None)
            record = EpochRecord(epoch + 1, lr, total / seen, v_loss, v_acc, round(seconds, 3), seen / seconds)
            history.epochs.append(record)
            log.info(
                "epoch %d/%d: lr %.3g, train loss %.4f%s, %.0f samples/s",
                epoch + 1,
                cfg.epochs,
                lr,
                record.train_loss,
                f", val loss {v_loss:.4f}" + (f", val accuracy {v_acc:.2%}" if v_acc is not None else "")
                if v_loss is not None
                else "",
                record.samples_per_s,
            )
        exported = folder / "inference.onnx"
        module.export_model_for_inferencing(str(exported), [out.name])
        tuned = onnx.load(str(exported))
    _restore_interface(model, tuned, inp.name)
    return tuned, history


def _restore_interface(original: onnx.ModelProto, tuned: onnx.ModelProto, input_name: str) -> None:
    """Same inputs, outputs, metadata and producer as the model that came in."""
    del tuned.graph.output[:]
    tuned.graph.output.extend(original.graph.output)
    del tuned.metadata_props[:]
    tuned.metadata_props.extend(original.metadata_props)
    tuned.producer_name, tuned.producer_version = original.producer_name, original.producer_version
    names = [vi.name for vi in tuned.graph.input]
    if input_name not in names:
        raise RuntimeError(f"the exported model lost input '{input_name}' (a bug)")
