"""Weights kept as ONNX external data: read one tensor at a time, write by streaming.

A model loaded with its weights left on disk costs kilobytes of memory; the pass reads
a layer's weight when it factors that layer (``read_array``), parks the new factors in
a scratch file (``spill``) and ``write_data_file`` copies every external tensor into the
output's data file in chunks. Peak memory then follows the largest layer.

In memory, external tensors point at absolute paths (``resolve``); on disk the
output's data file sits beside the model and is named relatively, as ONNX requires.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from wnc_onnx.analyze.walk import all_graphs
from wnc_onnx.errors import REEXPORT, WncError

log = logging.getLogger(__name__)

ALIGN = 4096  # offsets of tensors in a data file: page-aligned, so runtimes can mmap them
MIN_EXTERNAL_BYTES = 1024  # smaller tensors stay inline (as onnx.save does)
INLINE_LIMIT = (2 << 30) - (64 << 20)  # protobuf refuses messages of 2 GiB; keep a margin
_CHUNK = 16 << 20


def _point(t: onnx.TensorProto, location: str, offset: int | None, length: int | None) -> None:
    """Mark ``t`` external at ``location`` (onnx's own helper insists on inline bytes)."""
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant-node tensors of every graph, subgraphs included."""

    for graph in all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        yield a.t


def is_external(t: onnx.TensorProto) -> bool:
    return uses_external_data(t)


def has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in all_tensors(model))


def stored_bytes(path: str | os.PathLike[str], model: onnx.ModelProto) -> int:
    """What a model takes on disk: its file plus the bytes of its tensors in external data."""
    return Path(path).stat().st_size + sum(nbytes(t) for t in all_tensors(model) if is_external(t))


def nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, stored inline or not, without reading them (in Python,
    reading ``raw_data`` copies it). Sub-byte types count a byte per element, unknown
    types eight: an upper bound, which is what the size thresholds need."""
    if is_external(t):
        length = ExternalDataInfo(t).length
        if length is not None:
            return int(length)
    declared = nbytes_declared(t)
    if declared is not None:
        return declared
    try:
        itemsize = int(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
    except Exception:
        itemsize = 8
    return int(np.prod(t.dims, dtype=np.int64)) * max(itemsize, 1)


def sources(model: onnx.ModelProto) -> set[Path]:
    """The files that the model's external tensors are read from (absolute)."""
    return {Path(os.path.abspath(_where(t)[0])) for t in all_tensors(model) if is_external(t)}


def model_bytes(model: onnx.ModelProto) -> int:
    return sum(nbytes(t) for t in all_tensors(model))


def _where(t: onnx.TensorProto) -> tuple[Path, int, int | None]:
    info = ExternalDataInfo(t)
    return Path(info.location), int(info.offset or 0), info.length


def resolve(model: onnx.ModelProto, base_dir: str | os.PathLike[str], label: str) -> None:
    """Point every external tensor at an absolute path and check that its bytes exist.

    Raises WncError naming the missing or short file."""
    base = Path(base_dir)
    sizes: dict[Path, int] = {}
    for t in all_tensors(model):
        if not is_external(t):
            continue
        try:
            loc, offset, length = _where(t)
        except ValueError as exc:
            raise WncError(f"{label}: external data entry of '{t.name}' is invalid: {exc}", REEXPORT) from None
        if not str(loc):
            raise WncError(f"{label}: tensor '{t.name}' is marked external but names no file", REEXPORT)
        path = loc if loc.is_absolute() else (base / loc)
        path = Path(os.path.abspath(path))
        if path not in sizes:
            if not path.is_file():
                raise WncError(
                    f"{label}: external data file {loc} of tensor '{t.name}' is missing (looked in {path.parent})",
                    "keep the .data file(s) beside the model, as exported",
                )
            sizes[path] = path.stat().st_size
        want = nbytes_declared(t)
        if length is None:
            length = want
        if want is not None and length != want:
            raise WncError(
                f"{label}: external tensor '{t.name}' has {length} bytes, its shape {list(t.dims)} needs {want}",
                REEXPORT,
            )
        if length is not None and offset + length > sizes[path]:
            raise WncError(
                f"{label}: external data file {loc} ends at byte {sizes[path]}, tensor '{t.name}' needs "
                f"bytes {offset}..{offset + length} (truncated copy?)",
                "copy the .data file again, whole",
            )
        _point(t, str(path), offset or None, length)


def nbytes_declared(t: onnx.TensorProto) -> int | None:
    """Bytes the dims and dtype call for; None for packed or unknown types."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    except Exception:
        return None
    if dtype.itemsize == 0 or t.data_type in _PACKED:
        return None
    return int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize


_PACKED = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, n)
}


def read_bytes(t: onnx.TensorProto) -> bytes:
    path, offset, length = _where(t)
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(-1 if length is None else length)


def read_array(t: onnx.TensorProto) -> np.ndarray:
    """The value of one tensor; external data is read from disk (only this tensor)."""
    if not is_external(t):
        return numpy_helper.to_array(t)
    path, offset, length = _where(t)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    native = dtype.kind in "fiub" and t.data_type not in _PACKED and dtype.itemsize in (1, 2, 4, 8)
    if native and t.data_type != onnx.TensorProto.BFLOAT16:
        count = int(np.prod(t.dims, dtype=np.int64))
        arr = np.fromfile(path, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        return arr.reshape(tuple(t.dims)).astype(dtype, copy=False)
    inline = onnx.TensorProto()
    inline.CopyFrom(t)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    inline.raw_data = read_bytes(t)
    return numpy_helper.to_array(inline)


# -- scratch space for new weights of models whose weights live on disk -------------------
class _Scratch:
    """One append-only file per process in a private temporary folder, removed at exit."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fh: BinaryIO | None = None

    def append(self, data: bytes) -> tuple[Path, int]:
        if self._fh is None or self.path is None:
            folder = Path(tempfile.mkdtemp(prefix="wnc-onnx-"))
            atexit.register(shutil.rmtree, folder, True)
            self.path = folder / "spill.data"
            self._fh = open(self.path, "ab")  # noqa: SIM115 - lives for the process
        self._fh.seek(0, os.SEEK_END)
        offset = self._fh.tell()
        self._fh.write(data)
        self._fh.flush()
        return self.path, offset


_SCRATCH = _Scratch()


def spill(t: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of a new tensor whose bytes live in the scratch file (external until written).

    A fresh message, so the bytes' memory goes with the original (protobuf keeps a
    cleared field's memory in the message's arena)."""
    if is_external(t) or not t.HasField("raw_data") or nbytes(t) < MIN_EXTERNAL_BYTES:
        return t
    data = t.raw_data
    path, offset = _SCRATCH.append(data)
    out = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string)
    _point(out, str(path), offset or None, len(data))
    return out


def load_inline(model: onnx.ModelProto) -> None:
    """Read every external tensor into the model (in place)."""
    for t in all_tensors(model):
        if is_external(t):
            data = read_bytes(t)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = data


def _copy_range(src: Path, offset: int, length: int, dst: BinaryIO) -> None:
    with open(src, "rb") as fh:
        fh.seek(offset)
        left = length
        while left > 0:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise WncError(f"external data file {src} ended early", "copy the .data file again, whole")
            dst.write(chunk)
            left -= len(chunk)


def write_data_file(model: onnx.ModelProto, data_path: Path, location: str) -> None:
    """Stream every large or external tensor into ``data_path``; the model then names
    ``location`` (relative, as written to disk). Inline bytes are dropped from memory."""
    with open(data_path, "wb") as out:
        for t in all_tensors(model):
            if not is_external(t) and (not t.HasField("raw_data") or nbytes(t) < MIN_EXTERNAL_BYTES):
                continue
            pad = (-out.tell()) % ALIGN
            if pad:
                out.write(b"\0" * pad)
            offset = out.tell()
            if is_external(t):
                src, src_off, length = _where(t)
                length = nbytes(t) if length is None else length
                _copy_range(src, src_off, length, out)
            else:
                data = t.raw_data
                length = len(data)
                out.write(data)
                t.ClearField("raw_data")
            _point(t, location, offset or None, length)


def relocate(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename the data file that external tensors point at (relative <-> absolute)."""
    for t in all_tensors(model):
        if is_external(t):
            info = ExternalDataInfo(t)
            if info.location == old:
                _point(t, new, info.offset, info.length)
