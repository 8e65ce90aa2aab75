"""``wnc-onnx bench``: several models measured side by side on one execution provider."""

from __future__ import annotations

import functools
import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.bench.config import BenchConfig
from wnc_onnx.bench.energy import EnergyMeter
from wnc_onnx.bench.feeds import model_feeds
from wnc_onnx.bench.memory import peak_memory
from wnc_onnx.bench.profile import profile_layers
from wnc_onnx.bench.result import STEADIER, BenchResult, ModelRun
from wnc_onnx.bench.timing import BUSY_LOAD, ratio_range, time_interleaved
from wnc_onnx.errors import WncError, one_line
from wnc_onnx.io import external_data
from wnc_onnx.io.machine import cpu_isa, cpu_model
from wnc_onnx.io.session import default_threads, ort, resolve_provider, session
from wnc_onnx.io.threads import load_average

log = logging.getLogger(__name__)


def _load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise WncError(f"model not found: {p}", "check the path")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise WncError(f"cannot read {p} as an ONNX model: {one_line(exc, 150)}", "pass an .onnx file") from None


def _sessions(paths: Sequence[str], cfg: BenchConfig, provider: str, threads: int) -> list[Any]:
    out = []
    for p in paths:
        try:
            out.append(session(p, provider, threads, cfg.session_options, cfg.graph_opt))
        except WncError:
            raise
        except Exception as exc:
            raise WncError(
                f"onnxruntime cannot load {p}: {one_line(exc, 200)}",
                "check the model with 'python -m onnx.checker' or run it in onnxruntime once",
            ) from None
    return out


def _run_once(sess: Any, feeds: dict[str, np.ndarray], label: str, sized: bool) -> None:
    try:
        sess.run(None, feeds)
    except Exception as exc:
        fix = (
            "check the --input-shape / --inputs sizes"
            if sized
            else "give the sizes of dynamic inputs with --input-shape NAME=D1,D2,..."
        )
        raise WncError(f"onnxruntime cannot run {label}: {one_line(exc, 200)}", fix) from None


def machine() -> dict[str, Any]:
    rt = ort()
    return {
        "cpu": cpu_model(),
        "isa": cpu_isa(),
        "machine": platform.machine(),
        "cores": default_threads(),
        "onnxruntime": rt.__version__,
        "python": platform.python_version(),
    }


