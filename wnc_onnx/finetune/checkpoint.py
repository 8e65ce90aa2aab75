"""Checkpoints of a fine-tuning run, so that it can stop (Ctrl-C, a crash) and resume.

A checkpoint folder holds ``progress.json`` (which model, which loss, optimizer and
backend, how far the run got, the history so far) and one state file with the weights and
the optimizer state (AdamW moments, step count): an ONNX Runtime checkpoint
(``state-*.ckpt``, ``--backend ort``) or a ``torch.save`` file (``state-*.pt``, ``--backend
torch``: the trained initializers by ONNX name and the optimizer's state dict). The state file is written
under a new name first and ``progress.json`` is replaced atomically after it, so the
folder always describes a complete checkpoint; the older state file is removed last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io.model_io import write_text_atomic

log = logging.getLogger(__name__)

FORMAT = 1
PROGRESS = "progress.json"


@dataclass
class Progress:
    model_sha256: str
    loss: str
    optimizer: str
    epochs_done: int  # complete epochs
    batches_done: int = 0  # batches of the next epoch already applied (a run stopped mid-epoch)
    partial: dict[str, float] = field(default_factory=dict)  # loss_sum, seen, seconds of that epoch so far
    history: dict[str, Any] = field(default_factory=dict)
    state_file: str = ""
    batch_size: int = 0  # with seed: where a stopped epoch's remaining batches start
    seed: int = 0
    format: int = FORMAT
    backend: str = "ort"
    world_size: int = 1  # processes of the run (torch.distributed); batches_done counts each one's batches


def fingerprint(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def save(folder: Path, write_state: Callable[[Path], None], suffix: str, progress: Progress) -> None:
    """Write the state (weights with optimizer state, by ``write_state``) and then ``progress.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    old = set(folder.glob("state-*.ckpt")) | set(folder.glob("state-*.pt"))
    name = f"state-e{progress.epochs_done:04d}-b{progress.batches_done:06d}{suffix}"
    tmp = folder / f".{name}.tmp"
    try:
        write_state(tmp)
        os.replace(tmp, folder / name)
        progress.state_file = name
        write_text_atomic(folder / PROGRESS, json.dumps(asdict(progress), indent=1) + "\n")
    except OSError as exc:
        raise WncError(
            f"cannot write a checkpoint in {folder}: {one_line(exc)}", "choose a writable --checkpoint-dir"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    for stale in old - {folder / name}:
        stale.unlink(missing_ok=True)
    log.debug("checkpoint: epoch %d batch %d in %s", progress.epochs_done, progress.batches_done, folder / name)


def load(folder: Path) -> Progress:
    path = folder / PROGRESS
    if not path.is_file():
        raise WncError(f"no checkpoint to resume from in {folder}", "run without --resume to start fresh")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        progress = Progress(**raw)
    except (ValueError, TypeError) as exc:
        raise WncError(
            f"{path} is not a wnc-onnx checkpoint ({one_line(exc, 120)})", "delete the folder and start fresh"
        ) from None
    if progress.format != FORMAT or not (folder / progress.state_file).is_file():
        raise WncError(
            f"checkpoint in {folder} is incomplete or of another version", "delete the folder and start fresh"
        )
    return progress


def check(
    progress: Progress,
    folder: Path,
    model_sha256: str,
    loss: str,
    optimizer: str,
    batch_size: int,
    seed: int,
    backend: str = "ort",
    world_size: int = 1,
) -> None:
    """A checkpoint resumes only the run it was made by: same model, loss, optimizer and
    backend; and within a stopped epoch the same batch size, seed and number of processes
    (or the skipped batches would differ). At an epoch's end any number of processes resumes."""
    if progress.model_sha256 != model_sha256:
        raise WncError(
            f"the checkpoint in {folder} was made while fine-tuning another model",
            "pass the same input model, or a new --checkpoint-dir to start fresh",
        )
    same: list[tuple[str, object, object]] = [
        ("loss", progress.loss, loss),
        ("optimizer", progress.optimizer, optimizer),
        ("backend", progress.backend, backend),
    ]
    if progress.batches_done:
        same += [("batch-size", progress.batch_size, batch_size), ("seed", progress.seed, seed)]
        if progress.world_size != world_size:
            raise WncError(
                f"the checkpoint in {folder} was made in the middle of an epoch by {progress.world_size} "
                f"process(es), this run has {world_size}",
                f"resume with --nproc_per_node {progress.world_size} (torchrun), or start fresh without --resume",
            )
    for what, had, now in same:
        if had != now:
            where = " in the middle of an epoch" if what in ("batch-size", "seed") else ""
            raise WncError(
                f"the checkpoint in {folder} was made{where} with {what} {had}, this run asks for {now}",
                f"resume with --{what} {had}, or start fresh without --resume",
            )
