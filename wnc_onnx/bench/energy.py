"""Energy counters read from the hardware: Linux powercap (Intel/AMD RAPL), NVIDIA NVML.

Only a counter the hardware keeps is reported; where none is readable the reason is
given instead, never an estimate."""

from __future__ import annotations

import glob
import os
from typing import Any

POWERCAP = "/sys/class/powercap"


class EnergyMeter:
    """``read()``: joules since some fixed point; ``None`` with ``why`` when unavailable."""

    def __init__(self, provider: str = "CPUExecutionProvider", powercap: str = POWERCAP) -> None:
        self.source: str | None = None
        self.why = ""
        self._read: Any = None
        gpu = provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        found = (_nvml() if gpu else None) or _rapl(powercap)
        if isinstance(found, str):
            self.why = found
        elif found is not None:
            self.source, self._read = found
        else:
            self.why = "no readable energy counter"

    @property
    def available(self) -> bool:
        return self._read is not None

    def read(self) -> float | None:
        return None if self._read is None else float(self._read())


def _rapl(root: str = POWERCAP) -> tuple[str, Any] | str:
    zones = [z for z in sorted(glob.glob(os.path.join(root, "*rapl:*"))) if os.path.basename(z).count(":") == 1]
    if not zones:
        return "no RAPL counter on this machine (/sys/class/powercap has no rapl zone)"
    files = [os.path.join(z, "energy_uj") for z in zones]
    if not all(os.access(f, os.R_OK) for f in files):
        return "RAPL counters exist but are not readable (root only on this kernel: sudo, or chmod energy_uj)"
    ranges = []
    for z in zones:
        try:
            with open(os.path.join(z, "max_energy_range_uj")) as fh:
                ranges.append(int(fh.read()))
        except OSError:
            ranges.append(0)
    state = {"last": [0] * len(files), "total": 0}

    def read() -> float:
        for i, f in enumerate(files):
            with open(f) as fh:
                now = int(fh.read())
            last = state["last"][i]  # type: ignore[index]
            step = now - last if now >= last else now + ranges[i] - last  # the counter wraps around
            state["last"][i] = now  # type: ignore[index]
            state["total"] += step  # type: ignore[operator]
        return state["total"] / 1e6  # type: ignore[operator]

    read()
    state["total"] = 0
    names = []
    for z in zones:
        try:
            with open(os.path.join(z, "name")) as fh:
                names.append(fh.read().strip())
        except OSError:
            names.append(os.path.basename(z))
    return f"RAPL ({', '.join(names)}: whole package, all processes)", read


def _nvml() -> tuple[str, Any] | str | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None  # fall back to RAPL; the GPU's own energy needs nvidia-ml-py
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:
        return f"NVML energy counter not readable ({exc})"
    return "NVML (GPU 0 total energy)", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
