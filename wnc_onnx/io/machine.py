"""Which machine timings come from: the CPU model, the instruction sets that decide kernel
speed, and the GPU's name for GPU providers (the latency cache is keyed by them, and
``bench`` reports them)."""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess

# The instruction sets onnxruntime's CPU kernels dispatch on (x86: AVX2 / AVX-512 / VNNI /
# AMX; ARM: NEON dot product, int8 matrix multiply, SVE), as /proc/cpuinfo spells them.
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)
GPU_PROVIDERS = (
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
)


@functools.cache
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    name: str | None = None
    flags: frozenset[str] = frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if name is None and key in ("model name", "hardware", "cpu model"):
                    name = value.strip()
                elif not flags and key in ("flags", "features"):
                    flags = frozenset(value.split())
    except OSError:
        pass
    return name, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> list[str]:
    """The instruction sets from ``ISA_FLAGS`` this CPU has (empty where /proc/cpuinfo is missing)."""
    flags = _cpuinfo()[1]
    return [f for f in ISA_FLAGS if f in flags]


@functools.cache
def gpu_name() -> str:
    """The first GPU's name from nvidia-smi (or rocm-smi), else ``unknown``."""
    for cmd in (
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        ["rocm-smi", "--showproductname", "--csv"],
    ):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        lines = [ln.strip() for ln in out.splitlines() if ln.strip() and "device" not in ln.lower()]
        if lines:
            return lines[0]
    return "unknown"


def target_machine(provider: str) -> dict[str, object]:
    """What a timing on ``provider`` depends on besides the software: the CPU (model and
    instruction sets), and for a GPU provider the GPU's name."""
    out: dict[str, object] = {"cpu": cpu_model(), "isa": cpu_isa(), "arch": platform.machine()}
    if provider in GPU_PROVIDERS:
        out["gpu"] = gpu_name()
    return out
