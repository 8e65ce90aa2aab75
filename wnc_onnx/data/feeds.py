"""What is fed to a model: inputs drawn from its signature, read from an .npz, or batches of
calibration data (an .npz, an image folder, any iterable of feed dicts), checked against it.

``random_inputs`` draws one array per model input (random normal floats, small random
integers, or a given value), dynamic dims defaulted (batch 1, others 64) unless sized;
``batches_of`` yields checked feed dicts batch by batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from wnc_onnx.analyze.graph import data_inputs
from wnc_onnx.data.arrays import InputArrays
from wnc_onnx.data.images import UnlabeledImages
from wnc_onnx.errors import WncError
from wnc_onnx.io.model_io import read_npz

DEFAULT_BATCH = 1
DEFAULT_DIM = 64  # unknown non-batch dims (a multiple of 32: fits stride-32 backbones)


def parse_input_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["x=1,3,224,224"]`` -> ``{"x": [1, 3, 224, 224]}``."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")]
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise WncError(
                f"--input-shape {spec!r} is not NAME=D1,D2,...", "write e.g. --input-shape x=1,3,224,224"
            ) from None
    return shapes


def parse_input_values(specs: Sequence[str]) -> dict[str, float]:
    """``["sr=16000"]`` -> ``{"sr": 16000.0}``: a value that fills the whole input."""
    values: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            values[name] = float(value)
        except ValueError:
            raise WncError(f"--input-value {spec!r} is not NAME=NUMBER", "write e.g. --input-value sr=16000") from None
    return values


@dataclass
class Drawn:
    """What a random draw had to guess: inputs with defaulted dims, integer / scalar inputs."""

    defaulted_dims: list[str] = field(default_factory=list)
    guessed_values: list[str] = field(default_factory=list)


def random_inputs(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    values: Mapping[str, float] | None = None,
    drawn: Drawn | None = None,
) -> dict[str, np.ndarray]:
    """One array per model input: random normal floats, small random integers, or ``values``."""
    shapes = dict(shapes or {})
    values = dict(values or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    inputs = data_inputs(model)
    names = [vi.name for vi in inputs]
    for flag, given in (("--input-shape", shapes), ("--input-value", values)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise WncError(f"{flag} names unknown input(s) {unknown}", f"the model's inputs are {names}")
    drawn = drawn if drawn is not None else Drawn()
    for vi in inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise WncError(f"input '{vi.name}' is not a tensor", "pass inputs with --inputs file.npz")
        if vi.name in shapes:
            shape = list(shapes[vi.name])
        else:
            shape = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(int(d.dim_value))
                else:
                    shape.append(DEFAULT_BATCH if i == 0 else DEFAULT_DIM)
                    if vi.name not in drawn.defaulted_dims:
                        drawn.defaulted_dims.append(vi.name)
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if vi.name in values:
            feeds[vi.name] = np.full(shape, values[vi.name]).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
            drawn.guessed_values.append(vi.name)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
            drawn.guessed_values.append(vi.name)
    return feeds


def load_inputs(path: str | os.PathLike[str], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    p = Path(path)
    feeds = read_npz(p, "inputs file", "with one array per model input", "numpy.savez(path, input_name=array)")
    names = [vi.name for vi in data_inputs(model)]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise WncError(f"{p} lacks arrays for input(s) {missing}", f"store one array per input: {names}")
    return {n: feeds[n] for n in names}


Feeds = Mapping[str, np.ndarray]
# an .npz path or image folder, whole arrays ({input: array} or InputArrays, batch first), or
# an iterable of feed dicts (each a batch)
CalibrationSource = str | Path | Feeds | InputArrays | Iterable[Feeds]


def source_name(source: Any) -> str:
    """How a report names calibration data: the path, "<arrays>" or "<iterable>"."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    return "<arrays>" if isinstance(source, Mapping | InputArrays) else "<iterable>"


BATCH = 16  # samples per onnxruntime run when the data come as whole arrays


def input_signature(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], np.dtype[Any]]]:
    out = {}
    for vi in data_inputs(model):
        tt = vi.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim
        ]  # -1: dynamic
        out[vi.name] = (dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    return out


def _require_inputs(expected: Mapping[str, Any], feeds: Mapping[str, Any], where: str) -> None:
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise WncError(f"{where} lacks input(s) {missing}", f"give one array per model input: {sorted(expected)}")


def check_feeds(model: onnx.ModelProto, feeds: Feeds, where: str) -> dict[str, np.ndarray]:
    """The feeds a model takes, cast where safe; one WncError naming the first misfit."""
    expected = input_signature(model)
    _require_inputs(expected, feeds, where)
    out = {}
    for name, (dims, dtype) in expected.items():
        a = np.asarray(feeds[name])
        if a.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, a.shape, strict=False)):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            raise WncError(
                f"{where}: input '{name}' has shape {list(a.shape)}, the model takes [{shown}]",
                "give arrays of the model's input shape (batch first)",
            )
        if a.dtype != dtype:
            kinds_fit = (a.dtype.kind in "fiu" and dtype.kind == "f") or (a.dtype.kind in "iu" and dtype.kind in "iu")
            if not kinds_fit:
                raise WncError(f"{where}: input '{name}' is {a.dtype}, the model takes {dtype}", f"store it as {dtype}")
            a = a.astype(dtype)
        out[name] = a
    return out


