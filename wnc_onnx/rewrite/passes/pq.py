"""Pass: product quantization of layer weights (Soulié et al. 2016; Gong et al. 2014).

Match: an initializer of the main graph that a selected Gemm / MatMul (or Conv) reads as
its weight. Check: float, two-dimensional as the layer sees it, enough sub-vectors for
``k`` centroids, and fewer bytes after than before (codebook counted). Rewrite: the
initializer is replaced by uint8 codes (4-bit packed where k <= 16), a float codebook and
a chain of standard ops (Cast, Gather, Reshape, ...) whose output carries the weight's
name, so every reader is untouched. Every input of that chain is constant: onnxruntime
folds it at session load, inference runs on the dequantized weight at the same speed, and
the file holds only codes and codebooks (storage and download shrink, memory does not).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wnc_onnx.analyze.graph import add_initializers, mirrors_inputs, prune_unread
from wnc_onnx.analyze.numeric.pq import PQResult, pack4, packs4, product_quantize, stored_bytes
from wnc_onnx.config import CompressConfig
from wnc_onnx.io import external_data
from wnc_onnx.report import Report
from wnc_onnx.rewrite.passes.base import PassResult, working_copy

log = logging.getLogger(__name__)

PQ_OPS = ("Gemm", "MatMul", "Conv")
_FLOATS: dict[int, int] = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8}
MIN_RATIO = 2.0  # a weight is quantized only when its bytes at least halve (codebook counted)
MARK = "/pq/"  # the names of the nodes and tensors the pass writes: "<weight>/pq/<role>"


@dataclass
class PQEntry:
    """One weight as the pass saw it: quantized, or skipped with the reason."""

    weight: str
    layer: str  # the (first) node that reads it as its weight
    op_type: str
    shape: list[int]
    status: str  # "quantized" or "skipped"
    reason: str = ""
    d: int | None = None
    k: int | None = None
    layout: str | None = None
    rows: int | None = None
    subvectors: int | None = None
    padded: bool = False
    packed4: bool = False
    bytes_before: int | None = None
    bytes_after: int | None = None
    bits_per_weight: float | None = None
    rel_error: float | None = None
    seconds: float = 0.0
    nodes: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    entry: PQEntry
    tensor: onnx.TensorProto | None = None
    orient: str = "rows"  # rows: W is (out, in); cols: W is (in, out); conv: W is (O, I, *k)
    opset: int = 1


def find_weights(model: onnx.ModelProto, cfg: CompressConfig) -> list[Candidate]:
    """The weights of the main graph's Gemm / MatMul / Conv nodes, each with a verdict."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    seen: dict[str, Candidate] = {}
    for n in g.node:
        if n.op_type not in PQ_OPS or len(n.input) < 2 or not n.input[1] or n.input[1] in seen:
            continue
        wname = n.input[1]
        t = inits.get(wname)
        shape = [int(x) for x in t.dims] if t is not None else []
        entry = PQEntry(wname, n.name, n.op_type, shape, "skipped")
        cand = Candidate(entry, t, opset=opset)
        seen[wname] = cand
        producer = producers.get(wname)
        if t is None:
            if producer is not None and MARK in producer.name:
                entry.reason = "already product-quantized"
            elif producer is not None and producer.op_type in ("DequantizeLinear", "Cast"):
                entry.reason = f"weight computed by {producer.op_type} (quantized or cast): not a float initializer"
            else:
                entry.reason = "weight is not an initializer (a graph input or computed)"
            continue
        entry.reason = cfg.pq_selects(n.name, n.op_type) or ""
        if entry.reason:
            continue
        if t.data_type not in _FLOATS:
            entry.reason = f"weight dtype {helper.tensor_dtype_to_np_dtype(t.data_type)} is not float32/16/64"
            continue
        if opset < 7:
            entry.reason = f"opset {opset} < 7"
            continue
        if n.op_type == "Conv":
            cand.orient = "conv"
            if len(shape) < 3:
                entry.reason = "Conv weight with fewer than 3 dims"
        elif len(shape) != 2:
            entry.reason = f"{len(shape)}-d weight: only 2-d Gemm / MatMul weights are quantized"
        elif n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
            cand.orient = "rows"
        else:
            cand.orient = "cols"
    return list(seen.values())


def to_matrix(orient: str, w: np.ndarray) -> np.ndarray:
    """The weight as (output units, inputs): the rows that are cut into sub-vectors."""
    w = np.asarray(w)
    return w.T if orient == "cols" else w.reshape(w.shape[0], -1)


def from_matrix(orient: str, shape: list[int] | tuple[int, ...], matrix: np.ndarray) -> np.ndarray:
    """Back from ``to_matrix``'s view to the weight's own layout."""
    return np.ascontiguousarray(matrix.T if orient == "cols" else matrix.reshape(shape))


def _matrix(c: Candidate) -> np.ndarray:
    assert c.tensor is not None
    return to_matrix(c.orient, external_data.read_array(c.tensor))


