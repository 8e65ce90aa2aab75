"""The fine-tuning loop (paper section 3.3), on ONNX Runtime's training API or on PyTorch.

Two backends run the same loop: ``ort`` (forward/backward with ONNX Runtime training's
``Module``, updates with its ``Optimizer``) and ``torch`` (``torch_backend``: the graph run by
PyTorch, on GPUs and across processes under torchrun). The loop: the paper's step decay of
the learning rate (divide by ``lr_gamma`` every ``lr_step`` epochs), validation after
each epoch, a checkpoint after each epoch and on Ctrl-C (``checkpoint_dir``), resuming
from one, and the result exported as a plain inference model with the original inputs
and outputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.data.arrays import ArrayData
from wnc_onnx.errors import WncError
from wnc_onnx.finetune import augment, checkpoint, frozen_bn
from wnc_onnx.finetune.backends.ort import artifacts
from wnc_onnx.finetune.backends.ort.run import OrtRun
from wnc_onnx.finetune.backends.ort.runtime import require_training
from wnc_onnx.finetune.backends.torch.run import TorchRun, require_torch
from wnc_onnx.finetune.common import Scores, trainable
from wnc_onnx.finetune.distill import Objective, Teacher, build_objective, check_interface, load_teacher
from wnc_onnx.finetune.distributed import Dist, any_of, from_env, leave, sum_over
from wnc_onnx.finetune.history import EpochRecord, History
from wnc_onnx.finetune.pq_penalty import PQPenalty, pq_config
from wnc_onnx.finetune.progress import EpochBar
from wnc_onnx.finetune.sources import BatchSource, ModelSpec, check_samples, check_targets, model_spec
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes.pq import PQPass

log = logging.getLogger(__name__)

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adamw", "sgd")
BACKENDS = ("ort", "torch")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adamw"
    loss: str = "cross_entropy"
    lr_step: int = 5  # epochs between learning-rate decays (the paper: 5)
    lr_gamma: float = 0.1  # factor of each decay (the paper: 1/10)
    seed: int = 0  # shuffling order of data sets (ArrayData, ImageFolder)
    threads: int = 0  # onnxruntime intra-op threads; 0: its default (all cores)
    # Compression-aware training (docs/pq.md): pull the weights toward their product
    # quantization with this strength, then export the product-quantized model; None: off,
    # 0: quantize at the end without the pull. ``pq``: CompressConfig's pq_* fields.
    pq_lambda: float | None = None
    pq: dict[str, Any] = field(default_factory=dict)
    # "ort": onnxruntime-training, one process on the CPU; "torch": PyTorch on ``device``
    # ("cpu", "cuda"; None: cuda when available), several processes under torchrun
    backend: str = "ort"
    device: str | None = None
    # Distillation from a teacher (finetune(teacher=...), --teacher; finetune.distill): softened
    # class scores at ``temperature``; ``alpha`` of the label loss mixed in when the data hold
    # labels (None: no labels used); intermediate tensors matched with ``features`` ("auto": the
    # outputs of the layers the low-rank pass rewrote; "none"; or names) at ``feature_weight``;
    # per-output overrides of the loss ("kl", "mse", "none") and weights.
    temperature: float = 2.0
    alpha: float | None = None
    features: str | tuple[str, ...] = "auto"
    feature_weight: float = 1.0
    distill_losses: dict[str, str] = field(default_factory=dict)
    output_weights: dict[str, float] = field(default_factory=dict)
    # Augmentations of image inputs per batch (finetune.augment): "crop", "color"; "flip" and
    # "rotate" only when named (they change some tasks' answers). Off by default.
    augment: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr_step < 1 or self.threads < 0:
            raise WncError("epochs, batch size and lr step must be at least 1", "pass positive integers")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 < self.lr_gamma <= 1:
            raise WncError("learning rate must be > 0 and lr gamma in (0, 1]", "e.g. --lr 1e-3 --lr-gamma 0.1")
        if self.loss not in LOSSES:
            raise WncError(f"unknown loss {self.loss!r}", f"choose one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise WncError(f"unknown optimizer {self.optimizer!r}", f"choose one of {', '.join(OPTIMIZERS)}")
        if self.backend not in BACKENDS:
            raise WncError(f"unknown backend {self.backend!r}", f"choose one of {', '.join(BACKENDS)}")
        if self.device not in (None, "cpu", "cuda"):
            raise WncError(f"unknown device {self.device!r}", "pass --device cpu or --device cuda")
        if self.backend == "ort" and self.device == "cuda":
            raise WncError("the ort backend trains on the CPU only", "use --backend torch for --device cuda")
        if self.pq_lambda is not None and not (self.pq_lambda >= 0 and math.isfinite(self.pq_lambda)):
            raise WncError(f"--pq-lambda must be >= 0, got {self.pq_lambda}", "e.g. --pq-lambda 20")
        if self.pq_lambda is not None:
            pq_config(self.pq)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise WncError(f"--temperature must be > 0, got {self.temperature}", "e.g. --temperature 2")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise WncError(f"--alpha must be in [0, 1], got {self.alpha}", "e.g. --alpha 0.5")
        object.__setattr__(self, "augment", augment.check(tuple(self.augment)))
        if not self.feature_weight >= 0:
            raise WncError(f"--feature-weight must be >= 0, got {self.feature_weight}", "e.g. --feature-weight 1")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_gamma ** (epoch // self.lr_step)


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at a batch boundary; a checkpoint to resume from was saved."""

    def __init__(self, folder: Path, epoch: int, batch: int) -> None:
        where = f"in epoch {epoch}, after batch {batch}" if batch else f"after epoch {epoch}"
        super().__init__(f"interrupted {where}; checkpoint saved in {folder}")
        self.folder, self.epoch, self.batch = folder, epoch, batch


