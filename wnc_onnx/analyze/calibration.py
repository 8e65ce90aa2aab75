"""Calibration data: the input statistics that data-aware factorization needs (issue 12).

The original model runs in onnxruntime on the user's inputs, batch by batch, with the
tapped layers' input tensors added to its outputs. For each tap the mean and covariance of
the layer's input vectors are summed (float32 sums about the first batch's mean, by BLAS
syrk): for a Conv the patches its kernel reads (S channels x kernel taps, zero padding included, ``POSITIONS`` drawn at
random per sample on large maps), for a Flatten -> Gemm the whole map, for Gemm / MatMul
the rows. Memory is bounded by the statistics ((S x taps)^2 per layer, or S^2 where the
patches are wider than ``MAX_FULL``), not by the data. ``wnc_onnx.analyze.numeric.calibrated``
turns them into factors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from scipy.linalg.blas import ssyrk

from wnc_onnx.analyze.graph import with_outputs
from wnc_onnx.analyze.heads import measured
from wnc_onnx.analyze.numeric.calibrated import PatchStats
from wnc_onnx.data.feeds import CalibrationSource, Feeds, batches_of, input_signature, source_name
from wnc_onnx.errors import WncError
from wnc_onnx.io.session import cpu_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A convolution's view of its input: each output position reads a patch of S x prod(kernel)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # begins then ends, as ONNX writes them
    dilations: tuple[int, ...]
    auto_pad: str = "NOTSET"

    @property
    def taps(self) -> int:
        return int(np.prod(self.kernel))

    def _pads(self, size: tuple[int, ...]) -> tuple[list[int], list[int]]:
        nd = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begins, ends = [], []
            for n, k, st, d in zip(size, self.kernel, self.strides, self.dilations, strict=True):
                total = max((-(-n // st) - 1) * st + d * (k - 1) + 1 - n, 0)
                small = total // 2
                begins.append(small if self.auto_pad == "SAME_UPPER" else total - small)
                ends.append(total - begins[-1])
            return begins, ends
        if self.auto_pad == "VALID":
            return [0] * nd, [0] * nd
        return list(self.pads[:nd]), list(self.pads[nd:])

    def patches(self, x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
        """(M, S * taps) patches of x (N, S, *spatial) at up to ``limit`` output positions
        drawn at random (all of them when there are fewer), zero padding included."""
        nd = len(self.kernel)
        begins, ends = self._pads(tuple(x.shape[2:]))
        xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begins, ends, strict=True)))
        out = [
            (xp.shape[2 + i] - self.dilations[i] * (self.kernel[i] - 1) - 1) // self.strides[i] + 1 for i in range(nd)
        ]
        positions = x.shape[0] * int(np.prod(out))
        if positions <= 0:
            return np.zeros((0, x.shape[1] * self.taps), dtype=x.dtype)
        pick = np.arange(positions) if positions <= limit else np.sort(rng.choice(positions, limit, replace=False))
        idx = np.unravel_index(pick, [x.shape[0], *out])
        cols = []
        for offset in np.ndindex(*self.kernel):  # taps in the kernel's C order
            coords = tuple(idx[1 + i] * self.strides[i] + offset[i] * self.dilations[i] for i in range(nd))
            cols.append(_take(xp, idx[0], coords))
        return np.stack(cols, axis=2).reshape(len(pick), -1)  # (M, S, taps) -> channel-major


def _take(xp: np.ndarray, n: np.ndarray, coords: tuple[np.ndarray, ...]) -> np.ndarray:
    """xp[n_i, :, coords_i] for every i: (M, S)."""
    return np.moveaxis(xp, 1, -1)[(n, *coords)]


@dataclass(frozen=True)
class Tap:
    """A layer whose input statistics are wanted: ``channel_axis`` 1 (Conv, with its ``window``),
    -1 or -2 (Gemm / MatMul rows, or columns for W X)."""

    layer: str
    tensor: str
    channel_axis: int
    window: Window | None = None


MAX_FULL = 4608  # patch widths (S x taps) up to this keep the full covariance (85 MB in float32)
POSITIONS = 64  # patches drawn per sample and conv (all of them on smaller maps)
TAP_BYTES = 256 << 20  # tapped tensors held from one onnxruntime run: larger batches are run in parts


@dataclass
class Moments:
    """Running sums over a layer's input vectors (patches), taken about ``shift`` (the first
    rows' mean) so that float32 sums do not cancel: sum of (x - c) in float64 and the upper
    triangle of sum of (x - c)(x - c)^T in float32, summed in place by BLAS syrk."""

    outer: np.ndarray  # (d, d) float32, Fortran order (syrk's own layout: no copy per batch)
    total: np.ndarray  # (d,) float64
    channels: int
    taps: int = 1
    count: int = 0
    shift: np.ndarray | None = None  # (d,) float32
    done: PatchStats | None = None

    @classmethod
    def empty(cls, channels: int, taps: int) -> Moments:
        d = channels * taps if channels * taps <= MAX_FULL or taps == 1 else channels
        return cls(np.zeros((d, d), dtype=np.float32, order="F"), np.zeros(d), channels, taps)

    def add(self, rows: np.ndarray) -> None:
        """Add (M, S * taps) patch rows (or (M, S) channel rows when the patches are too wide)."""
        d = self.outer.shape[0]
        if rows.shape[1] != d:
            if rows.shape[1] != self.channels * self.taps:
                raise WncError(
                    f"a calibration batch gave {rows.shape[1]} features where an earlier one gave {d}",
                    "give inputs of one size",
                )
            rows = np.moveaxis(rows.reshape(len(rows), self.channels, self.taps), 1, 2).reshape(-1, self.channels)
            self.count += len(rows) // self.taps
        else:
            self.count += len(rows)
        if not len(rows):
            return
        if self.shift is None:
            self.shift = np.asarray(rows.mean(axis=0, dtype=np.float64), dtype=np.float32)
        r = np.subtract(rows, self.shift, dtype=np.float32)
        out = ssyrk(1.0, r.T, beta=1.0, c=self.outer, overwrite_c=1)  # r^T r: half a matmul, in place
        if out is not self.outer:  # scipy copies a c it cannot overwrite; keep whichever holds the sum
            self.outer = out
        self.total += r.sum(axis=0, dtype=np.float64)

    @property
    def full(self) -> bool:
        return self.outer.shape[0] == self.channels * self.taps

    @property
    def vectors(self) -> int:
        """Sample vectors behind the channel statistics (each patch holds ``taps`` of them)."""
        return self.count * self.taps

    def stats(self) -> PatchStats:
        """Mean and covariance (float32); the full patch covariance only where the patches
        outnumber its width. Consumes the sums (memory): a second call returns the first's."""
        if self.done is not None:
            return self.done
        n = max(self.count if self.full else self.vectors, 1)  # rows summed: patches, or channel vectors
        cov = self.outer
        cov += np.triu(cov, 1).T  # the lower triangle from syrk's upper one, in place
        cov /= n
        about = self.total / n  # the mean of x - c
        mean = about + (self.shift if self.shift is not None else 0.0)
        cov -= np.outer(about, about).astype(np.float32)
        self.outer = np.zeros((0, 0), dtype=np.float32)
        if self.full and self.taps > 1 and self.count < cov.shape[0]:  # too few patches: channels only
            s, p = self.channels, self.taps
            second = np.einsum("apbp->ab", cov.reshape(s, p, s, p), dtype=np.float64) / p
            m = mean.reshape(s, p)
            second += m @ m.T / p  # E[x x^T] pooled over the taps
            mean = m.mean(axis=1)
            cov = (second - np.outer(mean, mean)).astype(np.float32)
        self.done = PatchStats(cov, mean, self.channels, self.taps, self.count)
        return self.done


