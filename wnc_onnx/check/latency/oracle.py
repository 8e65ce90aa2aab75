"""Timing one layer's forms on the target, interleaved, with a cache on disk.

A cache entry is keyed by the one-layer model's structure (ops, attributes, tensor
shapes and types: not weight values), the execution provider, thread count, session
options, graph optimization level, the onnxruntime version and the machine (CPU model,
instruction sets, and the GPU's name for GPU providers), so a second run on the same
target reuses what the first measured, and timings copied from another machine are not."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from wnc_onnx.bench.timing import BUSY_LOAD, Timing, time_interleaved
from wnc_onnx.io.machine import target_machine
from wnc_onnx.io.session import ort, resolve_provider, session
from wnc_onnx.io.threads import load_average

if TYPE_CHECKING:
    from wnc_onnx.config import CompressConfig

log = logging.getLogger(__name__)

CACHE_ENV = "WNC_ONNX_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "wnc-onnx"


@dataclass(frozen=True)
class Measured:
    """A form's time alone on the target (seconds): the median of its fastest round (other
    work on the machine only ever adds time, so the best round is the estimate least
    disturbed by it) and the spread between rounds."""

    median: float
    spread: float
    cached: bool = False


@dataclass
class Target:
    """Where the model will run: the choices are measured there."""

    provider: str = "cpu"
    threads: int = 1
    session_options: Mapping[str, str] = field(default_factory=dict)
    graph_opt: str = "all"
    rounds: int = 5
    warmup: int = 3
    min_round_seconds: float = 0.02

    @classmethod
    def of(cls, cfg: CompressConfig, threads: int) -> Target:
        """The target a compression's options name: provider, threads, session options, graph optimization."""
        return cls(cfg.provider, max(1, threads), dict(cfg.session_options), cfg.graph_opt)

    def key(self) -> dict[str, Any]:
        provider = resolve_provider(self.provider)
        return {
            "provider": provider,
            "threads": self.threads,
            "options": dict(sorted(self.session_options.items())),
            "graph_opt": self.graph_opt,
            "onnxruntime": ort().__version__,
            **target_machine(provider),
        }

    def open(self, model: onnx.ModelProto) -> Any:
        """An onnxruntime session for ``model`` on this target."""
        return session(model, resolve_provider(self.provider), self.threads, self.session_options, self.graph_opt)

    def time(
        self,
        cases: Sequence[tuple[Any, Mapping[str, np.ndarray]]],
        rounds: int | None = None,
        warmup: int | None = None,
        min_round_seconds: float | None = None,
    ) -> list[Timing]:
        """(session, feeds) pairs timed interleaved; the target's round settings unless given."""
        runners = [functools.partial(s.run, None, dict(f)) for s, f in cases]
        return time_interleaved(
            runners,
            rounds=self.rounds if rounds is None else rounds,
            warmup=self.warmup if warmup is None else warmup,
            min_round_seconds=self.min_round_seconds if min_round_seconds is None else min_round_seconds,
        )


def structure_key(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> str:
    """A digest of what decides speed: nodes and attributes, initializer shapes and types, input sizes."""
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(n.op_type.encode())
        for a in sorted(n.attribute, key=lambda a: a.name):
            h.update(a.SerializeToString())
        h.update(str(len(n.input)).encode())
    for t in model.graph.initializer:
        h.update(f"{t.name}:{list(t.dims)}:{t.data_type};".encode())
    for k in sorted(feeds):
        h.update(f"{k}:{feeds[k].shape}:{feeds[k].dtype};".encode())
    for n in model.graph.node:  # which tensor feeds which node (names matter only as wiring)
        h.update("|".join(n.input).encode() + b">" + "|".join(n.output).encode())
    return h.hexdigest()[:32]


class Oracle:
    """Times forms on ``target``; ``timer`` replaces onnxruntime in tests."""

    def __init__(
        self,
        target: Target,
        cache: bool = True,
        timer: Callable[[Sequence[tuple[onnx.ModelProto, dict[str, np.ndarray]]]], list[Measured]] | None = None,
    ) -> None:
        self.target = target
        self.timer = timer or self._time
        self.cache_path = cache_dir() / "latency.json" if cache else None
        self._tkey = json.dumps(target.key(), sort_keys=True) if timer is None else "stub"
        self._cache: dict[str, dict[str, float]] = self._load()
        self.hits = self.misses = 0
        load = load_average()
        self.busy = load is not None and load > BUSY_LOAD
        self.load = load

    def _load(self) -> dict[str, dict[str, float]]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
            return dict(data.get(self._tkey, {}))
        except (OSError, ValueError):
            return {}

    def save(self) -> None:
        if self.cache_path is None or self._tkey == "stub":
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            data: dict[str, Any] = {}
            if self.cache_path.is_file():
                try:
                    data = json.loads(self.cache_path.read_text(encoding="utf-8"))
                except ValueError:
                    data = {}
            data[self._tkey] = self._cache
            tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.cache_path)
        except OSError as exc:  # a read-only home: the run still works, only slower next time
            log.debug("latency cache not written: %s", exc)

    def measure(self, cases: Sequence[tuple[onnx.ModelProto, dict[str, np.ndarray]]]) -> list[Measured]:
        """Each case's time; all are timed together (interleaved) unless every one is cached."""
        keys = [structure_key(m, f) for m, f in cases]
        if all(k in self._cache for k in keys):
            self.hits += len(keys)
            return [Measured(self._cache[k]["median"], self._cache[k]["spread"], True) for k in keys]
        self.misses += len(keys)
        found = self.timer(cases)
        for k, m in zip(keys, found, strict=True):
            self._cache[k] = {"median": m.median, "spread": m.spread}
        return found

    def _time(self, cases: Sequence[tuple[onnx.ModelProto, dict[str, np.ndarray]]]) -> list[Measured]:
        timings = self.target.time([(self.target.open(m), f) for m, f in cases])
        return [Measured(min(x.round_medians), x.spread) for x in timings]
