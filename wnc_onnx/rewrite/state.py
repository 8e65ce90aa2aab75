"""What one compression run carries besides the user's options (``CompressConfig`` holds only those)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wnc_onnx.analyze.calibration import Reuse
from wnc_onnx.check.latency.memo import LatencyMemo


@dataclass
class RunState:
    """State shared by the passes of a run and the reruns a flow makes.

    ``calibration``: the calibration data's statistics, gathered on the first run and reused
    (with the fitted factors and the first samples kept for measuring); ``keep_whole``: layers
    a flow decided to leave whole, with the reason the report gives (in-context profiling,
    --max-error, int8); ``target_scale``: the speed-up target's goal as a multiple of the
    target; ``latency``: what the latency-aware runs share (timings, the original's time,
    in-context times); ``shown``: each layer's outcome as its progress line gave it (a rerun
    shows only the layers whose outcome changed)."""

    calibration: Reuse | None = None
    keep_whole: dict[str, str] = field(default_factory=dict)
    target_scale: float = 1.0
    latency: LatencyMemo = field(default_factory=LatencyMemo)
    shown: dict[str, str] = field(default_factory=dict)