class PQPass:
    """Pass: product-quantize the selected weights (``cfg.pq_*``)."""

    name = "pq"

    def __init__(self, cfg: CompressConfig) -> None:
        self.cfg = cfg

    def __call__(self, model: onnx.ModelProto, report: Report, *, in_place: bool = False) -> PassResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        out = working_copy(model, in_place)
        cands = plan_weights(out, cfg)
        todo = [c for c in cands if not c.entry.reason]
        log.info("product quantization: %d weight(s) to quantize (d=%d, k=%d)", len(todo), cfg.pq_dim, cfg.pq_k)
        names = _all_names(out.graph)
        new_nodes: list[onnx.NodeProto] = []
        new_inits: list[onnx.TensorProto] = []
        replaced: set[str] = set()
        for i, c in enumerate(todo, 1):
            t1 = time.perf_counter()
            matrix = _matrix(c)
            res = product_quantize(matrix, cfg.pq_dim, cfg.pq_k, cfg.pq_layout, cfg.pq_seed, cfg.pq_kmeans)
            nodes, inits = _emit(out, c, res, names)
            new_nodes += nodes
            new_inits += inits
            replaced.add(c.entry.weight)
            e = c.entry
            e.status, e.rel_error = "quantized", res.rel_error
            e.seconds = round(time.perf_counter() - t1, 3)
            e.nodes = [n.name for n in nodes]
            log.info(
                "[%d/%d] %s %s: %.2f bits/weight, error %.4f (%.1fs)",
                i,
                len(todo),
                e.weight,
                "x".join(map(str, e.shape)),
                e.bits_per_weight or 0,
                res.rel_error,
                e.seconds,
            )
        if replaced:
            g = out.graph
            keep = [t for t in g.initializer if t.name not in replaced]
            del g.initializer[:]
            g.initializer.extend(keep)
            if mirrors_inputs(out, g):  # IR < 4: initializers are listed as inputs too
                ins = [vi for vi in g.input if vi.name not in replaced]
                del g.input[:]
                g.input.extend(ins)
            add_initializers(out, g, new_inits)
            rest = list(g.node)
            del g.node[:]
            g.node.extend(new_nodes + rest)  # constants first: every reader comes after
            prune_unread(g, set())
        _record(report, cfg, cands, time.perf_counter() - t0)
        return PassResult(out, report, bool(replaced))


def plan_weights(model: onnx.ModelProto, cfg: CompressConfig) -> list[Candidate]:
    """``find_weights``, with the sizes of each selected weight and the reason it is not worth it."""
    cands = find_weights(model, cfg)
    for c in cands:
        if not c.entry.reason:
            _plan(c, cfg)
    return cands


