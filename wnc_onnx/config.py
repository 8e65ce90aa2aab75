"""One frozen configuration object for the whole compression run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wnc_onnx.analyze.numeric.pq import BACKENDS, LAYOUTS, MAX_K

SUPPORTED_OPS = ("Conv", "Gemm", "MatMul")
# The graph passes, in the order they run (wnc_onnx.rewrite.passes.build_passes builds them).
PASS_NAMES: tuple[str, ...] = (
    "simplify",
    "name_nodes",
    "initializer_inputs",
    "fold_constants",
    "fold_batchnorm",
    "lowrank",
    "pq",
    "cleanup",
)

OPT_IN_PASSES = ("simplify", "lowrank", "pq")  # turned on and off by their own flags
SKIPPABLE_PASSES = tuple(p for p in PASS_NAMES if p not in OPT_IN_PASSES)

RankSpec = int | tuple[int, int]

# onnxruntime graph optimization levels, as --graph-opt spells them
GRAPH_OPT_LEVELS = ("all", "extended", "basic", "disable")


# CompressConfig fields whose flag is not the field's name with dashes
_FLAG_NAMES = {
    "pq_layout": "--pq-codebook",
    "hooi_max_iter": "--hooi-iters",
    "input_shapes": "--input-shape",
    "skip_passes": "--skip-pass",
    "require_savings": "--allow-no-saving",
    "lowrank=False": "--no-lowrank",
    "pointwise": "--no-pointwise",
    "fc_tucker": "--no-fc-tucker",
    "latency_cache": "--no-latency-cache",
}


def flag_of(field: str) -> str:
    """The command-line flag that sets a CompressConfig field."""
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


@dataclass(frozen=True)
class CompressConfig:
    """The options of a compression run (frozen; a run's own state lives in ``rewrite.state``).
    Defaults follow the README's measurements. A bad value raises ValueError whose text names
    the field in backticks (the command line puts the flag there)."""

    # Which layers: op types, regexes on node names (search, not full match).
    op_types: tuple[str, ...] = SUPPORTED_OPS
    include: str | None = None
    exclude: str | None = None
    pointwise: bool = True  # also factor 1x1 convolutions (SVD)
    # Ranks: explicit ones win over VBMF; then boost, floor and rounding apply to VBMF ranks.
    ranks: Mapping[str, RankSpec] = field(default_factory=dict)
    min_rank: int = 8
    rank_multiple: int = 1
    rank_boost: float = 0.0  # 0 = VBMF rank, 1 = full rank
    # Structure.
    tucker1_max_in: int = 4  # convs with at most this many input channels get Tucker-1
    fc_tucker: bool = True  # Flatten/Reshape -> Gemm as a Tucker-2 convolution (paper's fc6)
    require_savings: bool = True  # skip a layer whose rewrite would not cut weights and MACs
    skip_passes: tuple[str, ...] = ()  # e.g. ("fold_batchnorm", "cleanup"); see PASS_NAMES
    simplify: bool = False  # run onnx-simplifier first (the [simplify] extra; docs/how-it-works.md)
    hooi_max_iter: int = 20
    hooi_tol: float = 1e-5
    # Shapes of graph inputs with dynamic dims, e.g. {"images": (1, 3, 640, 640)}: MACs are
    # counted at these sizes (shape inference runs with them).
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Values of inputs random data cannot stand for (a sample rate, a flag), e.g. {"sr": 16000}:
    # every timing and check run on the target feeds them (--input-value).
    input_values: Mapping[str, float] = field(default_factory=dict)
    # BLAS and onnxruntime threads; 0: the cores that are free when the run starts
    threads: int = 0
    # Latency-aware choices (wnc_onnx.check.latency): each layer's forms are timed on the target
    # (provider, threads, session options) and the fastest that keeps the policy's accuracy
    # wins, the original included; target_speedup allocates ranks to reach a measured speed-up.
    latency_aware: bool = False
    target_speedup: float | None = None
    provider: str = "cpu"
    session_options: Mapping[str, str] = field(default_factory=dict)
    graph_opt: str = "all"
    latency_cache: bool = True  # reuse timings from earlier runs on the same target
    # Calibration data (docs/calibration.md): an .npz of model inputs, a folder of images, or an
    # iterable of feed dicts. Each Conv / Gemm / MatMul is then fitted to its inputs' patch covariance.
    calibration: Any = None
    # image folders given as calibration: pixels in [0, 1], then (x - mean) / std per channel
    calibration_mean: tuple[float, ...] = (0.0,)
    calibration_std: tuple[float, ...] = (1.0,)
    # With calibration data: choose the ranks so the network's output error on them (relative
    # RMS, as --verify measures it) stays under max_error with the fewest MACs (wnc_onnx.rewrite.budget).
    max_error: float | None = None
    # The low-rank pass (off: product quantization alone, --no-lowrank).
    lowrank: bool = True
    # int8 after the low-rank pass, with onnxruntime's quantization tools (wnc_onnx.rewrite.int8_flow):
    # static QDQ per channel on the calibration data, else dynamic for MatMul / Gemm.
    int8: bool = False
    # Product quantization (wnc_onnx.rewrite.passes.pq, docs/pq.md): weights of pq_op_types cut into
    # sub-vectors of pq_dim, each stored as the uint8 index of one of pq_k centroids.
    pq: bool = False
    pq_dim: int = 8
    pq_k: int = 256
    pq_layout: str = "layer"  # one codebook per weight ("layer") or per column block ("subspace")
    pq_op_types: tuple[str, ...] = ("Gemm", "MatMul")
    pq_include: str | None = None
    pq_exclude: str | None = None
    pq_kmeans: str = "sklearn"  # or "faiss" (pip install faiss-cpu)
    pq_seed: int = 0

    def __post_init__(self) -> None:
        # [R3, R4] lists (as in a JSON ranks file) are accepted from API callers too
        ranks = {k: tuple(v) if isinstance(v, list) else v for k, v in self.ranks.items()}
        object.__setattr__(self, "ranks", ranks)
        shapes = {k: tuple(int(d) for d in v) for k, v in self.input_shapes.items()}
        if any(d <= 0 for v in shapes.values() for d in v):
            raise ValueError(f"`input_shapes` must hold positive dims, got {shapes}")
        object.__setattr__(self, "input_shapes", shapes)
        bad = [op for op in self.op_types if op not in SUPPORTED_OPS]
        if bad:
            raise ValueError(f"unsupported `op_types` {bad}; choose from {list(SUPPORTED_OPS)}")
        for pat in (self.include, self.exclude):
            if pat is not None:
                re.compile(pat)
        if self.min_rank < 0:
            raise ValueError("`min_rank` must be >= 0")
        if self.rank_multiple < 1:
            raise ValueError("`rank_multiple` must be >= 1")
        if not 0.0 <= self.rank_boost <= 1.0:
            raise ValueError("`rank_boost` must be in [0, 1]")
        unknown = [p for p in self.skip_passes if p not in SKIPPABLE_PASSES]
        if unknown:
            raise ValueError(f"`skip_passes` names {unknown}; skippable: {list(SKIPPABLE_PASSES)}")
        if self.threads < 0:
            raise ValueError("`threads` must be >= 0 (0: automatic)")
        if self.target_speedup is not None and not self.target_speedup > 0:
            raise ValueError("`target_speedup` must be > 0 (e.g. 2 for twice as fast)")
        if self.max_error is not None:
            if not self.max_error > 0:
                raise ValueError("`max_error` must be > 0 (e.g. 0.05 for a 5% output error)")
            if self.calibration is None:
                raise ValueError("`max_error` measures the error on calibration data: give `calibration`")
            if self.latency_aware and self.target_speedup is None:
                raise ValueError(
                    "`max_error` chooses ranks for an error budget, `latency_aware` keeps what is faster layer by "
                    "layer: give one, or `max_error` with `target_speedup` (the least error at that speed-up)"
                )
        if self.graph_opt not in GRAPH_OPT_LEVELS:
            raise ValueError(f"`graph_opt` must be one of {', '.join(GRAPH_OPT_LEVELS)}")
        self._check_pq()
        if self.hooi_max_iter < 0 or self.hooi_tol < 0:
            raise ValueError("`hooi_max_iter` and `hooi_tol` must be >= 0")

    def _check_pq(self) -> None:
        if not 1 <= self.pq_k <= MAX_K:
            raise ValueError(f"`pq_k` must be in 1..{MAX_K} (codes are one byte), got {self.pq_k}")
        if self.pq_dim < 1:
            raise ValueError(f"`pq_dim` must be >= 1, got {self.pq_dim}")
        if self.pq_layout not in LAYOUTS:
            raise ValueError(f"`pq_layout` must be one of {', '.join(LAYOUTS)}")
        if self.pq_kmeans not in BACKENDS:
            raise ValueError(f"`pq_kmeans` must be one of {', '.join(BACKENDS)}")
        bad = [op for op in self.pq_op_types if op not in SUPPORTED_OPS]
        if bad:
            raise ValueError(f"unsupported `pq_op_types` {bad}; choose from {list(SUPPORTED_OPS)}")
        for pat in (self.pq_include, self.pq_exclude):
            if pat is not None:
                re.compile(pat)
        if not self.lowrank and not self.pq and not self.int8:
            raise ValueError(
                "the low-rank pass is off (`lowrank=False`) and product quantization too: nothing to do; add `pq`"
            )
        if self.int8 and self.pq:
            raise ValueError("`int8` and `pq` both quantize the weights: choose one")
        if self.int8 and self.max_error is not None and self.target_speedup is None:
            raise ValueError(
                "`max_error` chooses ranks for an error budget in float, which `int8` would then change: give "
                "`target_speedup` too (the budget is then checked on the int8 model), or drop one"
            )

    @property
    def timed(self) -> bool:
        """Whether layer forms are timed on the target (latency-aware or a speed-up target)."""
        return self.latency_aware or self.target_speedup is not None

    def selects(self, name: str, op_type: str) -> str | None:
        """None when the layer is selected for the low-rank pass, else the reason it is not."""
        if name in self.ranks:
            return None
        return _selection(name, op_type, self.op_types, self.include, self.exclude, "--")

    def pq_selects(self, name: str, op_type: str) -> str | None:
        """None when the weight of layer ``name`` is selected for product quantization, else why not."""
        return _selection(name, op_type, self.pq_op_types, self.pq_include, self.pq_exclude, "--pq-")


def _selection(
    name: str, op_type: str, op_types: tuple[str, ...], include: str | None, exclude: str | None, flags: str
) -> str | None:
    if op_type not in op_types:
        return f"op type {op_type} not selected ({flags}op-types)"
    if include is not None and not re.search(include, name):
        return f"name does not match {flags}include"
    if exclude is not None and re.search(exclude, name):
        return f"name matches {flags}exclude"
    return None
