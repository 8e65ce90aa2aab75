"""Initializer byte ranges read from the file, and the writer that copies them."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import wnc_onnx
from wnc_onnx.errors import WncError
from wnc_onnx.io import wire
from wnc_onnx.io.model_io import load_model, load_model_and_source, staged_model
from wnc_onnx.zoo import demo_cnn, planted_kernel


def big_model() -> onnx.ModelProto:
    """A planted conv, then a 2048 x 2048 MatMul (16 MB) that --op-types Conv leaves alone."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "M"], ["y"], name="mm"),
    ]
    inits = [
        numpy_helper.from_array(planted_kernel(rng, 32, 16, (3, 3), 4, 6), "W"),
        numpy_helper.from_array(rng.standard_normal((2048, 2048)).astype(np.float32), "M"),
        numpy_helper.from_array(rng.standard_normal((300, 1000)).astype(np.float32), "unused_but_big"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_spans_are_the_serialized_initializers():
    model = demo_cnn()
    data = model.SerializeToString()
    spans = wire.initializer_spans(memoryview(data))
    assert spans is not None and set(spans) == {t.name for t in model.graph.initializer}
    for t in model.graph.initializer:
        span = spans[t.name]
        assert data[span.start : span.start + span.length] == t.SerializeToString()
        assert span.raw_data_length == len(t.raw_data)


def test_unexpected_layouts_give_none():
    data = demo_cnn().SerializeToString()
    assert wire.initializer_spans(memoryview(data[: len(data) // 2])) is None  # truncated
    extra = onnx.GraphProto(name="more").SerializeToString()
    graph_again = data + b"\x3a" + bytes([len(extra)]) + extra  # a second graph field: parsers merge them
    assert onnx.ModelProto.FromString(graph_again).graph.name == "more"
    assert wire.initializer_spans(memoryview(graph_again)) is None


def test_reusing_writer_gives_the_same_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(big_model(), path)
    model, report = wnc_onnx.compress(str(path), op_types=("Conv",))
    assert report.source is not None and report.layer("conv").status == "decomposed"
    with staged_model(model, tmp_path / "fast.onnx", source=report.source):
        pass
    with staged_model(model, tmp_path / "plain.onnx"):
        pass
    fast, plain = onnx.load(tmp_path / "fast.onnx"), onnx.load(tmp_path / "plain.onnx")
    assert fast == plain
    onnx.checker.check_model(fast, full_check=True)


def test_command_line_output_equals_the_library_save(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(big_model(), path)
    out = tmp_path / "o.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", str(path), str(out), "--op-types", "Conv", "--verify", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    model, _ = wnc_onnx.compress(str(path), op_types=("Conv",))
    assert onnx.load(out) == model  # parsed back, the same message (field for field)


def test_a_changed_source_file_is_not_copied_from(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(big_model(), path)
    model, report = wnc_onnx.compress(str(path), op_types=("Conv",))
    path.write_bytes(b"\0" * 16)  # the input went away under us
    with staged_model(model, tmp_path / "o.onnx", source=report.source):
        pass
    assert onnx.load(tmp_path / "o.onnx") == model


def test_sizes_are_checked_from_the_file(tmp_path):
    model = big_model()
    bad = model.graph.initializer[1]
    bad.raw_data = bad.raw_data[:-4]  # one float short
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(WncError, match="holds 16777212 bytes"):
        load_model(path)
    model.graph.initializer[1].raw_data += b"\0\0\0\0"
    path.write_bytes(model.SerializeToString())
    _, source = load_model_and_source(path)
    assert source is not None and source.spans["M"].raw_data_length == 2048 * 2048 * 4
