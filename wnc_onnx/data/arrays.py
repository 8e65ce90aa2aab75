"""Data sets in memory: labelled arrays (``x``, ``y``) and model inputs by name, with or
without labels (distillation needs none), read from .npz files."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wnc_onnx.errors import WncError
from wnc_onnx.io.model_io import read_npz


@dataclass
class ArrayData:
    """Samples ``x`` (N, ...) and targets ``y`` (N,) class indices or (N, ...) values."""

    x: np.ndarray
    y: np.ndarray
    name: str = "data"

    labeled = True  # y holds labels (InputArrays and unlabelled image folders may not)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, order: Sequence[int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches in a seeded random order, or in the given ``order`` of sample indices (a shard)."""
        if order is None:
            order = np.random.default_rng(seed).permutation(len(self)).tolist() if shuffle else range(len(self))
        picks = np.asarray(order, dtype=np.int64)
        for start in range(0, len(picks), batch_size):
            idx = picks[start : start + batch_size]
            yield self.x[idx], self.y[idx]


def load_npz(path: str | os.PathLike[str]) -> ArrayData:
    p = Path(path)
    arrays = read_npz(p, "data file", "holding arrays 'x' and 'y'", "numpy.savez(path, x=inputs, y=labels)")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise WncError(
            f"{p} lacks array(s) {missing} (it holds {sorted(arrays)})", "save it with numpy.savez(path, x=..., y=...)"
        )
    x, y = arrays["x"], arrays["y"]
    if len(x) == 0:
        raise WncError(f"{p} holds no samples", "pass a data set with at least one sample")
    if len(x) != len(y):
        raise WncError(f"{p}: x has {len(x)} samples, y has {len(y)}", "give one label per sample")
    return ArrayData(x, y, p.name)


@dataclass
class InputArrays:
    """Model inputs, one array per input name (batch first, the same count each), and labels ``y``
    or None: what an .npz of a model's inputs holds (several inputs: audio with its state, a
    detector with its image size)."""

    feeds: dict[str, np.ndarray]
    y: np.ndarray | None = None
    name: str = "data"
    labeled: bool = False

    def __post_init__(self) -> None:
        counts = {k: len(v) for k, v in self.feeds.items()}
        if len(set(counts.values())) > 1:
            raise WncError(f"{self.name}: the inputs hold different sample counts {counts}", "give one sample per row")
        if self.y is not None and len(self.y) != len(self):
            raise WncError(f"{self.name}: the inputs hold {len(self)} samples, y {len(self.y)}", "one label per sample")
        self.labeled = self.y is not None

    def __len__(self) -> int:
        return min((len(v) for v in self.feeds.values()), default=0)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, order: Sequence[int] | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """(feeds, y or None) batches in the order rule of ``ArrayData.batches``."""
        if order is None:
            order = np.random.default_rng(seed).permutation(len(self)).tolist() if shuffle else range(len(self))
        picks = np.asarray(order, dtype=np.int64)
        for start in range(0, len(picks), batch_size):
            idx = picks[start : start + batch_size]
            yield {k: v[idx] for k, v in self.feeds.items()}, (self.y[idx] if self.y is not None else None)


def load_inputs_npz(path: str | os.PathLike[str], inputs: Sequence[str]) -> ArrayData | InputArrays:
    """An .npz for a model with data inputs ``inputs``: ``x`` (and ``y``) for a one-input model,
    one array per input name (and optionally ``y``), or, for a one-input model, its only array
    by any name. Labels are optional: without them the data serve distillation."""
    p = Path(path)
    arrays = read_npz(p, "data file", "holding the model's inputs", "numpy.savez(path, input_name=inputs)")
    if not arrays:
        raise WncError(f"{p} holds no arrays", "save the model's inputs with numpy.savez")
    y = arrays.get("y")
    if len(inputs) == 1 and inputs[0] not in arrays:
        rest = {k: v for k, v in arrays.items() if k != "y"}
        if "x" in rest:
            x = rest["x"]
        elif len(rest) == 1:
            x = next(iter(rest.values()))
        else:
            raise WncError(
                f"{p} holds {sorted(arrays)}: which is the input '{inputs[0]}'?",
                f"name the array 'x' or '{inputs[0]}'",
            )
        feeds = {inputs[0]: x}
    else:
        missing = [n for n in inputs if n not in arrays]
        if missing:
            raise WncError(f"{p} lacks array(s) for input(s) {missing} (it holds {sorted(arrays)})",
                           f"store one array per model input: {list(inputs)}")  # fmt: skip
        feeds = {n: arrays[n] for n in inputs}
    data = InputArrays(feeds, y, p.name)
    if len(data) == 0:
        raise WncError(f"{p} holds no samples", "pass a data set with at least one sample")
    if y is not None and len(inputs) == 1:
        return ArrayData(feeds[inputs[0]], y, p.name)
    return data
