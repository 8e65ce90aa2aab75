"""The before/after report: a data object, printed as a table, written as JSON.

Per layer it carries the columns of Kim et al.'s Tables 2-5; the totals cover the
whole model. ``passes`` and ``extras`` leave room for later passes (benchmarks,
quantization) without changing the schema of what is already there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from wnc_onnx.version import __version__

SCHEMA_VERSION = 1


@dataclass
class LayerReport:
    name: str
    op_type: str
    status: str  # "decomposed", "skipped" or "planned" (inspect)
    reason: str = ""
    rule: str = ""
    method: str | None = None  # "tucker2", "tucker1", "svd"
    S: int | None = None
    T: int | None = None
    groups: int = 1
    kernel: list[int] = field(default_factory=list)
    ranks: dict[str, int] = field(default_factory=dict)
    vbmf_ranks: dict[str, int] = field(default_factory=dict)
    rank_source: str | None = None  # "vbmf" or "file"
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    params_split: list[int] = field(default_factory=list)
    macs_split: list[int] = field(default_factory=list)
    rel_error: float | None = None
    hooi_iterations: int | None = None
    # --calibration: the layer's output error on the calibration data (relative RMS), with
    # the data-aware factors and with the data-free ones at the same ranks
    data_error: float | None = None
    data_error_free: float | None = None
    nodes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # the layer's data input and output tensors (main graph only): --verify measures the error there
    input_tensor: str | None = None
    output_tensor: str | None = None
    # --latency-aware / --target-speedup: the forms timed on the target, the choice and why
    latency: dict[str, Any] | None = None

    @property
    def params_ratio(self) -> float | None:
        return _ratio(self.params_before, self.params_after)

    @property
    def macs_ratio(self) -> float | None:
        return _ratio(self.macs_before, self.macs_after)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params_ratio"] = self.params_ratio
        d["macs_ratio"] = self.macs_ratio
        return d


def _ratio(before: int | None, after: int | None) -> float | None:
    if before is None or after is None or after == 0:
        return None
    return before / after


@dataclass
class Totals:
    layers: int = 0
    decomposed: int = 0
    planned: int = 0  # inspect: layers that compress would decompose
    skipped: int = 0
    params_before: int = 0  # every weight of the model (initializers and Constant tensors)
    params_after: int = 0  # after compress; for inspect, what compress would leave
    # MACs of the whole model: None unless the size of every Conv/Gemm/MatMul is known
    macs_before: int | None = None
    macs_after: int | None = None
    macs_unknown_layers: int = 0
    # The part that is known: sums over the layers of static size (a partial figure)
    macs_known_layers: int = 0
    macs_known_before: int = 0
    macs_known_after: int = 0
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params_ratio"] = _ratio(self.params_before, self.params_after)
        d["macs_ratio"] = _ratio(self.macs_before, self.macs_after)
        d["file_ratio"] = _ratio(self.file_bytes_before, self.file_bytes_after)
        return d


@dataclass
class Report:
    layers: list[LayerReport] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    passes: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    # where the input's weights sit in its file (wnc_onnx.io.wire.Source), for the command
    # line's writer; not part of the report's data
    source: Any = field(default=None, repr=False, compare=False)
    # --int8: the float model that was quantized (its float parent, for fine-tuning), for the
    # command line to write beside the output; not part of the report's data
    float_model: Any = field(default=None, repr=False, compare=False)

    @property
    def decomposed(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status == "decomposed"]

    def layer(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "wnc-onnx", "version": __version__},
            "model": self.model,
            "config": self.config,
            "passes": self.passes,
            "layers": [r.to_dict() for r in self.layers],
            "totals": self.totals.to_dict(),
            "warnings": self.warnings,
            "extras": self.extras,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        return format_table(self)


def human(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}" if isinstance(n, float) else str(n)


def _x(r: float | None) -> str:
    return f"x{r:.2f}" if r is not None else ""


def format_table(report: Report) -> str:
    pq = report.extras.get("pq")
    if pq and not report.layers:  # product quantization alone (--no-lowrank): its table is the story
        tot = report.totals
        lines = pq_table(pq)
        if tot.file_bytes_before and tot.file_bytes_after:
            lines.append(
                f"file {human(tot.file_bytes_before)}B -> {human(tot.file_bytes_after)}B "
                f"{_x(_ratio(tot.file_bytes_before, tot.file_bytes_after))}"
            )
        return "\n".join(lines + [f"note: {w}" for w in report.warnings])
    timed = any(r.latency for r in report.layers)
    head: tuple[str, ...] = ("layer", "op", "method", "S/R3", "T/R4", "weights", "MACs", "err", "status")
    calibrated = any(r.data_error is not None for r in report.layers)
    if timed:
        head = (*head[:-1], "alone", "status")
    if calibrated:  # the output error on the calibration data, data-aware (data-free at the same ranks)
        head = (*head[:-1], "data err (free)", "status")
    rows: list[tuple[str, ...]] = []
    for r in report.layers:
        row = _layer_row(r)
        if timed:
            row = (*row[:-1], _alone(r), row[-1])
        if calibrated:
            data = f"{r.data_error:.3f} ({r.data_error_free:.3f})" if r.data_error is not None else ""
            row = (*row[:-1], data, row[-1])
        rows.append(row)
    return _layout(report, head, rows)


def _alone(r: LayerReport) -> str:
    """The chosen form's speed-up over the original layer, both timed alone on the target."""
    lat = r.latency or {}
    ms = lat.get("measured_ms") or {}
    if "original" not in ms or lat.get("chosen") not in ms or not ms[lat["chosen"]]:
        return "-"
    return f"x{ms['original'] / ms[lat['chosen']]:.2f}"


