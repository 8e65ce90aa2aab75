"""Loading models with clear errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from wnc_onnx.analyze.graph import skeleton
from wnc_onnx.errors import REEXPORT, WncError, one_line
from wnc_onnx.io import external_data, wire


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and validate an ONNX model; every failure is a WncError naming the fix."""
    return load_model_and_source(path)[0]


def load_model_and_source(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, wire.Source | None]:
    """``load_model``, and where the main graph's initializers sit in the file (see
    ``wnc_onnx.io.wire``; None when that could not be read)."""
    p = Path(path)
    if not p.exists():
        raise WncError(f"input model not found: {p}", "check the path")
    if not p.is_file():
        raise WncError(f"input model is not a file: {p}", "pass the path of a .onnx file")
    if p.stat().st_size == 0:
        raise WncError(f"input model is empty (0 bytes): {p}", REEXPORT)
    try:
        # Weights in external data stay on disk: the pass reads one layer at a time.
        model, spans, file_stamp = _parse(p)
    except DecodeError as exc:
        raise WncError(f"{p} is not an ONNX model (protobuf parse failed: {one_line(exc)})", REEXPORT) from None
    except Exception as exc:  # onnx raises several types for damaged files
        raise WncError(f"cannot read {p} as ONNX: {one_line(exc)}", REEXPORT) from None
    if len(model.graph.node) and len(model.opset_import):
        external_data.resolve(model, p.parent, str(p))
    check_input(model, str(p), spans)
    source = None
    if spans is not None:
        source = wire.Source(str(p.resolve()), file_stamp, spans)
    return model, source


def _parse(path: Path) -> tuple[onnx.ModelProto, dict[str, wire.Span] | None, tuple[int, ...]]:
    """The model in ``path``, parsed straight from the file's pages (memory-mapped), and
    the byte ranges of its main graph's initializers (``wnc_onnx.io.wire``), and the stamp of
    the file it parsed (``wire.stamp``, from the same descriptor).

    onnx.load reads the file into a new buffer first: for a large model that is as much
    fresh memory again as the model, and first-touch page faults made up a good part of
    the load time. External data is not loaded (see ``external_data``)."""
    model = onnx.ModelProto()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        file_stamp = wire.stamp(os.fstat(fh.fileno()))
        view = memoryview(mapped)
        try:
            try:
                model.ParseFromString(view)
            except TypeError:  # a protobuf runtime that wants bytes
                model.ParseFromString(bytes(view))
            spans = wire.initializer_spans(view)
        finally:
            view.release()
    if spans is not None:
        for t in model.graph.initializer:
            if t.name in spans:
                spans[t.name] = dataclasses.replace(spans[t.name], dims=tuple(t.dims), data_type=t.data_type)
    return model, spans, file_stamp


def check_input(model: onnx.ModelProto, label: str = "input model", spans: dict[str, wire.Span] | None = None) -> None:
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise WncError(f"{label} has no graph nodes (empty or truncated file)", REEXPORT)
    if len(model.opset_import) == 0:
        raise WncError(f"{label} declares no opset (truncated or not an ONNX model)", REEXPORT)
    check_initializer_sizes(model, label, spans)
    try:
        onnx.checker.check_model(skeleton(model))
    except Exception as exc:
        raise WncError(f"{label} fails the ONNX checker: {one_line(exc)}", REEXPORT) from None


def check_initializer_sizes(model: onnx.ModelProto, label: str, spans: dict[str, wire.Span] | None = None) -> None:
    """Raw weight bytes must match the declared shape (the checker runs on a skeleton).

    ``spans`` (from the file) give the main graph's byte counts without the copy of every
    tensor that reading ``raw_data`` makes."""
    main_tensors = list(model.graph.initializer)  # kept alive: their ids stay theirs alone
    main = {id(t) for t in main_tensors}
    for t in external_data.all_tensors(model):
        if not t.HasField("raw_data") or external_data.is_external(t):
            continue
        want = external_data.nbytes_declared(t)
        if want is None:
            continue
        span = spans.get(t.name) if spans is not None and id(t) in main else None
        have = span.raw_data_length if span is not None and span.raw_data_length is not None else len(t.raw_data)
        if have != want:
            raise WncError(
                f"{label}: initializer '{t.name}' holds {have} bytes, its shape {list(t.dims)} needs {want}",
                REEXPORT,
            )


