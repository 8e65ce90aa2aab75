"""What ``wnc-onnx bench`` measures and how: one frozen configuration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from wnc_onnx.config import GRAPH_OPT_LEVELS


@dataclass(frozen=True)
class BenchConfig:
    provider: str = "cpu"
    threads: tuple[int, ...] = (0,)  # intra-op threads per configuration; 0: every core of this process
    batches: tuple[int, ...] = (1,)
    rounds: int = 10
    warmup: int = 5
    min_round_seconds: float = 0.1  # each model's share of a round
    session_options: Mapping[str, str] = field(default_factory=dict)
    graph_opt: str = "all"
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    input_values: Mapping[str, float] = field(default_factory=dict)
    inputs: Mapping[str, np.ndarray] | None = None  # real inputs (--inputs); their batch is the batch
    memory: bool = True
    per_layer: bool = False
    profile_runs: int = 20

    def __post_init__(self) -> None:
        if self.rounds < 2:
            raise ValueError("rounds must be >= 2 (the spread between rounds is reported)")
        if any(t < 0 for t in self.threads) or not self.threads:
            raise ValueError("threads must be >= 0 (0: every core)")
        if any(b < 1 for b in self.batches) or not self.batches:
            raise ValueError("batch sizes must be >= 1")
        if self.graph_opt not in GRAPH_OPT_LEVELS:
            raise ValueError(f"graph_opt must be one of {', '.join(GRAPH_OPT_LEVELS)}")
