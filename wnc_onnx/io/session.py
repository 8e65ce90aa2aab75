"""onnxruntime sessions on a chosen execution provider, thread count and session options."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from wnc_onnx.errors import RUNTIME_HINT, WncError
from wnc_onnx.io import external_data

# Short names users type -> onnxruntime's provider names
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}


def ort(purpose: str = "measuring") -> Any:
    """The onnxruntime module; one WncError naming the extra to install when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise WncError(f"{purpose} needs onnxruntime, which is not installed", RUNTIME_HINT) from None
    return onnxruntime


def resolve_provider(name: str) -> str:
    """'cpu', 'CUDA', 'CUDAExecutionProvider' -> the installed provider's full name, or one clear error."""
    rt = ort()
    available = [p for p in rt.get_available_providers() if p != "AzureExecutionProvider"]
    full = PROVIDER_ALIASES.get(name.lower(), name)
    if not full.endswith("ExecutionProvider"):
        full = next((p for p in available if p.lower() == f"{name.lower()}executionprovider"), full)
    if full not in available:
        raise WncError(
            f"execution provider '{name}' is not available in this onnxruntime {rt.__version__}",
            f"installed: {', '.join(available)}; install the onnxruntime package that carries it "
            "(e.g. onnxruntime-gpu for CUDA)",
        )
    return str(full)


def parse_session_options(specs: Sequence[str]) -> dict[str, str]:
    """``["session.intra_op.allow_spinning=0"]`` -> {key: value} (onnxruntime config entries)."""
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise WncError(
                f"--session-option {spec!r} is not KEY=VALUE",
                "write e.g. --session-option session.intra_op.allow_spinning=0",
            )
        out[key.strip()] = value.strip()
    return out


def default_threads() -> int:
    """The cores this process may run on (onnxruntime's own default counts physical cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session(
    model: onnx.ModelProto | str | os.PathLike[str] | bytes,
    provider: str = "CPUExecutionProvider",
    threads: int = 0,
    options: Mapping[str, str] | None = None,
    graph_opt: str = "all",
    profile_prefix: str | None = None,
    purpose: str = "measuring",
) -> Any:
    """An InferenceSession; ``threads`` 0: onnxruntime's default; ``options``: config entries.

    A path lets onnxruntime find external data beside the model; a ModelProto whose weights
    are in external data (absolute paths), or that is too large to serialize in one piece
    (over protobuf's 2 GiB), is written out with external data first."""
    rt = ort(purpose)
    so = rt.SessionOptions()
    so.log_severity_level = 4  # failures reach the user as one line, not as onnxruntime's log
    if threads > 0:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = {
        "all": rt.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": rt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": rt.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": rt.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[graph_opt]
    for key, value in (options or {}).items():
        try:
            so.add_session_config_entry(key, value)
        except Exception as exc:
            raise WncError(f"onnxruntime refuses session option {key}={value}: {exc}", "check the key") from None
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    if isinstance(model, onnx.ModelProto) and (
        external_data.has_external(model) or external_data.model_bytes(model) > external_data.INLINE_LIMIT
    ):
        with tempfile.TemporaryDirectory(prefix="wnc-onnx-session-") as folder:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            path = Path(folder) / "model.onnx"
            external_data.write_data_file(copy, Path(folder) / "model.onnx.data", "model.onnx.data")
            onnx.save_model(copy, str(path))
            return rt.InferenceSession(str(path), so, providers=providers)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if not isinstance(source, bytes):
        source = str(source)
    return rt.InferenceSession(source, so, providers=providers)


def cpu_session(
    model: onnx.ModelProto | str | os.PathLike[str], threads: int = 0, purpose: str = "checking outputs"
) -> Any:
    """A CPU session (``purpose`` names the task in the error when onnxruntime is missing): the one
    builder that verify, calibration, the --max-error runs and fine-tuning's scoring share."""
    return session(model, "CPUExecutionProvider", threads, purpose=purpose)