def read_npz(path: str | os.PathLike[str], kind: str, content: str, example: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; a missing or unreadable file is a WncError naming the fix.

    ``kind`` names the file in messages ("inputs file"), ``content`` says what it should
    hold ("with one array per model input"), ``example`` how to write one."""
    p = Path(path)
    if not p.is_file():
        raise WncError(f"{kind} not found: {p}", f"pass an .npz file {content}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise WncError(f"cannot read {p} as .npz: {exc}", f"save it with {example}") from None


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


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


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
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes it 0600; a written file follows the umask
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _staged_dir(final: Path) -> Iterator[Path]:
    """A private folder beside ``final`` for writing; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class StagedModel:
    """A model written into a private folder beside its destination; see ``staged_model``."""

    def __init__(self, path: Path, data_path: Path | None) -> None:
        self.path = path  # the staged model file: run it, check it
        self.data_path = data_path  # its external data file, if any
        self.keep = True  # set False to drop it instead of moving it into place

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size + (self.data_path.stat().st_size if self.data_path else 0)


def wants_external(model: onnx.ModelProto, external: bool | None) -> bool:
    """Auto (None): external data when the model's weights already are, or above 2 GB."""
    if external is not None:
        return external
    return external_data.has_external(model) or external_data.model_bytes(model) > external_data.INLINE_LIMIT


@contextlib.contextmanager
def staged_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    external: bool | None = None,
    source: wire.Source | None = None,
) -> Iterator[StagedModel]:
    """Write ``model`` (and ``<name>.data`` when its weights go to external data) into a
    private folder beside ``path``; on leaving, move the file(s) into place unless
    ``keep`` was cleared or an error was raised. Nothing partial is ever left at ``path``.

    With external data the model's inline weights move to the data file and, once it is
    in place, its tensors point there (as with onnx.save_model). ``source``: the file the
    model was loaded from (``load_model_and_source``); initializers still as parsed from
    it are copied from there byte for byte instead of serialized again. Only for a model
    whose existing initializers nothing modified in place: the passes add new tensors
    under new names and never rewrite an existing one (the command line's output is
    compared with the library's in tests/test_wire.py)."""
    final = Path(path)
    to_external = wants_external(model, external)
    data_name = final.name + ".data"
    final_data = Path(os.path.abspath(final.parent / data_name))
    if to_external and final_data in external_data.sources(model):
        raise WncError(f"output data file {final_data} holds the input's weights", "choose another output file name")
    with contextlib.ExitStack() as stack:
        with _io_errors(final):
            folder = stack.enter_context(_staged_dir(final))
            staged = folder / final.name
            staged_data = folder / data_name if to_external else None
            _write(model, staged, staged_data, data_name, source)
        stage = StagedModel(staged, staged_data)
        yield stage
        if not stage.keep:
            return
        with _io_errors(final):
            for f in (staged_data, staged):
                if f is not None:
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            if staged_data is not None:
                os.replace(staged_data, final_data)  # data first: the model file never names a missing file
                external_data.relocate(model, data_name, str(final_data))
            os.replace(staged, final)
        stage.path, stage.data_path = final, (final_data if staged_data is not None else None)


def _write(
    model: onnx.ModelProto, staged: Path, staged_data: Path | None, data_name: str, source: wire.Source | None
) -> None:
    try:
        if staged_data is not None:
            external_data.write_data_file(model, staged_data, data_name)
        else:
            if external_data.has_external(model):
                external_data.load_inline(model)
            size = external_data.model_bytes(model)
            if size > external_data.INLINE_LIMIT:
                raise WncError(
                    f"the output model holds {size / 2**30:.2f} GiB of weights, above protobuf's 2 GiB limit",
                    "write it with external data (--external-data)",
                )
            reuse = _reusable(model, source)
            if reuse:
                assert source is not None
                wire.write_reusing(model, str(staged), source, reuse)
                return
        onnx.save_model(model, str(staged))
    except ValueError as exc:  # protobuf refuses messages above 2 GB
        raise WncError(
            f"cannot serialize the output model: {one_line(exc)}", "write it with external data (--external-data)"
        ) from None


_REUSE_MIN_TENSOR = 1 << 20  # copying smaller tensors from the input saves nothing worth it
_REUSE_MIN_TOTAL = 16 << 20


def _reusable(model: onnx.ModelProto, source: wire.Source | None) -> list[str]:
    """Initializers of ``model`` that can be copied from ``source`` byte for byte: inline,
    named, shaped and typed as parsed there, and large enough for it to matter."""
    if source is None or not source.unchanged():
        return []
    if wire.has_unknown_fields(model) or wire.has_unknown_fields(model.graph):
        return []
    found, total = [], 0
    for t in model.graph.initializer:
        span = source.spans.get(t.name)
        if (
            span is None
            or span.raw_data_length is None
            or span.length < _REUSE_MIN_TENSOR
            or span.dims != tuple(t.dims)
            or span.data_type != t.data_type
            or not t.HasField("raw_data")
            or external_data.is_external(t)
        ):
            continue
        found.append(t.name)
        total += span.length
    return found if total >= _REUSE_MIN_TOTAL else []


@contextlib.contextmanager
def _io_errors(target: Path) -> Iterator[None]:
    """OS errors while writing (permissions, full disk) become one-line user errors."""
    try:
        yield
    except OSError as exc:
        raise WncError(
            f"cannot write {target}: {exc.strerror or exc}", "choose a writable location with enough free space"
        ) from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], external: bool | None = None) -> int:
    """Write ``model`` atomically; returns the bytes written (model and data file).

    ``external``: True writes weights to ``<name>.data`` beside it, False inline, None
    decides (external when the weights already are, or above 2 GB)."""
    with staged_model(model, path, external) as stage:
        pass
    return stage.nbytes


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with _io_errors(Path(path)), atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