def measure(paths: Sequence[str | os.PathLike[str]], cfg: BenchConfig | None = None) -> BenchResult:
    """Latency, throughput, memory and energy of ``paths`` (the first is the baseline)."""
    cfg = cfg or BenchConfig()
    names = [str(p) for p in paths]
    if not names:
        raise WncError("no model to measure", "wnc-onnx bench A.onnx [B.onnx ...]")
    provider = resolve_provider(cfg.provider)
    protos = [_load(p) for p in names]
    labels = _labels(names)
    meter = EnergyMeter(provider)
    result = BenchResult(
        config={
            "provider": provider,
            "threads": list(cfg.threads),
            "batches": list(cfg.batches),
            "rounds": cfg.rounds,
            "warmup": cfg.warmup,
            "session_options": dict(cfg.session_options),
            "graph_optimization": cfg.graph_opt,
            "input_shapes": {k: list(v) for k, v in cfg.input_shapes.items()},
            "inputs": "given" if cfg.inputs is not None else "random",
        },
        machine=machine(),
        energy_source=meter.source,
        energy_note=meter.why,
    )
    load0 = load_average()
    result.machine["load_before"] = load0
    if load0 is not None and load0 > BUSY_LOAD:
        result.warnings.append(
            f"the machine is busy (load average {load0:.2f} on {default_threads()} cores): "
            "timings may be noisy; measure on a quiet machine for figures to keep"
        )
    for threads in cfg.threads:
        used = threads or default_threads()
        for batch in cfg.batches if cfg.inputs is None else (0,):
            feeds = [model_feeds(m, cfg, max(batch, 1), lab) for m, lab in zip(protos, labels, strict=True)]
            real_batch = _batch_of(feeds[0]) if cfg.inputs is not None else batch
            sessions = _sessions(names, cfg, provider, used)
            sized = bool(cfg.input_shapes or cfg.inputs is not None)
            for s, f, lab in zip(sessions, feeds, labels, strict=True):
                _run_once(s, f, lab, sized)
            log.info(
                "timing %d model(s) at %d thread(s), batch %s: %d rounds", len(paths), used, real_batch, cfg.rounds
            )
            runners: list[Callable[[], object]] = [
                functools.partial(s.run, None, f) for s, f in zip(sessions, feeds, strict=True)
            ]
            timings = time_interleaved(
                runners,
                rounds=cfg.rounds,
                warmup=cfg.warmup,
                min_round_seconds=cfg.min_round_seconds,
                energy=meter.read if meter.available else None,
                progress=lambda r, ts: log.info(
                    "  round %d/%d: %s",
                    r,
                    cfg.rounds,
                    "  ".join(f"{lab} {t.round_medians[-1] * 1e3:.2f} ms" for lab, t in zip(labels, ts, strict=True)),
                ),
            )
            del sessions
            for i, (p, lab, t) in enumerate(zip(names, labels, timings, strict=True)):
                lo, hi = ratio_range(timings[0], t)
                result.runs.append(
                    ModelRun(
                        model=lab,
                        path=p,
                        threads=used,
                        batch=real_batch,
                        median_ms=t.median * 1e3,
                        p90_ms=t.p90 * 1e3,
                        min_ms=t.min * 1e3,
                        spread=t.spread,
                        runs=t.runs,
                        speedup=timings[0].median / t.median if i else 1.0,
                        speedup_range=[lo, hi] if i else [1.0, 1.0],
                        throughput=real_batch / t.median if real_batch else None,
                        energy_mj=(t.energy_j / t.runs * 1e3) if t.energy_j is not None and t.runs else None,
                        file_bytes=external_data.stored_bytes(p, protos[i]),
                    )
                )
    if cfg.memory:
        first = cfg.batches[-1] if cfg.inputs is None else 0
        for p, m, lab in zip(names, protos, labels, strict=True):
            log.info("peak memory of %s", lab)
            got, why = peak_memory(
                p,
                model_feeds(m, cfg, max(first, 1), lab),
                provider,
                cfg.threads[0] or default_threads(),
                cfg.session_options,
                cfg.graph_opt,
            )
            result.memory[lab] = got
            if why:
                result.warnings.append(f"{lab}: {why}")
    load1 = load_average()
    result.machine["load_after"] = load1
    _unsteady(result)
    if cfg.per_layer:
        result.per_layer = profile_layers(names, protos, labels, cfg, provider)
    return result


def _unsteady(result: BenchResult) -> None:
    """A warning beside each speed-up taken from unsteady timings, with the steadier settings."""
    for r in result.runs:
        base = next(b for b in result.runs if b.threads == r.threads and b.batch == r.batch)
        if r is base or not (r.unsteady or base.unsteady):
            continue
        worst = max((base, r), key=lambda x: (x.spread, x.median_ms / max(x.min_ms, 1e-9)))
        result.warnings.append(
            f"{r.model} at {r.threads} thread(s), batch {r.batch}: x{r.speedup:.2f} is unsteady ({worst.model}'s "
            f"rounds spread {worst.spread:.0%}, its median {worst.median_ms:.2f} ms against its fastest run "
            f"{worst.min_ms:.2f} ms): other work or spinning threads shared the cores; for steadier figures "
            f"use {STEADIER}"
        )


def _batch_of(feeds: Mapping[str, np.ndarray]) -> int:
    arrays = [a for a in feeds.values() if a.ndim]
    return int(arrays[0].shape[0]) if arrays else 1


def _labels(paths: Sequence[str]) -> list[str]:
    """Short unique names: file names, with parent folders where two are alike."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(Path(p)) for p in paths]
