"""Where the main graph's initializers sit in a serialized model file, read from its bytes.

Two costs of a large inline model are copies, not computation: checking that each
weight's byte count fits its shape reads ``raw_data`` (protobuf hands Python a copy of
every tensor), and ``SerializeToString`` builds the whole output in one new buffer
before it is written. On the development machine these fresh copies of VGG-16's 494 MB
of untouched FC weights cost 1.6 s and 3.0 s of a 7.9 s run (docs/measurements.md).
With the byte range of every initializer in the input file, both go away: the sizes
come from the ranges, and the command line copies the unchanged initializers from the
input file into the output (``os.copy_file_range``), serializing only the rest.

This reads two levels of the wire format only: the ModelProto's fields (to find the one
``graph`` field) and the GraphProto's (to find its ``initializer`` entries), plus each
initializer's ``name`` and the length of its ``raw_data``. Anything unexpected (a graph
field that appears twice, a repeated name, group wire types, a truncated varint) returns
None and the caller takes the ordinary path. onnx.load and protobuf parse the model
itself; this never builds a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import onnx

_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_NAME = onnx.TensorProto.DESCRIPTOR.fields_by_name["name"].number
_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_LENGTH_DELIMITED = 2


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class Span:
    """An initializer's serialized TensorProto: ``length`` bytes from ``start`` in the file."""

    start: int
    length: int
    raw_data_length: int | None  # None: no raw_data field
    dims: tuple[int, ...] = ()  # as parsed (filled in by the loader)
    data_type: int = 0


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for length-delimited fields
    start / end bound the payload."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, after = _varint(buf, pos, end)
        elif wire == 1:
            after = pos + 8
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos, end)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:  # groups (3, 4) do not occur in ONNX
            raise _Malformed
        if after > end:
            raise _Malformed
        yield number, wire, pos, after
        pos = after


def initializer_spans(buf: memoryview) -> dict[str, Span] | None:
    """Byte ranges of the main graph's initializers in a serialized ModelProto, by name;
    None when the bytes are not laid out as expected."""
    try:
        graphs = [(s, e) for n, w, s, e in _fields(buf, 0, len(buf)) if n == _GRAPH and w == _LENGTH_DELIMITED]
        if len(graphs) != 1:
            return None
        spans: dict[str, Span] = {}
        for number, wire, start, end in _fields(buf, *graphs[0]):
            if number != _INITIALIZER or wire != _LENGTH_DELIMITED:
                continue
            name, raw = None, None
            for n, w, s, e in _fields(buf, start, end):
                if n == _NAME and w == _LENGTH_DELIMITED:
                    name = bytes(buf[s:e]).decode("utf-8")
                elif n == _RAW_DATA and w == _LENGTH_DELIMITED:
                    raw = e - s
            if name is None or name in spans:
                return None
            spans[name] = Span(start, end - start, raw)
        return spans
    except (_Malformed, UnicodeDecodeError):
        return None


def _key(number: int, wire: int) -> bytes:
    return _encode_varint((number << 3) | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def stamp(st: os.stat_result) -> tuple[int, ...]:
    """What identifies a file's content without reading it: device, inode, size, and the
    modification and change times (the change time cannot be set back by hand)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Source:
    """The file a model was parsed from (``stamp`` taken from the descriptor it was parsed
    through), and where its initializers sit in it."""

    path: str
    stamp: tuple[int, ...]
    spans: dict[str, Span]

    def unchanged(self) -> bool:
        try:
            return stamp(os.stat(self.path)) == self.stamp
        except OSError:
            return False


def has_unknown_fields(message: onnx.ModelProto | onnx.GraphProto) -> bool:
    """Whether ``message`` itself holds fields its schema does not know (a newer ONNX's):
    the copying writer rebuilds these two messages field by field and would lose them."""
    try:
        from google.protobuf import unknown_fields
    except ImportError:  # an old protobuf: assume there may be some
        return True
    return len(unknown_fields.UnknownFieldSet(message)) > 0


def _is_repeated(field: object) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5; older ones have ``label``
    if flag is not None:
        return bool(flag)
    return getattr(field, "label", None) == 3


def _copy_fields(src: onnx.ModelProto | onnx.GraphProto, dst: onnx.ModelProto | onnx.GraphProto, skip: str) -> None:
    """Every set field of ``src`` except ``skip`` into ``dst`` (the big one is never copied)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if _is_repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def write_reusing(model: onnx.ModelProto, target: str, source: Source, reuse: list[str]) -> None:
    """Write ``model`` to ``target``: the initializers named in ``reuse`` are copied byte for
    byte from ``source`` (they must be the ones parsed from there, unchanged), everything
    else is serialized. The file parses to the same model as ``onnx.save`` writes; it is
    not byte-identical (the graph comes last in the model, and the initializers last in
    the graph, in their order). A model or graph with unknown fields must not come here
    (``has_unknown_fields``)."""
    reused = set(reuse)
    head = onnx.ModelProto()
    _copy_fields(model, head, skip="graph")
    graph = onnx.GraphProto()
    _copy_fields(model.graph, graph, skip="initializer")
    head_bytes, body = head.SerializeToString(), graph.SerializeToString()
    entry_key = _key(_INITIALIZER, _LENGTH_DELIMITED)
    entries: list[bytes | Span] = []  # in the model's order: serialized bytes, or a range to copy
    for t in model.graph.initializer:
        entries.append(source.spans[t.name] if t.name in reused else t.SerializeToString())
    graph_length = len(body) + sum(len(entry_key) + len(_encode_varint(_size(e))) + _size(e) for e in entries)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with open(source.path, "rb") as src:
            _write_all(out, head_bytes + _key(_GRAPH, _LENGTH_DELIMITED) + _encode_varint(graph_length))
            _write_all(out, body)
            for entry in entries:
                _write_all(out, entry_key + _encode_varint(_size(entry)))
                if isinstance(entry, Span):
                    _copy_range(src.fileno(), out, entry.start, entry.length)
                else:
                    _write_all(out, entry)
    finally:
        os.close(out)


def _size(entry: bytes | Span) -> int:
    return entry.length if isinstance(entry, Span) else len(entry)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(src: int, dst: int, start: int, length: int) -> None:
    """``length`` bytes of file ``src`` from ``start`` appended to file ``dst``, in the kernel
    where it can (copy_file_range), else through a buffer."""
    done = 0
    copy = getattr(os, "copy_file_range", None)
    while done < length:
        n = 0
        if copy is not None:
            try:
                n = copy(src, dst, length - done, start + done)
            except OSError:
                copy = None
        if not n:
            chunk = os.pread(src, min(16 << 20, length - done), start + done)
            if not chunk:
                raise OSError(f"source model ended early at byte {start + done}")
            n = os.write(dst, chunk)
        done += n