def check_data(model: onnx.ModelProto, data: ArrayData, cfg: FinetuneConfig) -> ArrayData:
    """The whole data set checked against the model and typed for it (sample shape, label kind and range)."""
    spec = model_spec(model, cfg.loss)
    x = check_samples(spec, data.x, data.name)
    return ArrayData(x, check_targets(spec, data.y, len(x), data.name), data.name)


class _StopRequest:
    """The first Ctrl-C asks the loop to stop at the next batch boundary; a second one aborts.

    Under torchrun a Ctrl-C reaches each process twice at once (from the terminal, and
    forwarded by torchrun), so signals within ``ECHO_S`` of the first count as one."""

    ECHO_S = 2.0

    def __init__(self) -> None:
        self.requested = False
        self.at = 0.0

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self.at < self.ECHO_S:
                return
            raise KeyboardInterrupt
        self.requested, self.at = True, time.monotonic()
        log.warning("stopping after this batch to save a checkpoint (Ctrl-C again to abort without one)")

    @contextlib.contextmanager
    def installed(self, active: bool) -> Iterator[_StopRequest]:
        if not active or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def finetune(
    model: onnx.ModelProto,
    train: Any,
    val: Any | None = None,
    cfg: FinetuneConfig | None = None,
    *,
    teacher: onnx.ModelProto | str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    reference_accuracy: float | None = None,
    on_epoch: Callable[[EpochRecord, History], None] | None = None,
    workdir: str | Path | None = None,
    quiet: bool = False,
) -> tuple[onnx.ModelProto, History]:
    """Fine-tune ``model`` (never modified); returns the tuned inference model and the history.

    ``train`` / ``val``: ``ArrayData``, ``InputArrays``, ``ImageFolder`` / ``UnlabeledImages``,
    any re-iterable of batches, or a function returning one per epoch (see ``sources``).
    ``teacher``: the original model (a ModelProto or a path): the model then learns it on the
    inputs alone (``finetune.distill``; labels used only with ``cfg.alpha``). With
    ``checkpoint_dir`` the weights and optimizer state are saved there after every epoch
    and on Ctrl-C (which then raises ``FinetuneInterrupted``); ``resume=True`` continues
    from that checkpoint up to ``cfg.epochs``.
    """
    cfg = cfg or FinetuneConfig()
    dist = processes(cfg)
    teacher_model = load_teacher(teacher) if teacher is not None else None
    if cfg.alpha is not None and teacher_model is None:
        raise WncError("--alpha mixes the label loss into distillation", "give the original model with --teacher")
    if cfg.alpha is not None and getattr(train, "labeled", None) is False:
        raise WncError(
            f"--alpha mixes the label loss in, and {getattr(train, 'name', 'the training data')} hold no labels",
            "drop --alpha (distillation needs no labels), or give labelled data",
        )
    runtime = _runtime(cfg, dist)
    spec = model_spec(model, cfg.loss if teacher_model is None or cfg.alpha is not None else None)
    objective, teach = None, None
    if teacher_model is not None:
        check_interface(model, teacher_model)
        objective = build_objective(
            model,
            teacher_model,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            features=cfg.features,
            feature_weight=cfg.feature_weight,
            losses=cfg.distill_losses,
            weights=cfg.output_weights,
        )
        teach = Teacher(teacher_model, objective.tensors, cfg.threads)
        log.info(
            "distilling from the teacher: %d output term(s), %d feature(s), temperature %g",
            len(objective.outputs),
            len(objective.features),
            cfg.temperature,
        )
    # --batch-size is the global batch: under torchrun each of W processes takes 1/W of it, so the
    # steps per epoch, the batch the gradient averages over and the learning rate stay a single
    # process's (DDP averages the processes' gradients)
    batch = -(-cfg.batch_size // dist.world) if dist.active else cfg.batch_size
    if dist.active:
        log.info("batch %d over %d processes: %d each", cfg.batch_size, dist.world, batch)
        runtime += f", batch {batch} per process"
    train_src = BatchSource(train, spec, batch, shuffle=True, label="train data", dist=dist)
    val_spec = _val_spec(model, spec, val, cfg)
    val_src = (
        BatchSource(val, val_spec, batch, shuffle=False, label="validation data", dist=dist)
        if val is not None
        else None
    )
    train_src.first()  # misfit data fails here, before any artifact or checkpoint is written
    if val_src is not None:
        val_src.first()
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    sha = checkpoint.fingerprint(model)
    progress: checkpoint.Progress | None = None
    if resume:
        if folder is None:
            raise WncError("resuming needs the checkpoint folder", "pass checkpoint_dir (CLI: --checkpoint-dir)")
        progress = checkpoint.load(folder)
        checkpoint.check(
            progress, folder, sha, cfg.loss, cfg.optimizer, cfg.batch_size, cfg.seed, cfg.backend, dist.world
        )
    with tempfile.TemporaryDirectory(prefix="wnc-onnx-train-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        for_training = onnx.ModelProto()
        for_training.CopyFrom(model)
        frozen = frozen_bn.to_affine(for_training)  # BN statistics stay as they are
        factors = [name for r in frozen for name in (r.a, r.b)]
        saved = folder / progress.state_file if folder is not None and progress else None
        run = _start(for_training, factors, cfg, dist, saved, work, spec, objective)
        # torch, and ort when distilling, write the trained values back into the graph they trained
        trained_graph = for_training if cfg.backend == "torch" or objective is not None else None
        del for_training  # memory: ORT holds its own copy
        history = History.from_dict(progress.history) if progress else History()
        history.runtime, history.config = runtime, asdict(cfg)
        if objective is not None:
            history.distill = {"terms": objective.describe(), "temperature": cfg.temperature, "alpha": cfg.alpha}
        penalty = _penalty(model, cfg)
        if penalty is not None:
            penalty.refresh(run.params)
        if progress is None:
            history.reference_val_accuracy = reference_accuracy
            if val_src is not None:
                first = run.evaluate(val_src, teach)
                history.initial_val_loss, history.initial_val_accuracy = first.loss, first.accuracy
                history.initial_val_agreement = first.agreement
                if penalty is not None:
                    with penalty.quantized(run.params):
                        history.initial_pq_val_accuracy = run.evaluate(val_src, teach).accuracy
        else:
            history.resumed_at.append(progress.epochs_done)
            log.info("resuming after epoch %d, batch %d", progress.epochs_done, progress.batches_done)
        start = progress.epochs_done if progress else 0
        with _StopRequest().installed(folder is not None) as stop, _leaving(run):
            loop = _Loop(run, train_src, val_src, cfg, stop, folder, sha, history, quiet, penalty, teach)
            for epoch in range(start, cfg.epochs):
                resumed = progress if progress and epoch == start else None
                record = loop.train_epoch(
                    epoch, resumed.batches_done if resumed else 0, resumed.partial if resumed else {}
                )
                history.epochs.append(record)
                _log_epoch(record, cfg.epochs)
                if epoch == 0 and loop.first_loss is not None:
                    _check_rise(loop.first_loss, record, history)
                loop.save(epoch + 1)
                if on_epoch is not None:
                    on_epoch(record, history)
                halt = stop.requested and folder is not None
                if dist.active and folder is not None:  # every process stops after the same epoch
                    halt = any_of(dist, halt)
                if halt and folder is not None and epoch + 1 < cfg.epochs:
                    raise FinetuneInterrupted(folder, epoch + 1, 0)
        tuned = run.export(trained_graph, work, spec.output_name)
    frozen_bn.restore(tuned, frozen, model)
    _restore_interface(model, tuned, spec.input_name)
    if penalty is not None:
        tuned = _quantized_export(tuned, penalty, history)
    return tuned, history


def processes(cfg: FinetuneConfig) -> Dist:
    """This process's place in a torchrun launch; the ort backend refuses one of several."""
    dist = from_env()
    if dist.active and cfg.backend != "torch":
        raise WncError(
            f"torchrun started {dist.world} processes, and the ort backend trains in one",
            "add --backend torch (torch.distributed), or run without torchrun",
        )
    return dist


def _runtime(cfg: FinetuneConfig, dist: Dist) -> str:
    """What trains, for the history; a WncError with the install command when it is missing."""
    if cfg.backend == "ort":
        return f"onnxruntime-training {require_training()}"

    return f"torch {require_torch()}" + (f", {dist.world} processes (torch.distributed)" if dist.active else "")


def _start(
    for_training: onnx.ModelProto,
    factors: list[str],
    cfg: FinetuneConfig,
    dist: Dist,
    saved: Path | None,
    work: Path,
    spec: ModelSpec,
    objective: Objective | None = None,
) -> Any:
    """The backend's run object (``OrtRun`` or ``TorchRun``), from a saved state when resuming."""
    if cfg.backend == "torch":
        return TorchRun(for_training, trainable(for_training, factors)[0], cfg, dist, saved, spec, objective)
    if objective is not None:  # the loss graph reads the teacher's tensors; the run returns the scores
        term = objective.agreement_term()
        label_on = spec.train_tensor if spec.loss else None  # --alpha: the tensor the label loss reads
        returned = [t for t in (term.tensor if term else None, label_on) if t]
        paths = artifacts.generate(
            for_training,
            work / "artifacts",
            spec.loss,
            cfg.optimizer,
            list(dict.fromkeys(returned)),
            factors,
            label_on,
            objective,
        )
        return OrtRun(paths, saved or paths["checkpoint"], cfg, spec, objective)
    paths = artifacts.generate(
        for_training, work / "artifacts", cfg.loss, cfg.optimizer, [spec.output_name], factors, spec.train_tensor
    )
    return OrtRun(paths, saved or paths["checkpoint"], cfg, spec)


def _val_spec(model: onnx.ModelProto, spec: ModelSpec, val: Any, cfg: FinetuneConfig) -> ModelSpec:
    """Validation reads labels where they are (accuracy), also when training uses none."""
    if spec.loss is not None or getattr(val, "labeled", None) is not True:
        return spec
    try:
        return model_spec(model, cfg.loss)
    except WncError:  # several outputs, not class scores: no accuracy to read
        return spec


@contextlib.contextmanager
def _leaving(run: Any) -> Iterator[None]:
    """Leave the process group this run joined, however the loop ends."""
    try:
        yield
    finally:
        if getattr(run, "joined", False):
            leave()


def _penalty(model: onnx.ModelProto, cfg: FinetuneConfig) -> Any:
    if cfg.pq_lambda is None:
        return None

    penalty = PQPenalty(model, pq_config(cfg.pq), cfg.pq_lambda)
    log.info("compression-aware training: %d weight(s) pulled toward their product quantization", len(penalty.names))
    return penalty


def _quantized_export(tuned: onnx.ModelProto, penalty: Any, history: History) -> onnx.ModelProto:
    """The tuned model through the product-quantization pass, with the penalty's weights and settings."""
    import re
    from dataclasses import replace

    only = "^(" + "|".join(re.escape(t.cand.entry.layer) for t in penalty.targets) + ")$"
    cfg = replace(penalty.cfg, pq_include=only, pq_exclude=None)
    report = Report()
    result = PQPass(cfg)(tuned, report, in_place=False)
    pq = report.extras["pq"]
    history.pq = {
        "lambda": penalty.lam,
        "settings": pq["settings"],
        "totals": pq["totals"],
        "weights": [
            {
                k: w[k]
                for k in ("weight", "layer", "shape", "bits_per_weight", "rel_error", "bytes_before", "bytes_after")
            }
            for w in pq["weights"]
            if w["status"] == "quantized"
        ],
    }
    return result.model


@dataclass
class _Loop:
    run: Any
    train: BatchSource
    val: BatchSource | None
    cfg: FinetuneConfig
    stop: _StopRequest
    folder: Path | None
    sha: str
    history: History
    quiet: bool
    penalty: Any = None  # PQPenalty, with --pq-lambda
    teacher: Teacher | None = None  # distillation: the original model's tensors per batch
    first_loss: float | None = None  # the run's first batch, before any step changed the weights

    def save(self, epochs_done: int, batches_done: int = 0, partial: dict[str, float] | None = None) -> None:
        if self.folder is None or not self.run.dist.main:  # rank 0 writes for all
            return
        cfg = self.cfg
        progress = checkpoint.Progress(
            self.sha,
            cfg.loss,
            cfg.optimizer,
            epochs_done,
            batches_done,
            partial or {},
            self.history.to_dict(),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            backend=cfg.backend,
            world_size=self.run.dist.world,
        )
        checkpoint.save(self.folder, self.run.write_state, self.run.suffix, progress)

    def train_epoch(self, epoch: int, skip: int, partial: dict[str, float]) -> EpochRecord:
        """One epoch; the first ``skip`` batches were applied before a stop (``partial`` sums them)."""
        cfg = self.cfg
        lr = cfg.lr_at(epoch)
        self.run.set_lr(lr)
        self.run.train_mode()
        total, seen = partial.get("loss_sum", 0.0), int(partial.get("seen", 0))
        bar = EpochBar(self.train.size, epoch, cfg.epochs, self.quiet)
        t0 = time.perf_counter() - partial.get("seconds", 0.0)
        done = 0
        dist = self.run.dist
        even = self.train.size is not None  # a data set split evenly: every process stops at the same batch
        teaching = 0.0
        rng = np.random.default_rng([cfg.seed, epoch, self.run.dist.rank])  # augmentations: seeded per epoch
        with self.run.epoch_context():
            for feeds, yb in self.train.epoch(epoch, cfg.seed):
                done += 1
                if done <= skip:
                    continue
                feeds = augment.apply(cfg.augment, feeds, rng)
                targets = None
                if self.teacher is not None:
                    t1 = time.perf_counter()
                    targets = self.teacher(feeds)
                    teaching += time.perf_counter() - t1
                loss = self.run.step(feeds, yb, targets, f"epoch {epoch + 1}, batch {done}")
                if epoch == 0 and done == 1:
                    self.first_loss = loss
                if self.penalty is not None:
                    self.penalty.pull(self.run.params, lr)
                n = len(next(iter(feeds.values())))
                total += loss * n
                seen += n
                bar.update(seen, total / seen)
                stop = self.stop.requested and self.folder is not None
                if dist.active and even and self.folder is not None:
                    stop = any_of(dist, stop)
                if stop:
                    assert self.folder is not None
                    bar.close()
                    self.save(epoch, done, {"loss_sum": total, "seen": seen, "seconds": time.perf_counter() - t0})
                    raise FinetuneInterrupted(self.folder, epoch + 1, done)
        seconds = time.perf_counter() - t0
        bar.close()
        total, seen_all = sum_over(dist, [total, seen])  # the epoch over every process
        seen = int(seen_all)
        scores = self.run.evaluate(self.val, self.teacher) if self.val is not None else Scores(None, None)  # type: ignore[arg-type]
        record = EpochRecord(
            epoch + 1, lr, total / seen, scores.loss, scores.accuracy, round(seconds, 3), seen / max(seconds, 1e-9)
        )
        record.val_agreement = scores.agreement
        if self.teacher is not None:
            record.teacher_seconds = round(teaching, 3)
        if self.penalty is not None:  # new codebooks for the next epoch; the model as it would be exported now
            found = self.penalty.refresh(self.run.params)
            record.pq_penalty, record.pq_distance = found["pq_penalty"], found["pq_distance"]
            if self.val is not None:
                with self.penalty.quantized(self.run.params):
                    record.pq_val_accuracy = self.run.evaluate(self.val, self.teacher).accuracy
        return record


RISE = 1.5  # epoch 1's mean loss over the first batch's that says the steps are too large


def _check_rise(first: float, record: EpochRecord, history: History) -> None:
    """A first epoch whose mean loss ends well above the loss the run started from took steps too
    large for the model (measured: PP-OCRv4 rec distilled at 1e-3 went 3.7 -> 12.3 and lost its
    agreement with the teacher; at 3e-4 it fell, and the model read 71% of lines, the original 89%):
    say so, with a third of the lr to try."""
    if not (first > 0 and record.train_loss > RISE * first):
        return
    msg = (
        f"the training loss rose from {first:.4g} (the first batch) to {record.train_loss:.4g} (epoch 1's mean) "
        f"at lr {record.lr:g}: the steps are too large for this model; try --lr {record.lr / 3:.1g}"
    )
    log.warning(msg)
    history.warnings.append(msg)


def _log_epoch(record: EpochRecord, epochs: int) -> None:
    val = ""
    if record.val_loss is not None:
        val = f", val loss {record.val_loss:.4f}"
        if record.val_accuracy is not None:
            val += f", val accuracy {record.val_accuracy:.2%}"
    if record.pq_distance is not None:
        val += f", distance to PQ {record.pq_distance:.4f}"
        if record.pq_val_accuracy is not None:
            val += f", quantized {record.pq_val_accuracy:.2%}"
    log.info(
        "epoch %d/%d: lr %.3g, train loss %.4f%s, %.0f samples/s",
        record.epoch,
        epochs,
        record.lr,
        record.train_loss,
        val,
        record.samples_per_s,
    )


def _restore_interface(original: onnx.ModelProto, tuned: onnx.ModelProto, input_name: str) -> None:
    """Same inputs, outputs, metadata and producer as the model that came in."""
    del tuned.graph.output[:]
    tuned.graph.output.extend(original.graph.output)
    del tuned.metadata_props[:]
    tuned.metadata_props.extend(original.metadata_props)
    for key in ("producer_name", "producer_version"):  # as set or unset as they were (proto2 keeps presence)
        if original.HasField(key):
            setattr(tuned, key, getattr(original, key))
        else:
            tuned.ClearField(key)
    names = [vi.name for vi in tuned.graph.input]
    if input_name not in names:
        raise RuntimeError(f"the exported model lost input '{input_name}' (a bug)")
