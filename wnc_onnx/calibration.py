"""Calibration data: the second moments that data-aware factorization needs (issue 12).

The original model runs in onnxruntime on the user's inputs, batch by batch, with the
tapped layers' input tensors added to its outputs. For each tap the channel second moment
E[x x^T] of the input (channels on axis 1 for a Conv, the last axis for Gemm / MatMul,
every other axis a sample) is summed in float64, so memory is bounded by the statistics
(d x d per tap), not by the data. ``wnc_onnx.numeric.calibrated`` turns them into factors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.errors import WncError
from wnc_onnx.graph import data_inputs
from wnc_onnx.model_io import read_npz

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
CalibrationSource = str | Path | Iterable[Feeds]
BATCH = 16  # samples per onnxruntime run when the data come as whole arrays


@dataclass(frozen=True)
class Tap:
    """A layer whose input moment is wanted: ``channel_axis`` 1 (Conv), -1 or -2 (MatMul W X)."""

    layer: str
    tensor: str
    channel_axis: int


@dataclass
class Moments:
    """The running sum of x x^T over sample vectors, in float64."""

    outer: np.ndarray
    count: int = 0

    def add(self, value: np.ndarray, channel_axis: int) -> None:
        v = np.moveaxis(np.asarray(value, dtype=np.float64), channel_axis, -1)
        flat = v.reshape(-1, v.shape[-1])
        if flat.shape[1] != self.outer.shape[0]:
            raise WncError(
                f"a calibration batch gave {flat.shape[1]} channels where an earlier one gave {self.outer.shape[0]}",
                "give inputs of one size",
            )
        self.outer += flat.T @ flat
        self.count += len(flat)

    @property
    def second(self) -> np.ndarray:
        """E[x x^T]."""
        return self.outer / max(self.count, 1)


@dataclass
class Calibration:
    """The input moments of every tapped layer and how much data they came from."""

    layers: dict[str, Moments] = field(default_factory=dict)
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0

    def needed(self) -> dict[str, int]:
        """Layers whose input moment has fewer sample vectors than its order (rank-deficient):
        layer -> how many vectors it needs."""
        return {name: m.outer.shape[0] for name, m in self.layers.items() if m.count < m.outer.shape[0]}


def _expected(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], np.dtype[Any]]]:
    out = {}
    for vi in data_inputs(model):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = (dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    return out


def _require_inputs(expected: Mapping[str, Any], feeds: Mapping[str, Any], where: str) -> None:
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise WncError(f"{where} lacks input(s) {missing}", f"give one array per model input: {sorted(expected)}")


def check_feeds(model: onnx.ModelProto, feeds: Feeds, where: str) -> dict[str, np.ndarray]:
    """The feeds a model takes, cast where safe; one WncError naming the first misfit."""
    expected = _expected(model)
    _require_inputs(expected, feeds, where)
    out = {}
    for name, (dims, dtype) in expected.items():
        a = np.asarray(feeds[name])
        if a.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, a.shape, strict=False)):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            raise WncError(
                f"{where}: input '{name}' has shape {list(a.shape)}, the model takes [{shown}]",
                "give arrays of the model's input shape (batch first)",
            )
        if a.dtype != dtype:
            kinds_fit = (a.dtype.kind in "fiu" and dtype.kind == "f") or (a.dtype.kind in "iu" and dtype.kind in "iu")
            if not kinds_fit:
                raise WncError(f"{where}: input '{name}' is {a.dtype}, the model takes {dtype}", f"store it as {dtype}")
            a = a.astype(dtype)
        out[name] = a
    return out


def batches_of(
    source: CalibrationSource, model: onnx.ModelProto, batch: int = BATCH
) -> Iterator[dict[str, np.ndarray]]:
    """Checked feed dicts from an ``.npz`` (one array per input, batch first; cut into batches
    of ``batch``, or of the model's own batch size where it is fixed) or an iterable of feed
    dicts (each a batch)."""
    where = "calibration batch {}"
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            raise WncError(
                f"--calibration {path}: image folders are not read yet",
                "store the inputs in an .npz, one array per input",
            )
        arrays = read_npz(
            path, "calibration file", "with one array per model input", "numpy.savez(path, input_name=array)"
        )
        expected = _expected(model)
        if len(expected) == 1 and len(arrays) == 1:  # a single array for a single-input model, by any name
            arrays = {next(iter(expected)): next(iter(arrays.values()))}
        where = f"--calibration {path.name}"
        _require_inputs(expected, arrays, where)
        n = min(len(arrays[k]) for k in expected) if expected else 0
        fixed = {dims[0] for dims, _ in expected.values() if dims and dims[0] is not None}
        step = next(iter(fixed)) if len(fixed) == 1 else batch
        stop = n - step + 1 if len(fixed) == 1 else n  # a fixed batch size takes whole batches only
        source = ({k: arrays[k][i : i + step] for k in expected} for i in range(0, max(stop, 0), step))
    for i, feeds in enumerate(source):
        yield check_feeds(model, feeds, where.format(i))


def gather(
    model: onnx.ModelProto,
    source: CalibrationSource,
    taps: list[Tap],
    *,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Run ``model`` on the calibration data and sum each tap's moments."""
    from wnc_onnx.verify import _session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(
        onnx.ValueInfoProto(name=t) for t in sorted({tap.tensor for tap in taps}) if t not in have
    )
    sess = _session(probe, threads)
    names = [o.name for o in sess.get_outputs()]
    cal = Calibration()
    t0 = time.perf_counter()
    for feeds in batches_of(source, model):
        values = {**feeds, **dict(zip(names, sess.run(None, feeds), strict=True))}
        for tap in taps:
            x = values[tap.tensor]
            cal.layers.setdefault(tap.layer, Moments(np.zeros((x.shape[tap.channel_axis],) * 2))).add(
                x, tap.channel_axis
            )
        cal.samples += len(next(iter(feeds.values()))) if feeds else 0
        cal.batches += 1
        if progress is not None:
            progress(cal.batches, cal.samples)
    cal.seconds = time.perf_counter() - t0
    if cal.samples == 0:
        raise WncError("the calibration data hold no samples", "give at least a few hundred model inputs")
    return cal
