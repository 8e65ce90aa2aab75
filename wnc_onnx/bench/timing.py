"""Interleaved timing: every round runs each candidate in turn, so drift hits all alike.

Used by ``wnc-onnx bench`` for whole models and by the latency-aware pass for single
layers. Pure Python over callables: tests drive it with stubs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    """One candidate's run times (seconds), grouped by round."""

    rounds: list[list[float]] = field(default_factory=list)
    energy_j: float | None = None  # joules over all timed runs, where a counter was read
    runs: int = 0

    @property
    def samples(self) -> np.ndarray:
        return np.array([t for r in self.rounds for t in r], dtype=np.float64)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples, 90))

    @property
    def min(self) -> float:
        return float(self.samples.min())

    @property
    def round_medians(self) -> list[float]:
        return [float(np.median(r)) for r in self.rounds if r]

    @property
    def spread(self) -> float:
        """(max - min) of the round medians over their median: how noisy the run was."""
        m = self.round_medians
        return (max(m) - min(m)) / float(np.median(m)) if m else 0.0


def ratio_range(base: Timing, other: Timing) -> tuple[float, float]:
    """Lowest and highest per-round speed-up of ``other`` over ``base``."""
    r = [b / o for b, o in zip(base.round_medians, other.round_medians, strict=False) if o > 0]
    return (min(r), max(r)) if r else (math.nan, math.nan)


def time_interleaved(
    runners: Sequence[Callable[[], object]],
    rounds: int = 10,
    warmup: int = 3,
    min_round_seconds: float = 0.1,
    max_iterations: int = 1000,
    settle: int = 1,
    energy: Callable[[], float | None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[int, list[Timing]], None] | None = None,
) -> list[Timing]:
    """Time each runner: ``warmup`` untimed calls, then ``rounds`` rounds in which every
    runner runs ``k`` times back to back (``k`` sized from the warm-up so a runner's share
    of a round lasts about ``min_round_seconds``). The order rotates from round to round.

    ``settle`` untimed runs open each runner's share of a round: after switching, the
    previous session's worker threads may still spin on the cores while this one's wake
    up; a deployed model runs alone, so that cost is not its own."""
    n = len(runners)
    iterations = []
    for run in runners:
        for _ in range(max(0, warmup - 1)):
            run()
        t0 = clock()
        run()
        once = max(clock() - t0, 1e-7)
        iterations.append(int(min(max_iterations, max(1, math.ceil(min_round_seconds / once)))))
    out = [Timing() for _ in range(n)]
    for r in range(rounds):
        for j in range(n):
            i = (j + r) % n
            run, times = runners[i], []
            for _ in range(settle):
                run()
            e0 = energy() if energy else None
            for _ in range(iterations[i]):
                t0 = clock()
                run()
                times.append(clock() - t0)
            e1 = energy() if energy else None
            if e0 is not None and e1 is not None:
                out[i].energy_j = (out[i].energy_j or 0.0) + (e1 - e0)
            out[i].rounds.append(times)
            out[i].runs += len(times)
        if progress:
            progress(r + 1, out)
    return out


BUSY_LOAD = 0.5  # 1-minute load average above which other work shares the cores: timings get noisy