def _layer_row(r: LayerReport) -> tuple[str, ...]:
    g = f"x{r.groups}" if r.groups > 1 else ""
    s = f"{r.S}{g}" if r.S is not None else ""
    t = f"{r.T}{g}" if r.T is not None else ""
    if r.status == "skipped":
        return (r.name, r.op_type, "-", s, t, human(r.params_before), human(r.macs_before), "", f"skipped: {r.reason}")
    r3 = r.ranks.get("R3")
    r4 = r.ranks.get("R4", r.ranks.get("R"))
    s += f"/{r3}{g}" if r3 is not None else ""
    t += f"/{r4}{g}" if r4 is not None else ""
    split = "+".join(human(m) for m in r.macs_split)
    weights = f"{human(r.params_before)}->{human(r.params_after)} {_x(r.params_ratio)}"
    macs = f"{human(r.macs_before)}->{human(r.macs_after)}"
    macs += f" (={split}) {_x(r.macs_ratio)}" if r.macs_split else ""
    err = f"{r.rel_error:.3f}" if r.rel_error is not None else ""
    return (r.name, r.op_type, r.method or "", s, t, weights, macs, err, r.status)


def _layout(report: Report, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    tot = report.totals
    td = tot.to_dict()
    done = (
        f"{tot.planned} of {tot.layers} layers planned"
        if tot.planned
        else f"{tot.decomposed} of {tot.layers} layers decomposed"
    )
    file = (
        f"; file {human(tot.file_bytes_before)}B -> {human(tot.file_bytes_after)}B"
        if tot.file_bytes_before and tot.file_bytes_after
        else ""
    )
    lines.append("")
    lines.append(
        f"{done}, {tot.skipped} skipped. "
        f"Model weights {human(tot.params_before)} -> {human(tot.params_after)} {_x(td['params_ratio'])}; "
        + _macs_summary(report)
        + file
    )
    lines += _latency_lines(report)
    lines += _int8_lines(report)
    lines += _calibration_lines(report)
    lines += _distill_lines(report)
    pq = report.extras.get("pq")
    if pq:
        lines += ["", *pq_table(pq)]
    lines += [f"note: {w}" for w in report.warnings]
    return "\n".join(lines)


def _calibration_lines(report: Report) -> list[str]:
    """The whole model's output error on the calibration data (and the --max-error budget)."""
    cal = report.extras.get("calibration")
    if not cal:
        return []
    line = f"On {cal['samples']} calibration samples: output error {cal['output_error']:.4f} (relative RMS)"
    if cal.get("top1_agreement") is not None:
        line += f", top-1 unchanged on {cal['top1_agreement']:.1%}"
    if cal.get("measured_at"):
        line += " (at " + ", ".join(f"'{at}' for '{out}'" for out, at in cal["measured_at"].items()) + ")"
    budget = report.extras.get("max_error")
    if budget:
        line += f"; --max-error {budget['target']:g} met in {budget['rounds']} round(s), {budget['builds']} builds"
    return [line]


def _distill_lines(report: Report) -> list[str]:
    """compress --distill: the compressed and the recovered model against the original, held back."""
    d = report.extras.get("distill")
    if not d:
        return []

    def said(m: dict[str, Any]) -> str:
        agree = f", top-1 agreement {m['agreement']:.1%}" if m.get("agreement") is not None else ""
        return f"output error {m['output_error']:.4f}{agree}"

    return [
        f"Distilled from the original for {d['epochs']} epoch(s) on {d['train_samples']} samples, no labels; "
        f"on {d['held_back']} held-back samples: compressed {said(d['compressed'])}, recovered {said(d['recovered'])}"
    ]


def pq_table(pq: dict[str, Any]) -> list[str]:
    """The product-quantization rows: bits per weight (codebook counted), error, bytes."""
    st = pq["settings"]
    head = ("weight", "layer", "shape", "bits/w", "err", "bytes", "status")
    rows = []
    unselected: dict[str, int] = {}  # weights left out by the selection options: one line per reason
    for e in pq["weights"]:
        if e["status"] != "quantized" and _unselected(e["reason"]):
            unselected[e["reason"]] = unselected.get(e["reason"], 0) + 1
            continue
        shape = "x".join(map(str, e["shape"]))
        if e["status"] == "quantized":
            b0, b1 = e["bytes_before"], e["bytes_after"]
            size = f"{human(b0)}B->{human(b1)}B {_x(_ratio(b0, b1))}"
            extra = " (4-bit codes)" if e["packed4"] else ""
            extra += " (padded)" if e["padded"] else ""
            rows.append(
                (
                    e["weight"],
                    e["layer"],
                    shape,
                    f"{e['bits_per_weight']:.2f}",
                    f"{e['rel_error']:.3f}",
                    size,
                    "quantized" + extra,
                )
            )
        else:
            rows.append((e["weight"], e["layer"], shape, "", "", "", f"skipped: {e['reason']}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    out = [f"product quantization: d={st['d']}, k={st['k']}, one codebook per {st['layout']}, k-means {st['kmeans']}"]
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out += [f"({n} more weight(s) skipped: {reason})" for reason, n in unselected.items()]
    t = pq["totals"]
    out.append(
        f"{t['quantized']} of {t['quantized'] + t['skipped']} weights quantized: "
        f"{human(t['bytes_before'])}B -> {human(t['bytes_after'])}B {_x(t['ratio'])} "
        "(codes and codebooks; onnxruntime rebuilds the float weights at load)"
    )
    return out


def _unselected(reason: str) -> bool:
    return reason.endswith("not selected (--pq-op-types)") or "--pq-include" in reason or "--pq-exclude" in reason


def _int8_lines(report: Report) -> list[str]:
    q = report.extras.get("int8")
    if not q:
        return []
    out = [
        f"int8 ({q['mode']}, {q['format']}; activations {q['activations']}, weights {q['weights']}): "
        f"{q.get('int8_layers', 0)} layer(s) in int8"
        + (f", {len(q['float_layers'])} kept float (slower in int8)" if q.get("float_layers") else "")
    ]
    m = q.get("measured")
    if m:
        out.append(
            f"measured on the target, over the float original ({m['original']['ms']:.3f} ms): low rank "
            f"x{m['lowrank']['speedup']:.2f}, int8 alone x{m['int8_alone']['speedup']:.2f}, low rank + int8 "
            f"x{m['lowrank_int8']['speedup']:.2f} (x{m['lowrank_int8_over_int8_alone']:.2f} over int8 alone); "
            "written: "
            + {"int8": "low rank + int8", "int8_alone": "int8 alone (as fast, more accurate)"}.get(
                m["chosen"], "the float model (int8 was slower)"
            )
        )
    return out


def _latency_lines(report: Report) -> list[str]:
    lat = report.extras.get("latency")
    if not lat:
        return []
    t = lat.get("target", {})
    where = f"{t.get('provider', '?')}, {t.get('threads', '?')} thread(s)"
    if t.get("options"):
        where += f", {t['options']}"
    out = [
        f"latency-aware on {where}: 'alone' is each chosen form's speed-up over the original layer, both timed "
        f"alone ({lat.get('timings_measured', 0)} timed, {lat.get('timings_cached', 0)} from the cache)"
    ]
    block = lat.get("channel_block")
    if block:
        out.append(
            f"channel block measured: {block['block']} (ranks rounded up to it ran x{block['gain']:.2f} on the probe)"
            if block["block"] > 1
            else f"channel block measured: none (rounding ranks up did not pay: x{block['gain']:.2f})"
        )
    if lat.get("target_speedup") is not None:
        steps = lat.get("steps") or []
        met = lat.get("met")
        verdict = "" if met is None else " - met" if met else " - NOT met"
        out.append(
            f"speed-up target x{lat['target_speedup']:g}: predicted x{lat['predicted_speedup']:.2f} from the layers "
            f"alone; {len(steps) or 1} allocation(s) measured{verdict}"
        )
        if len(steps) > 1:
            out.append(
                "  goal -> measured: " + ", ".join(f"x{s['goal']:.2f} -> x{s['measured_speedup']:.2f}" for s in steps)
            )
    m = lat.get("measured")
    if m:
        rng = f", rounds x{m['range'][0]:.2f}-{m['range'][1]:.2f}" if m.get("range") else ""
        out.append(
            f"measured on the target: original {m['original_ms']:.3f} ms, compressed {m['compressed_ms']:.3f} ms, "
            f"x{m['speedup']:.2f} (spread {m['spread']:.0%}{rng})"
        )
    return out


def _macs_summary(report: Report) -> str:
    """The MAC figure of the summary line: the model's total, or plainly what is known."""
    tot = report.totals
    if tot.macs_before is not None and tot.macs_after is not None:
        return f"MACs {human(tot.macs_before)} -> {human(tot.macs_after)} {_x(_ratio(tot.macs_before, tot.macs_after))}"
    hints = report.model.get("dynamic_inputs") or []
    unsized = sum(r.macs_before is None and r.T is None for r in report.layers)
    if hints:
        why = "give " + " ".join(f"--input-shape {h}" for h in hints)
    elif unsized == tot.macs_unknown_layers:
        why = "skipped before their size was known"
    else:
        why = "their sizes are dynamic inside the graph, e.g. in If / Loop bodies"
    if tot.macs_known_layers == 0:
        return f"MACs unknown ({why})"
    known = f"{human(tot.macs_known_before)} -> {human(tot.macs_known_after)}"
    known += f" {_x(_ratio(tot.macs_known_before, tot.macs_known_after))}"
    unknown = f"MACs unknown for {tot.macs_unknown_layers} of {tot.layers} layers ({why})"
    return f"{unknown}; the other {tot.macs_known_layers}: {known}"