def _slices(n: int, fixed: int | None, batch: int) -> Iterator[slice]:
    """``n`` samples cut into batches of ``batch``, or of the model's fixed batch size (whole ones only)."""
    step = fixed or batch
    stop = n - step + 1 if fixed else n
    return (slice(i, i + step) for i in range(0, max(stop, 0), step))


def _image_batches(
    path: Path, model: onnx.ModelProto, batch: int, mean: Sequence[float], std: Sequence[float]
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the images under ``path`` (any layout), sized and normalized for the model's
    one image input (N, 1 or 3, H, W) as ``finetune`` reads image folders."""
    expected = input_signature(model)
    dims = next(iter(expected.values()))[0] if len(expected) == 1 else []
    if len(dims) != 4 or dims[1] not in (1, 3) or dims[2] is None or dims[3] is None:
        shown = ", ".join(f"{n} [{','.join('?' if d is None else str(d) for d in e[0])}]" for n, e in expected.items())
        raise WncError(
            f"--calibration {path}: an image folder needs a model with one image input [N, 1 or 3, H, W] of fixed "
            f"size; this one takes {shown}",
            "store the inputs in an .npz, one array per input",
        )
    name = next(iter(expected))
    images = UnlabeledImages(path, (int(dims[2]), int(dims[3])), int(dims[1]), mean, std)
    if not images.files:
        raise WncError(f"--calibration {path}: the folder holds no images", "give a folder of .png / .jpg images")
    for part in _slices(len(images.files), dims[0], batch):
        yield {name: images.decode(images.files[part])}


def batches_of(
    source: CalibrationSource,
    model: onnx.ModelProto,
    batch: int = BATCH,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> Iterator[dict[str, np.ndarray]]:
    """Checked feed dicts from an ``.npz`` (one array per input, batch first; cut into batches
    of ``batch``, or of the model's own batch size where it is fixed), an image folder (pixels
    in [0, 1], then ``(x - mean) / std`` per channel) or an iterable of feed dicts (each a batch)."""
    where = "calibration batch {}"
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            for k, decoded in enumerate(_image_batches(path, model, batch, mean, std)):
                yield check_feeds(model, decoded, f"--calibration {path.name}, batch {k}")
            return
        arrays = read_npz(
            path, "calibration file", "with one array per model input", "numpy.savez(path, input_name=array)"
        )
        yield from _array_batches(model, arrays, batch, f"--calibration {path.name}")
        return
    if isinstance(source, InputArrays):
        yield from _array_batches(model, source.feeds, batch, "calibration arrays")
        return
    if isinstance(source, Mapping):  # whole arrays by input name, as an .npz holds them
        if not all(isinstance(v, np.ndarray) for v in source.values()):
            raise WncError(
                "calibration: a mapping must hold one numpy array per model input (batch first)",
                "pass {input_name: array}, an .npz path, or an iterable of feed dicts",
            )
        yield from _array_batches(model, source, batch, "calibration arrays")
        return
    if not isinstance(source, Iterable):
        raise WncError(
            f"calibration: cannot read a {type(source).__name__}",
            "pass an .npz path, an image folder, {input_name: array}, InputArrays, or an iterable of feed dicts",
        )
    for i, feeds in enumerate(source):
        yield check_feeds(model, feeds, where.format(i))


def _array_batches(
    model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], batch: int, where: str
) -> Iterator[dict[str, np.ndarray]]:
    """Whole arrays (batch first) cut into checked batches of ``batch``, or of the model's own
    batch size where it is fixed."""
    expected = input_signature(model)
    if len(expected) == 1 and len(arrays) == 1:  # a single array for a single-input model, by any name
        arrays = {next(iter(expected)): next(iter(arrays.values()))}
    _require_inputs(expected, arrays, where)
    n = min(len(arrays[k]) for k in expected) if expected else 0
    fixed = {dims[0] for dims, _ in expected.values() if dims and dims[0] is not None}
    one = next(iter(fixed)) if len(fixed) == 1 else None
    for part in _slices(n, one, batch):
        yield check_feeds(model, {k: arrays[k][part] for k in expected}, where)
