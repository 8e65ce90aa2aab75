"""Loading models with clear errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from wnc_onnx.errors import WncError
from wnc_onnx.graph import skeleton

# 4-bit and similar packed types: byte count is not numel * itemsize.
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}

_REEXPORT = "re-export the model from its framework (torch.onnx.export, tf2onnx, paddle2onnx)"


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and validate an ONNX model; every failure is a WncError naming the fix."""
    p = Path(path)
    if not p.exists():
        raise WncError(f"input model not found: {p}", "check the path")
    if not p.is_file():
        raise WncError(f"input model is not a file: {p}", "pass the path of a .onnx file")
    if p.stat().st_size == 0:
        raise WncError(f"input model is empty (0 bytes): {p}", _REEXPORT)
    try:
        model = onnx.load(str(p), load_external_data=True)
    except DecodeError as exc:
        raise WncError(f"{p} is not an ONNX model (protobuf parse failed: {exc})", _REEXPORT) from None
    except FileNotFoundError as exc:
        raise WncError(
            f"external data of {p} is missing: {exc.filename or exc}",
            "keep the .data file(s) beside the model, as exported",
        ) from None
    except Exception as exc:  # onnx raises several types for damaged files
        raise WncError(f"cannot read {p} as ONNX: {_one_line(exc)}", _REEXPORT) from None
    check_input(model, str(p))
    return model


def check_input(model: onnx.ModelProto, label: str = "input model") -> None:
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise WncError(f"{label} has no graph nodes (empty or truncated file)", _REEXPORT)
    if len(model.opset_import) == 0:
        raise WncError(f"{label} declares no opset (truncated or not an ONNX model)", _REEXPORT)
    check_initializer_sizes(model, label)
    try:
        onnx.checker.check_model(skeleton(model))
    except Exception as exc:
        raise WncError(f"{label} fails the ONNX checker: {_one_line(exc)}", _REEXPORT) from None


def check_initializer_sizes(model: onnx.ModelProto, label: str) -> None:
    """Raw weight bytes must match the declared shape (the checker runs on a skeleton)."""
    for t in model.graph.initializer:
        if not t.HasField("raw_data") or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0
        want = int(np.prod(t.dims, dtype=np.int64)) * itemsize
        if itemsize and len(t.raw_data) != want and t.data_type not in _PACKED:
            raise WncError(
                f"{label}: initializer '{t.name}' holds {len(t.raw_data)} bytes, its shape {list(t.dims)} needs {want}",
                _REEXPORT,
            )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def check_output_path(inp: str | os.PathLike[str] | None, out: str | os.PathLike[str]) -> Path:
    """The output must not be the input and its directory must be writable."""
    o = Path(out)
    if inp is not None:
        i = Path(inp)
        same = os.path.realpath(i) == os.path.realpath(o)
        if not same and o.exists() and i.exists():
            same = os.path.samefile(i, o)
        if same:
            raise WncError(f"output path {o} is the input model", "write the result to a new file")
    parent = o.parent if str(o.parent) else Path(".")
    if not parent.is_dir():
        raise WncError(f"output directory {parent} does not exist", "create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise WncError(f"output directory {parent} is not writable", "choose a writable location")
    if o.is_dir():
        raise WncError(f"output path {o} is a directory", "give a file name such as model.small.onnx")
    return o


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> int:
    """Write ``model`` atomically; returns the file size in bytes."""
    with atomic_path(path) as tmp:
        try:
            onnx.save_model(model, str(tmp))
        except ValueError as exc:  # protobuf refuses messages above 2 GB
            raise WncError(
                f"cannot serialize the output model: {_one_line(exc)}",
                "keep its weights as external data (support is tracked in issue 3)",
            ) from None
    return Path(path).stat().st_size


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