def _plan(c: Candidate, cfg: CompressConfig) -> None:
    """Sizes, and the reasons a weight is not worth quantizing."""
    e = c.entry
    assert c.tensor is not None
    rows = e.shape[0] if c.orient != "cols" else e.shape[1]
    cols = int(np.prod(e.shape)) // max(rows, 1)
    m = -(-cols // cfg.pq_dim)
    fb = _FLOATS[c.tensor.data_type]
    e.d, e.k, e.layout, e.rows, e.subvectors = cfg.pq_dim, cfg.pq_k, cfg.pq_layout, rows, rows * m
    e.padded = m * cfg.pq_dim != cols
    e.bytes_before = rows * cols * fb
    e.bytes_after = stored_bytes(rows, cols, cfg.pq_dim, cfg.pq_k, cfg.pq_layout, fb)
    e.packed4 = packs4(rows * m, cfg.pq_k) and c.opset >= 10
    if packs4(rows * m, cfg.pq_k) and not e.packed4:
        e.bytes_after += rows * m // 2  # opset < 10: one byte per code
    e.bits_per_weight = round(8 * e.bytes_after / (rows * cols), 4)
    per_book = rows if cfg.pq_layout == "subspace" else rows * m
    if cfg.pq_k > per_book:
        where = "per sub-space (its rows)" if cfg.pq_layout == "subspace" else ""
        e.reason = (
            f"k={cfg.pq_k} is larger than its {per_book} sub-vectors {where}".rstrip() + "; lower --pq-k or --pq-dim"
        )
    elif e.bytes_after * MIN_RATIO > e.bytes_before:
        e.reason = (
            f"saves too little: {e.bytes_after} bytes of codes and codebook for {e.bytes_before} of weights "
            f"(under x{MIN_RATIO:g})"
        )


def _all_names(g: onnx.GraphProto) -> set[str]:
    names = {t.name for t in g.initializer} | {vi.name for vi in g.input} | {n.name for n in g.node}
    return names | {o for n in g.node for o in n.output}


def _unique(base: str, used: set[str]) -> str:
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def _emit(
    model: onnx.ModelProto, c: Candidate, res: PQResult, used: set[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The codes, the codebook and the nodes that rebuild the weight under its own name."""
    assert c.tensor is not None
    e, w = c.entry, c.entry.weight
    opset = c.opset
    np_dtype = helper.tensor_dtype_to_np_dtype(c.tensor.data_type)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    doc = (
        f"wnc-onnx product quantization of '{w}' ({e.layer}): d={res.d}, k={res.k}, "
        f"{res.layout} codebook, relative error {res.rel_error:.4g}"
    )

    def const(role: str, value: np.ndarray) -> str:
        name = _unique(f"{w}{MARK}{role}", used)
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], role: str, out: str | None = None, **attrs: Any) -> str:
        name = out or _unique(f"{w}{MARK}{role}", used)
        nodes.append(helper.make_node(op, inputs, [name], name=_unique(f"{w}{MARK}{role}_node", used), **attrs))
        return name

    rows, m = res.rows, res.m
    if e.packed4:
        packed = const("codes4", pack4(res.codes))
        wide = node("Cast", [packed], "codes_int", to=TensorProto.INT64)
        sixteen = const("sixteen", np.array(16, dtype=np.int64))
        high = node("Div", [wide, sixteen], "codes_high")
        low = node("Mod", [wide, sixteen], "codes_low")
        flat = node("Concat", [high, low], "codes_flat", axis=0)
        idx = node("Reshape", [flat, const("codes_shape", np.array([rows, m], dtype=np.int64))], "codes")
    else:
        idx = node("Cast", [const("codes", res.codes)], "codes_int", to=TensorProto.INT64)
    if res.layout == "subspace":
        offsets = const("offsets", np.arange(m, dtype=np.int64) * res.k)
        idx = node("Add", [idx, offsets], "codes_global")
    book = const("codebook", res.codebooks.reshape(-1, res.d).astype(np_dtype))
    pieces = node("Gather", [book, idx], "subvectors", axis=0)
    final_shape = [int(x) for x in c.tensor.dims]
    matrix = node("Reshape", [pieces, const("rows_shape", np.array([rows, m * res.d], dtype=np.int64))], "rows")
    if res.padded:
        if opset >= 10:
            starts, ends = const("start", np.array([0], dtype=np.int64)), const("end", np.array([res.cols], np.int64))
            axes = const("axis", np.array([1], dtype=np.int64))
            matrix = node("Slice", [matrix, starts, ends, axes], "unpadded")
        else:
            matrix = node("Slice", [matrix], "unpadded", starts=[0], ends=[res.cols], axes=[1])
    if c.orient == "cols":
        node("Transpose", [matrix], "weight", out=w, perm=[1, 0])
    elif c.orient == "conv":
        node("Reshape", [matrix, const("weight_shape", np.array(final_shape, dtype=np.int64))], "weight", out=w)
    else:  # the rows are the weight: the last node writes its name
        nodes[-1].output[0] = w
        used.discard(matrix)
    used.add(w)
    nodes[-1].doc_string = doc  # on the node that outputs the weight (once: small models feel every byte)
    return nodes, inits


def _record(report: Report, cfg: CompressConfig, cands: list[Candidate], seconds: float) -> None:
    done = [c.entry for c in cands if c.entry.status == "quantized"]
    before = sum(e.bytes_before or 0 for e in done)
    after = sum(e.bytes_after or 0 for e in done)
    report.extras["pq"] = {
        "settings": {
            "d": cfg.pq_dim,
            "k": cfg.pq_k,
            "layout": cfg.pq_layout,
            "op_types": list(cfg.pq_op_types),
            "kmeans": cfg.pq_kmeans,
            "seed": cfg.pq_seed,
        },
        "weights": [asdict(c.entry) for c in cands],
        "totals": {
            "quantized": len(done),
            "skipped": len(cands) - len(done),
            "bytes_before": before,
            "bytes_after": after,
            "ratio": before / after if after else None,
            "seconds": round(seconds, 3),
        },
    }
    report.passes.append({"name": "pq", "quantized": len(done), "seconds": round(seconds, 3)})


def pq_summary(report: Report) -> dict[str, Any] | None:
    return report.extras.get("pq")


def dequantize_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every product-quantized weight written back as a float
    initializer (the chains this pass wrote evaluated with onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    chain = [n for n in g.node if MARK in n.name]
    if not chain:
        return out
    inits = {t.name: t for t in g.initializer}
    produced = {o for n in chain for o in n.output}
    read = {n.input[i] for n in g.node if n not in chain for i in range(len(n.input))}
    weights = sorted(produced & (read | {o.name for o in g.output}))
    needed = {i for n in chain for i in n.input if i in inits}
    sub = helper.make_graph(
        chain,
        "pq_weights",
        [],
        [helper.make_tensor_value_info(w, TensorProto.UNDEFINED, None) for w in weights],
        [inits[i] for i in sorted(needed)],
    )
    values = ReferenceEvaluator(helper.make_model(sub, opset_imports=list(model.opset_import))).run(None, {})
    rest = [n for n in g.node if MARK not in n.name]
    del g.node[:]
    g.node.extend(rest)
    add_initializers(out, g, [numpy_helper.from_array(np.asarray(v), w) for w, v in zip(weights, values, strict=True)])
    prune_unread(g, needed)
    return out
