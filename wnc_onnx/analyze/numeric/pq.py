"""Product quantization of a weight matrix (Jégou et al. 2011; Gong et al. 2014; Stock et al. 2019).

Each row of a matrix (one output unit's weights) is cut into sub-vectors of ``d``
consecutive entries (the last padded with zeros when ``d`` does not divide the row).
k-means learns ``k`` centroids, and every sub-vector is stored as the index of its
nearest one. Two codebook layouts:

* ``layer``: one codebook of ``k`` x ``d`` for all the sub-vectors of the weight (Stock et al.);
* ``subspace``: one codebook per column block of sub-vectors (Gong et al.): ``m`` times
  as many floats, closer fits.

k-means runs on at most ``SAMPLE_PER_CENTROID * k`` sub-vectors drawn with a fixed seed
(faiss trains on the same number by default) with a k-means++ start, then every
sub-vector is assigned to its nearest centroid. Backends: scikit-learn (default) and
faiss (optional, ``pip install faiss-cpu``); see docs/pq.md for the measurements that
chose them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("layer", "subspace")
BACKENDS = ("sklearn", "faiss")
SAMPLE_PER_CENTROID = 256
MAX_K = 256  # codes are uint8
KMEANS_ITERS = 25


@dataclass(frozen=True)
class PQResult:
    """A matrix (rows x cols) as codes (rows x m, values < k) and codebooks (n_books x k x d)."""

    codes: np.ndarray  # uint8 (rows, m)
    codebooks: np.ndarray  # float32 (1, k, d) for "layer", (m, k, d) for "subspace"
    cols: int  # the row length before padding
    rel_error: float  # ||W - Q(W)||_F / ||W||_F

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def m(self) -> int:
        return int(self.codes.shape[1])

    @property
    def k(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def d(self) -> int:
        return int(self.codebooks.shape[2])

    @property
    def layout(self) -> str:
        return "layer" if self.codebooks.shape[0] == 1 else "subspace"

    @property
    def padded(self) -> bool:
        return self.m * self.d != self.cols

    def reconstruct(self) -> np.ndarray:
        """The dequantized matrix (rows x cols), float32."""
        return dequantize(self.codes, self.codebooks, self.cols)


def dequantize(codes: np.ndarray, codebooks: np.ndarray, cols: int) -> np.ndarray:
    idx = codes.astype(np.int64)
    if codebooks.shape[0] > 1:
        idx = idx + np.arange(codes.shape[1], dtype=np.int64) * codebooks.shape[1]
    flat = codebooks.reshape(-1, codebooks.shape[2])
    return flat[idx].reshape(codes.shape[0], -1)[:, :cols]


def code_bytes(n_codes: int, k: int) -> int:
    """Bytes of ``n_codes`` codes: one byte each, half a byte where k <= 16 and the count is even."""
    return n_codes // 2 if packs4(n_codes, k) else n_codes


def packs4(n_codes: int, k: int) -> bool:
    return k <= 16 and n_codes % 2 == 0


def stored_bytes(rows: int, cols: int, d: int, k: int, layout: str, float_bytes: int = 4) -> int:
    """Bytes PQ stores for a rows x cols weight: codes plus codebooks."""
    m = math.ceil(cols / d)
    books = m if layout == "subspace" else 1
    return code_bytes(rows * m, k) + books * k * d * float_bytes


def subvectors(matrix: np.ndarray, d: int) -> np.ndarray:
    """(rows, m, d) float32: each row cut into ``d``-long pieces, zero-padded at the end."""
    w = np.asarray(matrix, dtype=np.float32)
    rows, cols = w.shape
    m = math.ceil(cols / d)
    if m * d != cols:
        w = np.pad(w, ((0, 0), (0, m * d - cols)))
    return w.reshape(rows, m, d)


def kmeans(x: np.ndarray, k: int, seed: int = 0, backend: str = "sklearn") -> np.ndarray:
    """``k`` centroids (k x d, float32) of the rows of ``x``, fitted on a seeded sample."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if k > n:
        raise ValueError(f"k={k} is larger than the number of vectors ({n})")
    rng = np.random.default_rng(seed)
    cap = SAMPLE_PER_CENTROID * k
    sample = x[np.sort(rng.choice(n, cap, replace=False))] if n > cap else x
    if backend == "sklearn":
        import warnings

        from sklearn.cluster import KMeans

        with warnings.catch_warnings():  # duplicate points: fewer distinct clusters than k, harmless
            warnings.simplefilter("ignore")
            km = KMeans(k, init="k-means++", n_init=1, max_iter=KMEANS_ITERS, random_state=seed).fit(sample)
        return np.asarray(km.cluster_centers_, dtype=np.float32)
    if backend == "faiss":
        import faiss

        fk = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITERS, seed=seed, max_points_per_centroid=SAMPLE_PER_CENTROID)
        fk.train(sample)
        return np.asarray(fk.centroids, dtype=np.float32)
    raise ValueError(f"unknown k-means backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 1 << 16, backend: str = "sklearn") -> np.ndarray:
    """Index of the nearest centroid of each row of ``x`` (squared Euclidean), in chunks."""
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        _, found = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
        return found[:, 0].astype(np.int64)
    from sklearn.metrics import pairwise_distances_argmin

    out = np.empty(len(x), dtype=np.int64)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = pairwise_distances_argmin(x[i : i + chunk], centroids)
    return out


def product_quantize(
    matrix: np.ndarray, d: int, k: int, layout: str = "layer", seed: int = 0, backend: str = "sklearn"
) -> PQResult:
    """Product-quantize ``matrix`` (rows x cols) with sub-vectors of ``d`` and ``k`` centroids."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown codebook layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not 1 <= k <= MAX_K or d < 1:
        raise ValueError(f"need 1 <= k <= {MAX_K} and d >= 1, got k={k}, d={d}")
    w = np.asarray(matrix, dtype=np.float32)
    sub = subvectors(w, d)
    rows, m, _ = sub.shape
    if layout == "layer":
        flat = sub.reshape(-1, d)
        books = kmeans(flat, k, seed, backend)[None]
        codes = nearest(flat, books[0], backend=backend).reshape(rows, m)
    else:
        if k > rows:
            raise ValueError(f"k={k} is larger than the number of vectors per sub-space ({rows})")
        books = np.empty((m, k, d), dtype=np.float32)
        codes = np.empty((rows, m), dtype=np.int64)
        for j in range(m):
            books[j] = kmeans(sub[:, j], k, seed + j, backend)
            codes[:, j] = nearest(sub[:, j], books[j], backend=backend)
    codes8 = codes.astype(np.uint8)
    approx = dequantize(codes8, books, w.shape[1])
    norm = float(np.linalg.norm(w))
    err = float(np.linalg.norm(w - approx)) / norm if norm > 0 else 0.0
    return PQResult(codes8, books, int(w.shape[1]), err)


def pack4(codes: np.ndarray) -> np.ndarray:
    """Codes < 16, flattened, two per byte: the first half in the high nibbles, the second in the low."""
    flat = codes.reshape(-1).astype(np.uint8)
    half = len(flat) // 2
    if len(flat) % 2 or flat.max(initial=0) > 15:
        raise ValueError("pack4 needs an even number of codes below 16")
    return ((flat[:half] << 4) | flat[half:]).astype(np.uint8)


def unpack4(packed: np.ndarray) -> np.ndarray:
    return np.concatenate([packed >> 4, packed & 15]).astype(np.uint8)


def scalar_quantize(matrix: np.ndarray, k: int, seed: int = 0, backend: str = "sklearn") -> PQResult:
    """Scalar k-means (Gong et al.'s baseline): product quantization with d = 1."""
    return product_quantize(matrix, 1, k, "layer", seed, backend)
