"""What ``wnc-onnx bench`` measured: a data object, printed as a Markdown table, written as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

BENCH_SCHEMA_VERSION = 1
UNSTEADY_SPREAD = 0.25  # round medians spread wider than this ...
UNSTEADY_MEDIAN_OVER_MIN = 1.5  # ... or a median this far above the fastest run: the figure is unsteady
STEADIER = "--threads 1, or --session-option session.intra_op.allow_spinning=0"


@dataclass
class ModelRun:
    """One model at one thread count and batch size."""

    model: str
    path: str
    threads: int
    batch: int
    median_ms: float
    p90_ms: float
    min_ms: float
    spread: float  # (max - min) / median of the round medians
    runs: int
    speedup: float  # the first model's median over this one's (same threads and batch)
    speedup_range: list[float]  # lowest and highest per-round speed-up
    throughput: float | None  # samples per second at this batch
    energy_mj: float | None  # millijoules per run, from a hardware counter
    file_bytes: int

    @property
    def unsteady(self) -> bool:
        """Its rounds spread too far, or its median is far above its fastest run: other work (or
        spinning threads) took the cores, and a ratio of medians says little."""
        return self.spread > UNSTEADY_SPREAD or self.median_ms > UNSTEADY_MEDIAN_OVER_MIN * self.min_ms


@dataclass
class LayerTime:
    """One layer of the baseline and what became of it in another model."""

    layer: str
    op_type: str
    before_ms: float
    after_ms: float
    parts: list[list[Any]]  # [role, ms] of the nodes that replaced it (one part when unchanged)
    macs_before: int | None
    macs_after: int | None
    before_iqr: list[float] = field(default_factory=list)  # 25th and 75th percentile over the profiled runs
    after_iqr: list[float] = field(default_factory=list)

    def clearly_slower(self, fraction: float = 0.05, ms: float = 0.002) -> bool:
        """Slower by more than ``fraction`` and ``ms`` (medians), with the middle halves of
        the runs apart (the fastest quarter of after-runs slower than the slowest quarter before)."""
        apart = not self.before_iqr or not self.after_iqr or self.after_iqr[0] > self.before_iqr[1]
        return self.after_ms > self.before_ms * (1 + fraction) and self.after_ms - self.before_ms > ms and apart

    @property
    def speedup(self) -> float | None:
        return self.before_ms / self.after_ms if self.after_ms > 0 else None

    @property
    def macs_ratio(self) -> float | None:
        if not self.macs_before or not self.macs_after:
            return None
        return self.macs_before / self.macs_after

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speedup"] = self.speedup
        d["macs_ratio"] = self.macs_ratio
        return d


@dataclass
class LayerComparison:
    """Per-layer profile of ``model`` against the baseline (onnxruntime's profiler, medians over runs)."""

    baseline: str
    model: str
    threads: int
    runs: int
    layers: list[LayerTime] = field(default_factory=list)
    other_before_ms: float = 0.0  # nodes that are not Conv/Gemm/MatMul layers
    other_after_ms: float = 0.0
    unmapped: list[str] = field(default_factory=list)  # profiled nodes no model node explains

    def slower(self, noise: float = 0.0) -> list[LayerTime]:
        return [x for x in self.layers if x.after_ms > x.before_ms * (1 + noise)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [x.to_dict() for x in self.layers]
        return d


@dataclass
class BenchResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    runs: list[ModelRun] = field(default_factory=list)
    memory: dict[str, int | None] = field(default_factory=dict)  # peak bytes above the runtime, per model
    energy_source: str | None = None
    energy_note: str = ""
    warnings: list[str] = field(default_factory=list)
    per_layer: list[LayerComparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": BENCH_SCHEMA_VERSION,
            "config": self.config,
            "machine": self.machine,
            "runs": [{**asdict(r), "unsteady": r.unsteady} for r in self.runs],
            "memory_bytes": self.memory,
            "energy": {"source": self.energy_source, "note": self.energy_note},
            "per_layer": [c.to_dict() for c in self.per_layer],
            "warnings": self.warnings,
        }

    def _base(self, r: ModelRun) -> ModelRun:
        """The baseline run at ``r``'s threads and batch."""
        return next((b for b in self.runs if b.threads == r.threads and b.batch == r.batch), self.runs[0])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_plain)

    def to_table(self) -> str:
        m = self.machine
        lines = [
            f"{m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']} {self.config['provider']}; "
            f"session options {self.config['session_options'] or 'default'}; graph optimization "
            f"{self.config['graph_optimization']}; load {_load(m.get('load_before'))} before, "
            f"{_load(m.get('load_after'))} after",
            "",
            "| model | threads | batch | median ms | p90 ms | min ms | spread | speed-up | samples/s "
            "| energy mJ | peak MB | file MB |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        ]
        for r in self.runs:
            mem = self.memory.get(r.model)
            speed = "1 (baseline)" if r.speedup == 1.0 and r.speedup_range == [1.0, 1.0] else _speed(r)
            if r.unsteady or (speed != "1 (baseline)" and self._base(r).unsteady):
                speed += " **unsteady**"
            lines.append(
                f"| {r.model} | {r.threads} | {r.batch} | {r.median_ms:.3f} | {r.p90_ms:.3f} | {r.min_ms:.3f} "
                f"| {r.spread * 100:.1f}% | {speed} | {_num(r.throughput)} "
                f"| {'-' if r.energy_mj is None else f'{r.energy_mj:.2f}'} "
                f"| {'-' if mem is None else f'{mem / 1e6:.1f}'} | {r.file_bytes / 1e6:.2f} |"
            )
        lines.append("")
        lines.append(
            "speed-up: the first model's median over this one's (lowest-highest per round); spread: how far the "
            "round medians spread around their median; peak MB: resident memory the model adds to the process"
        )
        if not self.energy_source:
            lines.append(f"energy: unavailable ({self.energy_note})")
        else:
            lines.append(f"energy: {self.energy_source}")
        for c in self.per_layer:
            lines.append("")
            lines.extend(layer_table(c))
        return "\n".join(lines)


def layer_table(c: LayerComparison) -> list[str]:
    out = [
        f"per layer: {c.model} against {c.baseline}, {c.threads} thread(s), median of {c.runs} profiled runs "
        "(slower layers first)",
        "",
        "| layer | op | before ms | after ms (= parts) | measured | theoretical (MACs) | efficiency |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for x in c.layers:
        parts = "+".join(f"{ms:.2f}" for _, ms in x.parts) if len(x.parts) > 1 else ""
        after = f"{x.after_ms:.3f}" + (f" (={parts})" if parts else "")
        sp, th = x.speedup, x.macs_ratio
        eff = f"{sp / th:.2f}" if sp and th else "-"
        flag = " **slower**" if sp is not None and sp < 1 else ""
        out.append(f"| {x.layer} | {x.op_type} | {x.before_ms:.3f} | {after} | {_x(sp)}{flag} | {_x(th)} | {eff} |")
    total_b = sum(x.before_ms for x in c.layers) + c.other_before_ms
    total_a = sum(x.after_ms for x in c.layers) + c.other_after_ms
    out.append(f"| (other nodes) | | {c.other_before_ms:.3f} | {c.other_after_ms:.3f} | | | |")
    out.append(
        f"| **total kernel time** | | {total_b:.3f} | {total_a:.3f} "
        f"| {_x(total_b / total_a if total_a else None)} | | |"
    )
    if c.unmapped:
        out.append("")
        out.append(
            f"nodes onnxruntime added (counted with the layer that ran before them): {', '.join(c.unmapped[:8])}"
        )
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"x{v:.2f}"


def _speed(r: ModelRun) -> str:
    lo, hi = r.speedup_range
    return f"x{r.speedup:.2f} ({lo:.2f}-{hi:.2f})"


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _load(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}"


def _plain(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o)}")
