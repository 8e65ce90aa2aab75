"""Compress, then recover, in one flow (``compress --distill EPOCHS --calibration DATA``).

The calibration data serve three times: the compression fits each layer to them, the
compressed model then learns the original on them without labels (``finetune`` with the
original as the teacher), and a held-back part that neither step saw measures the original
against the compressed and the recovered model (``report.extras["distill"]``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.config import CompressConfig
from wnc_onnx.data.arrays import ArrayData, InputArrays, load_inputs_npz
from wnc_onnx.data.feeds import check_feeds, input_signature, source_name
from wnc_onnx.data.images import UnlabeledImages
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.evaluate import against_teacher
from wnc_onnx.finetune.trainer import FinetuneConfig, finetune
from wnc_onnx.report import Report
from wnc_onnx.rewrite import flow
from wnc_onnx.rewrite.pipeline import ModelLike, as_proto

log = logging.getLogger(__name__)

# the distillation's rate: on real exports calibrated with the same inputs, 3e-4 recovered
# more than 1e-4 and 1e-3 (which made PP-OCRv4 rec's loss rise; docs/measurements.md)
DISTILL_LR = 3e-4
HELD_BACK = 64  # samples kept for measuring, at most
HELD_SHARE = 8  # ... and at most one in this many


def samples(source: Any, model: onnx.ModelProto, mean: Any, std: Any) -> InputArrays:
    """The calibration data as arrays by input name: an .npz, an image folder, or a list of feed
    dicts (read once, in memory: a few hundred samples)."""
    names = list(input_signature(model))
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            dims = next(iter(input_signature(model).values()))[0]
            if len(names) != 1 or len(dims) != 4 or dims[1] is None or dims[2] is None or dims[3] is None:
                raise WncError(
                    f"--distill with the image folder {path} needs a model with one image input of fixed size",
                    "give the model's inputs as an .npz, one array per input",
                )
            images = UnlabeledImages(path, (int(dims[2]), int(dims[3])), int(dims[1]), mean, std)
            return InputArrays({names[0]: images.decode(images.files)}, None, path.name)
        data = load_inputs_npz(path, names)
        if isinstance(data, ArrayData):
            return InputArrays({names[0]: data.x}, None, data.name)
        return InputArrays(data.feeds, None, data.name)
    if not isinstance(source, Iterable) or iter(source) is source:
        raise WncError(
            "--distill reads the calibration data twice; an iterator gives them once",
            "pass a list of feed dicts, an .npz or an image folder",
        )
    batches = [check_feeds(model, dict(b) if isinstance(b, Mapping) else {names[0]: b}, "calibration batch")
               for b in source]  # fmt: skip
    if not batches:
        raise WncError("the calibration data hold no samples", "give a few hundred model inputs")
    return InputArrays({n: np.concatenate([b[n] for b in batches]) for n in names}, None, "calibration data")


def compress_and_recover(
    model: ModelLike,
    cfg: CompressConfig,
    epochs: int,
    finetune_cfg: FinetuneConfig | None = None,
    lr: float = DISTILL_LR,
) -> tuple[onnx.ModelProto, Report]:
    """Compress ``model`` with ``cfg`` (which must hold calibration data), then distill the result
    from ``model`` on those data for ``epochs`` at ``lr`` (unless ``finetune_cfg`` says
    otherwise); the report gains ``extras.distill``, and the run's warnings."""
    if cfg.calibration is None:
        raise WncError("--distill trains on the calibration data", "give --calibration DATA (the model's inputs)")
    original = as_proto(model)
    data = samples(cfg.calibration, original, cfg.calibration_mean, cfg.calibration_std)
    n = len(data)
    held = min(HELD_BACK, n // HELD_SHARE)
    if held < 1 or n - held < 1:
        raise WncError(f"--distill needs more data: the calibration data hold {n} samples",
                       f"give at least {HELD_SHARE} (a few hundred is better)")  # fmt: skip
    train = InputArrays({k: v[: n - held] for k, v in data.feeds.items()}, None, data.name)
    kept = InputArrays({k: v[n - held :] for k, v in data.feeds.items()}, None, "held back")
    compressed, report = flow.compress(model, _on(cfg, train))
    report.config["calibration"] = source_name(cfg.calibration)
    before = against_teacher(compressed, original, kept)
    fcfg = finetune_cfg or FinetuneConfig(batch_size=32, lr=lr, lr_step=max(1, (2 * epochs) // 3))
    fcfg = replace(fcfg, epochs=epochs, backend="torch")
    log.info("--distill: %d epochs on %d samples, %d held back", epochs, len(train), held)
    tuned, history = finetune(compressed, train, None, fcfg, teacher=original, quiet=True)
    after = against_teacher(tuned, original, kept)
    report.extras["distill"] = {
        "epochs": epochs,
        "lr": fcfg.lr,
        "train_samples": len(train),
        "held_back": held,
        "compressed": before,
        "recovered": after,
        "terms": history.distill.get("terms", []),
        "train_loss": [e.train_loss for e in history.epochs],
        "seconds": round(sum(e.seconds for e in history.epochs), 2),
    }
    report.warnings.extend(f"--distill: {w}" for w in history.warnings)
    return tuned, report


def _on(cfg: CompressConfig, train: InputArrays) -> CompressConfig:
    """``cfg`` calibrating on the training part only (the held-back samples stay unseen)."""
    batches = [dict(f) for f, _ in train.batches(16)]
    return replace(cfg, calibration=batches)
