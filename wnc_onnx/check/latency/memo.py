"""What the latency-aware runs of one compression share: the reruns of a flow (in-context
checks, a speed-up target's corrections) time nothing twice and report the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wnc_onnx.check.latency.forms import Form
from wnc_onnx.check.latency.oracle import Oracle


@dataclass
class LatencyMemo:
    """``oracle``: the timer and its cache (its counts cover every run); ``whole_ms``: the
    original model's time, measured once; ``in_context``: layer -> form -> seconds, the original's
    and chosen forms' times inside the whole model (profiled); ``context_scale``: layer -> its
    original's time inside the model over its time alone (the layer's other forms are scaled by it);
    ``block``: the channel block measured on the target (``block.ChannelBlock``), once;
    ``logged``: layers whose timings were already shown (one progress line per layer);
    ``shapes``: the sizes shape inference left open at the layers, found by running the model."""

    oracle: Oracle | None = None
    whole_ms: float | None = None
    in_context: dict[str, dict[Form, float]] = field(default_factory=dict)
    context_scale: dict[str, float] = field(default_factory=dict)
    block: Any = None
    logged: set[str] = field(default_factory=set)
    shapes: dict[str, list[int]] | None = None  # sizes shape inference left open, from one run