@dataclass
class Reference:
    """The first samples of the calibration data and the model's outputs on them, kept while
    the statistics are gathered: the compressed model's error is then measured without
    running the original again, and on data an iterator gave once."""

    names: list[str]  # the model's outputs
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    outputs: list[list[np.ndarray]] = field(default_factory=list)  # per batch, in ``names`` order
    samples: int = 0

    def keep(self, part: Feeds, values: Mapping[str, np.ndarray], room: int) -> None:
        """Copy up to ``room`` samples of a batch (copies, so the batch itself can go)."""
        n = min(room, len(next(iter(part.values())))) if part else 0
        if n <= 0:
            return
        self.feeds.append({k: np.array(v[:n]) for k, v in part.items()})
        self.outputs.append([np.array(values[name][:n]) for name in self.names])
        self.samples += n


@dataclass
class Reuse:
    """Calibration data whose statistics are gathered on the first run and reused by later ones
    (``--max-error`` compresses the model many times over), with the first ``keep`` samples
    and the original's outputs on them (``reference``) for measuring the result, and each
    layer's fitted factors per method and ranks (``fits``: a later build at the same ranks
    does not fit again)."""

    source: CalibrationSource
    stats: dict[str, PatchStats] | None = None
    notes: list[str] = field(default_factory=list)
    keep: int = 0
    reference: Reference | None = None
    fits: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # (layer, method, R3, R4) -> the pass's Factors

    def __str__(self) -> str:
        return source_name(self.source)


