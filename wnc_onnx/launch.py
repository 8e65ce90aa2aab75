"""Process start of the command line: large models run with transparent huge pages.

On Linux, glibc's malloc asks for transparent huge pages only when told to
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc >= 2.35) where the kernel's policy is
``madvise``, the common default. A run on a large model allocates gigabytes (the parsed
model, Gram matrices, the serialized output), and with 4 KiB pages a good part of its
wall time goes to page faults: VGG-16's 13 convs took 5.2-9.2 s end to end, 4.9-5.9 s
with huge pages (see docs/measurements.md). The tunable is read when a process starts, so
for an input of 64 MB or more the command line starts itself once more with it set,
before importing anything heavy. ``WNC_ONNX_HUGEPAGES=0`` turns this off; results are
the same either way.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
MIN_INPUT_BYTES = 64 << 20
_THP_POLICY = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_supports_it() -> bool:
    name, version = platform.libc_ver()
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return False
    return name == "glibc" and (major, minor) >= (2, 35)


def _kernel_policy() -> str | None:
    try:
        with open(_THP_POLICY, encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _largest_input(argv: list[str]) -> int:
    largest = 0
    for arg in argv:
        if arg.startswith("-"):
            continue
        try:
            size = os.stat(arg).st_size
        except (OSError, ValueError):
            continue
        largest = max(largest, size)
    return largest


def should_reexec(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> bool:
    """Whether a fresh start with huge pages would help this command line."""
    if sys.platform != "linux" or environ.get("WNC_ONNX_HUGEPAGES", "1") == "0":
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False  # already set (by us or by the user)
    if _kernel_policy() != "madvise" or not _glibc_supports_it():
        return False
    return _largest_input(argv) >= MIN_INPUT_BYTES


def reexec_with_hugepages() -> None:
    """Replace this process by the same command line with huge pages, where that helps."""
    original = getattr(sys, "orig_argv", None)
    if not original or not should_reexec(sys.argv[1:], os.environ):
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
    try:
        os.execve(sys.executable, original, env)
    except OSError:  # could not start it again: go on as we are
        return


def main() -> int:
    reexec_with_hugepages()
    from wnc_onnx.cli import main as cli_main

    return cli_main()
