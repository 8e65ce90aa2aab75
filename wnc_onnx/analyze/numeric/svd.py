"""Truncated SVD of a weight matrix through the Gram matrix of its small side."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wnc_onnx.analyze.numeric.gram import Spectrum, mode_gram, sym_eig_top, work_dtype


@dataclass(frozen=True)
class LowRankFactors:
    """W (m x n) ~= left @ right, left (m x r), right (r x n), balanced scales."""

    left: np.ndarray
    right: np.ndarray
    rel_error: float

    def reconstruct(self) -> np.ndarray:
        return np.asarray(self.left @ self.right)


def truncated_svd(
    matrix: np.ndarray, rank: int, gram: np.ndarray | None = None, spectrum: Spectrum | None = None
) -> LowRankFactors:
    """Best rank-``rank`` approximation, split as U sqrt(s) and sqrt(s) V^T.

    ``gram`` may hold the Gram matrix of the smaller side (W W^T if m <= n, else W^T W),
    ``spectrum`` its known spectrum.
    """
    w = np.asarray(matrix)
    m, n = w.shape
    tall = m > n
    a = w.T if tall else w  # (small, large)
    small, large = a.shape
    r = int(min(max(rank, 1), small))
    g = mode_gram(a, 0) if gram is None else gram
    vals, u = sym_eig_top(g, r, spectrum)
    dt = work_dtype(small, large)
    proj = np.asarray(u.T.astype(dt) @ a.astype(dt, copy=False), dtype=np.float64)  # (r, large)
    sv = np.sqrt(vals)
    inv = np.divide(1.0, np.sqrt(sv), out=np.zeros_like(sv), where=sv > 0)
    left = u * np.sqrt(sv)  # (small, r)
    right = proj * inv[:, None]  # (r, large)
    norm2 = float(np.trace(g))
    err = math.sqrt(max(norm2 - float(vals.sum()), 0.0) / norm2) if norm2 > 0 else 0.0
    if tall:  # W = a^T ~= right^T left^T
        return LowRankFactors(left=right.T, right=left.T, rel_error=err)
    return LowRankFactors(left=left, right=right, rel_error=err)