@dataclass
class Calibration:
    """The input statistics of every tapped layer and how much data they came from."""

    layers: dict[str, Moments] = field(default_factory=dict)
    reference: Reference | None = None
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0

    def needed(self) -> dict[str, int]:
        """Layers whose channel covariance has fewer sample vectors than channels (rank-deficient):
        layer -> how many vectors it needs."""
        return {name: m.channels + 1 for name, m in self.layers.items() if m.vectors <= m.channels}


def gather(
    model: onnx.ModelProto,
    source: CalibrationSource,
    taps: list[Tap],
    *,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    keep: int = 0,
) -> Calibration:
    """Run ``model`` on the calibration data and sum each tap's moments; keep the first
    ``keep`` samples and the model's outputs on them (``Calibration.reference``)."""
    points = list(measured(model).values())  # the outputs, or the floats post-processing reads
    probe = with_outputs(model, sorted({tap.tensor for tap in taps}) + points)
    sess = cpu_session(probe, threads, "calibration")
    del probe  # onnxruntime holds its own copy of the weights
    names = [o.name for o in sess.get_outputs()]
    cal = Calibration(reference=Reference(points) if keep > 0 else None)
    t0 = time.perf_counter()
    fixed = any(dims and dims[0] is not None for dims, _ in input_signature(model).values())
    chunk = 0  # samples per onnxruntime run: bounded by TAP_BYTES of tapped tensors, learned from the first
    for feeds in batches_of(source, model, mean=mean, std=std):
        n = len(next(iter(feeds.values()))) if feeds else 0
        step = n if fixed or not chunk else max(1, min(chunk, n))
        for lo in range(0, max(n, 1), max(step, 1)):
            part = {k: v[lo : lo + step] for k, v in feeds.items()} if step < n else feeds
            values = {**part, **dict(zip(names, sess.run(None, part), strict=True))}
            if not chunk and n:
                per_sample = sum(np.asarray(values[t.tensor]).nbytes for t in taps) / max(
                    len(part[next(iter(part))]), 1
                )
                chunk = max(1, int(TAP_BYTES // max(per_sample, 1)))
            if cal.reference is not None and cal.reference.samples < keep:
                cal.reference.keep(part, values, keep - cal.reference.samples)
            for i, tap in enumerate(taps):
                x = values[tap.tensor]
                if tap.window is not None:
                    rng = np.random.default_rng([cal.batches, lo, i])
                    rows = tap.window.patches(np.asarray(x), POSITIONS * len(x), rng)
                    channels, width = x.shape[1], tap.window.taps
                else:
                    v = np.moveaxis(np.asarray(x), tap.channel_axis, -1)
                    rows, channels, width = v.reshape(-1, v.shape[-1]), v.shape[-1], 1
                cal.layers.setdefault(tap.layer, Moments.empty(channels, width)).add(rows)
            del values
        cal.samples += n
        cal.batches += 1
        if progress is not None:
            progress(cal.batches, cal.samples)
    cal.seconds = time.perf_counter() - t0
    if cal.samples == 0:
        raise WncError("the calibration data hold no samples", "give at least a few hundred model inputs")
    return cal
