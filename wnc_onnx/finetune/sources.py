"""Where training batches come from, and the check that each batch fits the model.

Fine-tuning takes any of:
- a data set with ``batches(batch_size, shuffle, seed)`` and ``len()`` (``ArrayData`` and
  ``InputArrays`` from .npz files, ``ImageFolder``, ``UnlabeledImages``): shuffled per epoch
  with a seed, so a resumed run sees the same order;
- a re-iterable of batches (a list, a ``torch.utils.data.DataLoader``);
- a function returning a fresh iterable of batches, called once per epoch.

A batch is ``(x, y)`` (one model input), ``(feeds, y)`` with ``feeds`` a dict of input name ->
array, or ``x`` / ``feeds`` alone when there are no labels (distillation from a teacher needs
none). Inside, every batch becomes ``(feeds, y or None)``.

Under ``torchrun`` (several processes) a data set is split between them per epoch
(``distributed.shard``); an iterable or a function is taken as this process's own share, as
a DataLoader with a DistributedSampler gives it.

A one-shot iterator (a generator object) would be empty from the second epoch on, so it
is refused with the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from wnc_onnx.analyze.heads import Head, heads
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.distributed import Dist, shard

Feeds = dict[str, np.ndarray]
Batch = tuple[Feeds, np.ndarray | None]


@dataclass(frozen=True)
class Port:
    """A model input or output: its name, dims (None: free) and element type."""

    name: str
    dims: tuple[int | None, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class ModelSpec:
    """What a batch must look like for a model, and what its labels train (``loss``: the label
    loss, None when the run uses no labels; ``target``: the head the label loss reads)."""

    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    loss: str | None
    target: Head | None = None

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_dims(self) -> tuple[int | None, ...]:
        return self.inputs[0].dims

    @property
    def dtype(self) -> np.dtype:
        return self.inputs[0].dtype

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    @property
    def output_dims(self) -> tuple[int | None, ...]:
        return self.outputs[0].dims

    @property
    def classes(self) -> int | None:
        return self.output_dims[1] if len(self.output_dims) == 2 else None

    @property
    def train_tensor(self) -> str:
        """The tensor the label loss reads: the logits before a final softmax, else the output."""
        return self.target.tensor if self.target is not None else self.output_name


def _port(vi: onnx.ValueInfoProto) -> Port:
    tt = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
    return Port(vi.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))


def model_spec(model: onnx.ModelProto, loss: str | None) -> ModelSpec:
    """The model's ports; with a label ``loss``, one output to train it on (cross-entropy: class
    scores, read before a final Softmax / LogSoftmax)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = tuple(_port(vi) for vi in model.graph.input if vi.name not in inits)
    outputs = tuple(_port(vi) for vi in model.graph.output)
    if not inputs or not outputs:
        raise WncError("fine-tuning takes a model with data inputs and outputs", "export the network as it runs")
    if loss is None:
        return ModelSpec(inputs, outputs, None)
    if len(outputs) != 1:
        raise WncError(
            f"training on labels takes a model with one output; this one has {len(outputs)}",
            "distill from the original instead (--teacher ORIGINAL.onnx: every output counts, no labels needed)",
        )
    out = outputs[0]
    if loss == "cross_entropy" and len(out.dims) != 2:
        raise WncError(
            f"cross-entropy needs a score per class, shape (N, classes); output '{out.name}' has rank {len(out.dims)}",
            "use --loss mse for regression-like outputs, or distill from the original (--teacher)",
        )
    target = heads(model)[0]
    if loss != "cross_entropy" or not target.classes or target.axis != 1:
        target = Head(out.name, out.name, "values", -1, len(out.dims), "the output itself")
    return ModelSpec(inputs, outputs, loss, target)


def _check_input(port: Port, x: Any, label: str) -> np.ndarray:
    """``x`` cast to the input's type; a WncError when its sample shape does not fit."""
    x = np.asarray(x)
    want = port.dims
    if x.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], x.shape[1:], strict=True)):
        raise WncError(
            f"{label}: samples have shape {list(x.shape[1:])}, the model input '{port.name}' takes "
            f"{['N' if d is None else d for d in want]}",
            "reshape x to (N, *input shape) as the model was exported",
        )
    return x.astype(port.dtype, copy=False)


