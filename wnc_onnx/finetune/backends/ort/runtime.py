"""Which ONNX Runtime is installed: fine-tuning needs the training build, alone.

onnxruntime-training-cpu (last release 1.19.2, deprecated upstream) installs the same
``onnxruntime`` module as the plain runtime; with both installed, whichever was
installed last silently wins. So the training flavour lives in its own environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import metadata

from wnc_onnx.errors import WncError, one_line

TRAINING_DISTS = ("onnxruntime-training-cpu", "onnxruntime-training")
PLAIN_DISTS = ("onnxruntime", "onnxruntime-gpu")
INSTALL = (
    "python3.11 -m venv .venv-train && .venv-train/bin/pip install torch==2.13.0 "
    "&& .venv-train/bin/pip install -e '.[train]' (see README, 'Install')"
)


def installed() -> dict[str, str]:
    """ONNX Runtime distributions in this environment: name -> version."""
    found = {}
    for name in (*PLAIN_DISTS, *TRAINING_DISTS):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def require_training() -> str:
    """The training build's version; a WncError naming the fix when it is absent or mixed."""
    dists = installed()
    training = [d for d in TRAINING_DISTS if d in dists]
    plain = [d for d in PLAIN_DISTS if d in dists]
    if training and plain:
        both = ", ".join(f"{d} {dists[d]}" for d in (*plain, *training))
        raise WncError(
            f"mixed ONNX Runtime install: {both} share the 'onnxruntime' module in this environment",
            f"keep them apart: compress with the plain runtime, fine-tune in its own environment: {INSTALL}",
        )
    if not training:
        import importlib.util

        other = "; or, with torch installed here: --backend torch" if importlib.util.find_spec("torch") else ""
        raise WncError("fine-tuning needs onnxruntime-training-cpu 1.19.2, which is not installed", INSTALL + other)
    try:
        import onnxruntime.training.api  # noqa: F401
    except Exception as exc:  # torch missing, or a broken build
        raise WncError(
            f"onnxruntime.training cannot be imported ({one_line(exc, 200)})",
            "it needs torch importable: pip install torch==2.13.0 (CPU build) in the training environment",
        ) from None
    return dists[training[0]]


@contextlib.contextmanager
def runtime_errors(problem: str, fix: str) -> Iterator[None]:
    """What onnxruntime raises inside the block, as one WncError ``<problem>: <its message>``.

    Its bindings raise plain ``RuntimeError`` (a bad shape, an op without a gradient) as
    well as their own types; wrap only onnxruntime calls, so nothing else is caught."""
    try:
        yield
    except WncError:
        raise
    except Exception as exc:
        if not (isinstance(exc, RuntimeError) or type(exc).__module__.startswith("onnxruntime")):
            raise
        raise WncError(f"{problem}: {one_line(exc, 240)}", fix) from None
