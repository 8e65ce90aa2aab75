"""Where training batches come from, and the check that each batch fits the model.

Fine-tuning takes any of:
- a data set with ``batches(batch_size, shuffle, seed)`` and ``len()`` (``ArrayData`` from
  an .npz file, ``ImageFolder``): shuffled per epoch with a seed, so a resumed run sees
  the same order;
- a re-iterable of ``(x, y)`` batches (a list, a ``torch.utils.data.DataLoader``);
- a function returning a fresh iterable of batches, called once per epoch.

Under ``torchrun`` (several processes) a data set is split between them per epoch
(``distributed.shard``); an iterable or a function is taken as this process's own share, as
a DataLoader with a DistributedSampler gives it.

A one-shot iterator (a generator object) would be empty from the second epoch on, so it
is refused with the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from wnc_onnx.errors import WncError
from wnc_onnx.finetune.distributed import Dist, shard

Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """What a batch must look like for a model: one input, one output."""

    input_name: str
    output_name: str
    input_dims: tuple[int | None, ...]  # None: free (batch or symbolic)
    output_dims: tuple[int | None, ...]
    dtype: np.dtype
    loss: str

    @property
    def classes(self) -> int | None:
        return self.output_dims[1] if len(self.output_dims) == 2 else None


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    shape = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape)


def model_spec(model: onnx.ModelProto, loss: str) -> ModelSpec:
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise WncError(
            f"fine-tuning takes a model with one input and one output; this one has {len(inputs)} and "
            f"{len(model.graph.output)}",
            "export the network with a single image input and a single score output",
        )
    inp, out = inputs[0], model.graph.output[0]
    spec = ModelSpec(
        inp.name,
        out.name,
        _dims(inp),
        _dims(out),
        np.dtype(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)),
        loss,
    )
    if loss == "cross_entropy" and len(spec.output_dims) != 2:
        raise WncError(
            f"cross-entropy needs a score per class, shape (N, classes); output '{out.name}' has rank "
            f"{len(spec.output_dims)}",
            "use --loss mse for regression-like outputs",
        )
    return spec


def check_samples(spec: ModelSpec, x: np.ndarray, label: str) -> np.ndarray:
    """``x`` cast to the input's type; a WncError when its sample shape does not fit."""
    x = np.asarray(x)
    want = spec.input_dims
    if x.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], x.shape[1:], strict=True)):
        raise WncError(
            f"{label}: samples have shape {list(x.shape[1:])}, the model input '{spec.input_name}' takes "
            f"{['N' if d is None else d for d in want]}",
            "reshape x to (N, *input shape) as the model was exported",
        )
    return x.astype(spec.dtype, copy=False)


def check_targets(spec: ModelSpec, y: np.ndarray, n: int, label: str) -> np.ndarray:
    """``y`` as int64 class labels (cross-entropy) or float32 targets (MSE)."""
    y = np.asarray(y)
    if len(y) != n:
        raise WncError(f"{label}: x has {n} samples, y has {len(y)}", "give one target per sample")
    if spec.loss != "cross_entropy":
        want = spec.output_dims[1:]
        fits = y.ndim == len(spec.output_dims) and all(
            w is None or w == g for w, g in zip(want, y.shape[1:], strict=True)
        )
        if spec.output_dims and not fits:  # an output of unknown shape is left to onnxruntime
            raise WncError(
                f"{label}: targets have shape {list(y.shape[1:])}, the model output '{spec.output_name}' gives "
                f"{['N' if d is None else d for d in spec.output_dims]}",
                "give one target array per sample shaped like the output, or use --loss cross_entropy for labels",
            )
        return y.astype(np.float32, copy=False)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
        raise WncError(f"{label}: y must hold one integer class label per sample", "store labels as int64")
    classes = spec.classes
    if n and (y.min() < 0 or (classes is not None and y.max() >= classes)):
        raise WncError(
            f"{label}: labels range over {int(y.min())}..{int(y.max())}, the model scores "
            f"{classes if classes is not None else '?'} classes",
            f"use labels 0..{classes - 1 if classes else 'C-1'}",
        )
    return y.astype(np.int64, copy=False)


def check_batch(spec: ModelSpec, batch: Any, label: str) -> Batch:
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise WncError(
            f"{label}: a batch is {type(batch).__name__}, not an (x, y) pair", "yield (x, y) tuples"
        ) from None
    x = check_samples(spec, x, label)
    return x, check_targets(spec, y, len(x), label)


class BatchSource:
    """One epoch's batches at a time, each checked against the model."""

    def __init__(
        self, data: Any, spec: ModelSpec, batch_size: int, *, shuffle: bool, label: str, dist: Dist | None = None
    ) -> None:
        self.spec, self.batch_size, self.shuffle = spec, batch_size, shuffle
        self.label = getattr(data, "name", None) or label
        self._epoch: Callable[[int, int], Iterable[Any]]
        if hasattr(data, "batches"):
            if len(data) == 0:
                raise WncError(f"{self.label} holds no samples", "pass a data set with at least one sample")
            if dist is not None and dist.active:  # this process's share (torchrun)
                self._epoch = lambda epoch, seed: data.batches(
                    batch_size, order=shard(len(data), dist, shuffle, seed, epoch)
                )
                self.size: int | None = -(-len(data) // dist.world)
            else:
                self._epoch = lambda epoch, seed: data.batches(batch_size, shuffle=shuffle, seed=seed + epoch)
                self.size = len(data)
            self._check_whole(data)
        elif callable(data):
            self._epoch, self.size = (lambda epoch, seed: data()), None
        elif isinstance(data, Iterable):
            if iter(data) is data:
                raise WncError(
                    f"{label} is a one-shot iterator (it would be empty from the second epoch on)",
                    "pass a list, a DataLoader, or a function that returns fresh batches per epoch",
                )
            self._epoch, self.size = (lambda epoch, seed: data), None  # len() of a batch list counts batches
        else:
            raise WncError(
                f"{label} is a {type(data).__name__}",
                "pass ArrayData / ImageFolder, an iterable of (x, y) batches, or a function returning one",
            )

    def _check_whole(self, data: Any) -> None:
        """Arrays in memory are checked whole, before any training: not at the batch where they fail."""
        x, y = getattr(data, "x", None), getattr(data, "y", None)
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            check_samples(self.spec, x[:1], self.label)  # the sample shape; the cast happens per batch
            check_targets(self.spec, y, len(x), self.label)
        classes = getattr(data, "classes", None)
        if classes and self.spec.loss == "cross_entropy" and self.spec.classes and len(classes) > self.spec.classes:
            raise WncError(
                f"{self.label} has {len(classes)} classes, the model scores {self.spec.classes}",
                "fine-tune on the classes the model was trained for",
            )

    def epoch(self, epoch: int, seed: int = 0) -> Iterator[Batch]:
        """Checked batches of ``epoch``; an epoch without batches is an error."""
        count = 0
        for batch in self._epoch(epoch, seed):
            count += 1
            yield check_batch(self.spec, batch, self.label)
        if count == 0:
            raise WncError(f"{self.label} yielded no batches in epoch {epoch + 1}", "pass at least one (x, y) batch")

    def first(self) -> Batch:
        """The first batch (checked), to catch misfit data before any training artifact is made."""
        for batch in self.epoch(0):
            return batch
        raise AssertionError("unreachable: epoch() raises when empty")
