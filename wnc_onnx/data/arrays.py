"""Training data: arrays ``x`` and ``y`` from an .npz file, or any iterable of batches."""

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
