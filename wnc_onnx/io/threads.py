"""How many threads BLAS (numpy, scipy) and onnxruntime get.

OpenBLAS threads spin while they wait for each other. With more of them than free cores
(other processes busy), each of the many small BLAS calls of the pass waits for a thread
that is not running: a recognizer that compresses in 5 s on an idle 2-core machine took
four minutes at load 12. So the default is the number of cores that are free now, not the
number that exist; ``--threads N`` sets it, and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS,
when set, cap it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

_SAMPLE_SECONDS = 0.05


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota
    (containers often see every host core but may use only a few), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values)


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none (Windows: no os.getloadavg)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def free_cores(cores: int | None = None) -> float:
    """Cores not used by other processes right now (sampled over 50 ms); ``cores`` if unknown.

    The machine-wide figure is scaled to this process's cores (its affinity mask)."""
    cores = usable_cores() if cores is None else cores
    first = _cpu_times()
    if first is None:
        load = load_average()
        return float(cores) if load is None else max(0.0, cores - load)
    time.sleep(_SAMPLE_SECONDS)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return float(cores)
    idle_fraction = (second[0] - first[0]) / (second[1] - first[1])
    return idle_fraction * cores


def _env_cap() -> int | None:
    """The smallest positive count set in the usual thread variables, if any."""
    values = [os.environ.get(name, "") for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")]
    counts = [int(v) for v in values if v.isdigit() and int(v) > 0]
    return min(counts) if counts else None


_CACHE_SECONDS = 10.0
_cached: tuple[float, int, str] | None = None


def resolve(threads: int = 0) -> tuple[int, str]:
    """(threads to use, how it was chosen) for a requested count (0 = automatic).

    The automatic choice samples the machine for 50 ms; it is kept for 10 s, so a
    pipeline that compresses many small models does not pay that each time."""
    global _cached
    if threads > 0:
        return threads, "--threads"
    now = time.monotonic()
    if _cached is not None and now - _cached[0] < _CACHE_SECONDS:
        return _cached[1], _cached[2]
    n, why = _automatic()
    _cached = (now, n, why)
    return n, why


def _automatic() -> tuple[int, str]:
    cores = usable_cores()
    free = free_cores(cores)
    n = max(1, min(cores, int(free + 0.5)))
    why = f"{cores} cores, {free:.1f} free"
    cap = _env_cap()
    if cap is not None and cap < n:
        n, why = cap, f"{why}, capped by the environment's thread variable"
    return n, why


@contextlib.contextmanager
def limited(threads: int) -> Iterator[None]:
    """BLAS thread pools (numpy's and scipy's OpenBLAS, MKL, OpenMP) limited to ``threads``.

    The limits are process-wide: compress() calls running in several threads of one
    process share them (the last one to enter sets them until it leaves)."""
    # Load every BLAS first: a library loaded inside the limits would keep them afterwards.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the dependency is declared; a broken install should not stop the run
        log.debug("threadpoolctl is not importable: BLAS threads not limited")
        yield
        return
    with threadpool_limits(limits=threads):
        yield