def check_samples(spec: ModelSpec, x: np.ndarray, label: str) -> np.ndarray:
    """``x`` for the model's (first) input, cast to its type."""
    return _check_input(spec.inputs[0], x, label)


def check_feeds(spec: ModelSpec, feeds: Mapping[str, Any], label: str) -> Feeds:
    """One array per model input, each checked and cast; a missing input is one WncError."""
    missing = [p.name for p in spec.inputs if p.name not in feeds]
    if missing:
        raise WncError(
            f"{label} lacks input(s) {missing}", f"give one array per model input: {[p.name for p in spec.inputs]}"
        )
    out = {p.name: _check_input(p, feeds[p.name], label) for p in spec.inputs}
    counts = {len(v) for v in out.values()}
    if len(counts) > 1:
        raise WncError(f"{label}: the inputs of a batch hold different sample counts", "give one sample per row")
    return out


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
    """``(feeds, y or None)`` from any batch form (see the module doc), each part checked."""
    if isinstance(batch, Mapping):
        feeds, y = batch, None
    elif isinstance(batch, np.ndarray):
        feeds, y = {spec.input_name: batch}, None
    else:
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise WncError(
                f"{label}: a batch is {type(batch).__name__}, not (x, y), (feeds, y), x or feeds",
                "yield (x, y) tuples, or input arrays alone when distilling",
            ) from None
        feeds = x if isinstance(x, Mapping) else {spec.input_name: x}
        if not isinstance(x, Mapping) and len(spec.inputs) > 1:
            raise WncError(
                f"{label}: the model takes {len(spec.inputs)} inputs; a batch gave one array",
                f"give a dict of input name -> array: {[p.name for p in spec.inputs]}",
            )
    checked = check_feeds(spec, feeds, label)
    n = len(next(iter(checked.values())))
    if y is None:
        if spec.loss is not None:
            raise WncError(
                f"{label} has no labels, and this run trains on them ({spec.loss})",
                "give (x, y) batches, or distill from the original model without labels (--teacher ORIGINAL.onnx)",
            )
        return checked, None
    return checked, (check_targets(spec, y, n, label) if spec.loss is not None else None)


class BatchSource:
    """One epoch's batches at a time, each checked against the model."""

    def __init__(
        self, data: Any, spec: ModelSpec, batch_size: int, *, shuffle: bool, label: str, dist: Dist | None = None
    ) -> None:
        self.spec, self.batch_size, self.shuffle = spec, batch_size, shuffle
        self.label = getattr(data, "name", None) or label
        self.labeled: bool | None = getattr(data, "labeled", None)  # None: known from the batches only
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
                "pass ArrayData / InputArrays / ImageFolder, an iterable of batches, or a function returning one",
            )

    def _check_whole(self, data: Any) -> None:
        """Arrays in memory are checked whole, before any training: not at the batch where they fail."""
        x, y = getattr(data, "x", None), getattr(data, "y", None)
        feeds = getattr(data, "feeds", None)
        if isinstance(x, np.ndarray):
            feeds = {self.spec.input_name: x}
        if isinstance(feeds, Mapping):
            checked = check_feeds(self.spec, {k: v[:1] for k, v in feeds.items()}, self.label)  # shapes; cast per batch
            n = len(next(iter(feeds.values())))
            if isinstance(y, np.ndarray) and self.spec.loss is not None:
                check_targets(self.spec, y, n, self.label)
            del checked
        if self.labeled is False and self.spec.loss is not None:
            raise WncError(
                f"{self.label} has no labels, and this run trains on them ({self.spec.loss})",
                "give labelled data (an .npz with x and y, class folders), or distill from the original model "
                "without labels (--teacher ORIGINAL.onnx)",
            )
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
            raise WncError(f"{self.label} yielded no batches in epoch {epoch + 1}", "pass at least one batch")

    def first(self) -> Batch:
        """The first batch (checked), to catch misfit data before any training artifact is made."""
        for batch in self.epoch(0):
            return batch
        raise AssertionError("unreachable: epoch() raises when empty")
