"""Rank policy: VBMF rank -> boost toward full rank -> floor -> rounding -> cap."""

from __future__ import annotations

import math

from wnc_onnx.config import CompressConfig


def policy_rank(vbmf_rank: int, full: int, cfg: CompressConfig) -> int:
    """The rank used for a mode whose EVBMF rank is ``vbmf_rank`` (> 0) and size ``full``."""
    r = vbmf_rank
    if cfg.rank_boost > 0.0:
        r = math.ceil(r + cfg.rank_boost * (full - r) - 1e-9)
    r = max(r, cfg.min_rank)
    if cfg.rank_multiple > 1:
        r = math.ceil(r / cfg.rank_multiple) * cfg.rank_multiple
    return int(min(max(r, 1), full))
