"""Data-aware factorizations: approximate a layer's response to its inputs, not its kernel.

A layer reads patches x of S channels x P taps (P = 1 for a matrix; the kernel window for
a conv; the whole map for a Flatten -> Gemm) and computes y = K x with K (T, S*P). With the
mean m and covariance S of x on calibration data, the output error of an approximation
K' is E||(K - K') x||^2 = tr((K - K') S (K - K')^T) + ||(K - K') m||^2 (Zhang et al. 2016;
Denton et al. 2014). Where the layer has (or may be given) a bias, the second term is
removed exactly by shifting the bias by (K - K') m, so the factors are fitted to the
covariance alone; elsewhere (MatMul) to the second moment S + m m^T.

The factors of a Tucker-2 layer y = U G (B (x) I_P) x, with B (R3, S) the input 1x1 conv,
G the core and U (T, R4) the output 1x1 conv:

1. B from HOOI of the kernel whitened by the inputs' channel covariance C (the taps'
   average block of S): the optimum when the taps are uncorrelated; B = V^T C^(-1/2).
2. Given B, the best unconstrained map of the projected patches z = (B (x) I) x is
   W* = K S A (A^T S A)^+ with A = B^T (x) I_P (least squares over the full patch
   covariance, so the taps' correlation counts), and U holds the top R4 eigenvectors of
   W* (A^T S A) W*^T; the core is U^T W*. With B = I, W* = K, so a full-rank fit is exact on
   every input, not only on the data. Tucker-1 and SVD are the cases B = I.

``PatchStats`` holds either the full patch covariance (S*P x S*P) or, for layers too large
for it, the channel covariance alone (S x S; the taps then count as uncorrelated). Plain
numpy, like the rest of ``numeric``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wnc_onnx.analyze.numeric.gram import mode_gram, sym_eig_top
from wnc_onnx.analyze.numeric.tucker import tucker2

RIDGE = 1e-6  # eigenvalues below RIDGE * the largest count as zero (directions the data never excite)


def sqrt_psd(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C^(1/2) and its pseudo-inverse for a symmetric PSD matrix (float64)."""
    c = np.asarray(c, dtype=np.float64)
    c = (c + c.T) / 2
    vals, vecs = np.linalg.eigh(c)
    top = float(vals.max()) if vals.size else 0.0
    keep = vals > RIDGE * top if top > 0 else np.zeros_like(vals, dtype=bool)
    root = np.sqrt(np.where(keep, vals, 0.0))
    inv = np.divide(1.0, root, out=np.zeros_like(root), where=keep)
    return (vecs * root) @ vecs.T, (vecs * inv) @ vecs.T


def pinv_psd(g: np.ndarray) -> np.ndarray:
    """The pseudo-inverse of a symmetric PSD matrix, RIDGE-relative cut-off."""
    g = (g + g.T) / 2
    top = float(np.abs(g).max()) if g.size else 0.0
    return np.linalg.pinv(g, rcond=RIDGE, hermitian=True) if top > 0 else np.zeros_like(g)


@dataclass(frozen=True)
class PatchStats:
    """Mean and covariance of a layer's input patches: S channels x P taps, channel-major.

    ``cov`` is (S*P, S*P) (full) or (S, S) (channel only: every tap with the same channel
    covariance, taps uncorrelated); ``mean`` is (S*P,) or (S,) accordingly."""

    cov: np.ndarray
    mean: np.ndarray
    channels: int
    taps: int
    count: int = 0  # the patch vectors they came from

    @property
    def full(self) -> bool:
        return self.cov.shape[0] == self.channels * self.taps

    def group(self, g: int, s: int) -> PatchStats:
        """The statistics of input channels [g*s, (g+1)*s) (grouped convolutions)."""
        width = s * self.taps if self.full else s
        sl = slice(g * width, (g + 1) * width)
        return PatchStats(self.cov[sl, sl], self.mean[sl], s, self.taps, self.count)

    def moment(self, centered: bool) -> np.ndarray:
        """The covariance, or the second moment E[x x^T] (float64)."""
        cov = np.asarray(self.cov, dtype=np.float64)
        return cov if centered else cov + np.outer(self.mean, self.mean)

    def channel(self, centered: bool) -> np.ndarray:
        """(S, S): the channel block averaged over the taps."""
        m = self.moment(centered)
        return _channel_block(m, self.channels, self.taps) if self.full else m

    def patch_mean(self) -> np.ndarray:
        """(S, P)."""
        m = self.mean.reshape(self.channels, -1)
        return m if m.shape[1] == self.taps else np.repeat(m, self.taps, axis=1)


_CHUNK = 1 << 22  # elements of D per float32 product in _quad: its temporaries stay small
_BIG = 1 << 24  # kernels with more elements than this (VGG's fc6: 103M) are fitted in float32


def fit_dtype(size: int) -> type[np.floating]:
    """float64 for the fit's kernel-sized arrays, float32 for big kernels (memory)."""
    return np.float32 if size > _BIG else np.float64


def _quad(d3: np.ndarray, sigma: np.ndarray, full: bool) -> float:
    """tr(D Sigma D^T) for D (T, S, P) under a full (S*P) or channel (S) Sigma, summed over
    the taps. Runs in Sigma's own float32, a block of rows of D at a time: D is formed in
    float64 first, so nothing cancels."""
    total = 0.0
    step = max(1, _CHUNK // max(d3[0].size, 1)) if len(d3) else 1
    for lo in range(0, len(d3), step):
        c = d3[lo : lo + step].astype(sigma.dtype)
        if full:
            cm = c.reshape(len(c), -1)
            total += float(np.sum((cm @ sigma) * cm, dtype=np.float64))
        else:
            total += float(np.sum(np.tensordot(sigma, c, axes=(1, 1)) * c.transpose(1, 0, 2), dtype=np.float64))
    return total


def error_terms(
    kernel: np.ndarray, approx: np.ndarray, stats: PatchStats, shifted: bool, den: float | None = None
) -> tuple[float, float]:
    """(E||y - y'||^2, E||y||^2) for y = K x (no bias), y' = K' x (+ the bias shift when
    ``shifted``); ``den``: E||y||^2 when already known."""
    t, dt = kernel.shape[0], fit_dtype(kernel.size)
    k3 = np.asarray(kernel, dtype=dt).reshape(t, stats.channels, -1)
    return _error_of(k3 - np.asarray(approx, dtype=dt).reshape(k3.shape), k3, stats, shifted, den)


def _error_of(
    d3: np.ndarray, k3: np.ndarray, stats: PatchStats, shifted: bool, den: float | None
) -> tuple[float, float]:
    """error_terms from the difference D = K - K' (T, S, P)."""
    m = stats.patch_mean()
    num = _quad(d3, stats.cov, stats.full)
    if not shifted:
        num += float(np.sum(np.einsum("tsp,sp->t", d3, m, optimize=True) ** 2))
    if den is None:
        den = _quad(k3, stats.cov, stats.full) + float(np.sum(np.einsum("tsp,sp->t", k3, m, optimize=True) ** 2))
    return max(num, 0.0), den


def relative(num: float, den: float) -> float:
    return math.sqrt(num / den) if den > 0 else 0.0


@dataclass(frozen=True)
class DataFit:
    """A layer's factors fitted to its inputs (one group). ``u_in`` is None at full input rank."""

    u_in: np.ndarray | None  # (S, R3): the input 1x1 conv's weight, transposed (oblique)
    core: np.ndarray  # (R4, R3 or S, *spatial)
    u_out: np.ndarray  # (T, R4), orthonormal columns
    shift: np.ndarray | None  # (T,): add to the bias (the mean's error), when fitted to the covariance
    kernel_error: float  # ||K - K'|| / ||K||
    out_error: float  # relative output error on the data (with the shift)
    terms: tuple[float, float]  # error_terms of the fit
    iterations: int = 0

    def reconstruct(self) -> np.ndarray:
        r4 = self.u_out.shape[1]
        k3 = _compose(self.u_out, self.core.reshape(r4, self.core.shape[1], -1), self.u_in)
        return k3.reshape(k3.shape[:2] + self.core.shape[2:])


def _compose(u_out: np.ndarray, core3: np.ndarray, u_in: np.ndarray | None) -> np.ndarray:
    """The kernel (T, S, P) of output 1x1 u_out, core (R4, R3 or S, P) and input 1x1 u_in^T."""
    k3 = np.einsum("ab,brp->arp", u_out, core3, optimize=True)
    return k3 if u_in is None else np.einsum("arp,sr->asp", k3, u_in, optimize=True)


def _channel_block(sigma: np.ndarray, s: int, p: int) -> np.ndarray:
    """(S, S): the channel block of a full (S*P)^2 matrix, averaged over the taps."""
    return sigma if p == 1 else np.einsum("apbp->ab", sigma.reshape(s, p, s, p)) / p


def _kron_products(sigma: np.ndarray, b: np.ndarray, s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Sigma A (S*P, R*P) and A^T Sigma A (R*P, R*P) for A = B (x) I_P, B (S, R), without
    forming A: (S P)^2 R products instead of (S P)^2 R P."""
    r = b.shape[1]
    sa = np.einsum("apbq,br->aprq", sigma.reshape(s, p, s, p), b, optimize=True).reshape(s * p, r * p)
    return sa, (b.T @ sa.reshape(s, -1)).reshape(r * p, r * p)


def _whitened(k3: np.ndarray, sigma: np.ndarray, full: bool) -> tuple[np.ndarray, np.ndarray]:
    """K (T, S, P) with its input channels whitened by the channel covariance C: K x_2 C^(1/2)
    (in K's dtype), and C^(-1/2), which maps a factor of it back."""
    s, p = k3.shape[1:]
    half, inv_half = sqrt_psd(_channel_block(sigma, s, p) if full else sigma)
    return np.einsum("tup,us->tsp", k3, half.astype(k3.dtype), optimize=True), inv_half


def data_fit(
    kernel: np.ndarray,
    r_in: int | None,
    r_out: int,
    stats: PatchStats,
    *,
    centered: bool = True,
    max_iter: int = 20,
    tol: float = 1e-5,
) -> DataFit:
    """Factors of ``kernel`` (T, S, *spatial), or of a matrix (T, S) with y = W x, that minimize
    the output error on the data: Tucker-2 when ``r_in`` < S, else Tucker-1 / SVD (input side
    whole). ``centered``: fit the covariance and return the bias shift that removes the mean's error."""
    dt = fit_dtype(np.size(kernel))
    k = np.asarray(kernel, dtype=dt)
    t, s = k.shape[:2]
    p = int(np.prod(k.shape[2:])) if k.ndim > 2 else 1
    if s != stats.channels or p != stats.taps:
        raise ValueError(f"kernel {k.shape} does not match statistics of {stats.channels} x {stats.taps}")
    k3 = k.reshape(t, s, p)
    sigma, full = np.asarray(stats.moment(centered), dtype=np.float64), stats.full  # stored as float32
    iterations = 0
    u_in = None
    if r_in is not None and r_in < s:
        kw, inv_half = _whitened(k3, sigma, full)
        tw = tucker2(kw.reshape(k.shape), r_in, min(r_out, t), max_iter=max_iter, tol=tol)
        del kw
        u_in, iterations = inv_half @ tw.u_in, tw.iterations
    if u_in is not None and not full:
        # channel statistics (taps uncorrelated): the error is the whitened kernel's Frobenius
        # error, so HOOI's own core and output factor are the optimum given B
        core, u_out = tw.core.reshape(tw.core.shape[0], tw.core.shape[1], p), tw.u_out
    else:
        if u_in is None:  # W* = K: exact at full rank on every input
            w3, g = k3, sigma
        else:
            sa, g = _kron_products(sigma, u_in, s, p)
            w3 = ((k3.reshape(t, -1) @ sa) @ pinv_psd(g)).reshape(t, -1, p)
        if full:
            wm = w3.reshape(t, -1)
            gg = wm @ g @ wm.T
        else:
            gw = np.einsum("rq,bqp->brp", g, w3, optimize=True)
            gg = w3.reshape(t, -1) @ gw.reshape(t, -1).T
        u_out = np.eye(t) if r_out >= t else sym_eig_top((gg + gg.T) / 2, r_out)[1]
        core = np.einsum("tr,tqp->rqp", u_out, w3, optimize=True)  # (R4, R3 or S, P)
    diff = _compose(u_out.astype(dt), core.astype(dt), None if u_in is None else u_in.astype(dt))  # K', then K - K'
    np.subtract(k3, diff, out=diff)
    shift = np.einsum("tsp,sp->t", diff, stats.patch_mean(), optimize=True) if centered else None
    num, den = _error_of(diff, k3, stats, shifted=centered, den=None)
    norm = float(np.linalg.norm(k3))
    kern = float(np.linalg.norm(diff)) / norm if norm > 0 else 0.0
    del diff
    core = core.reshape(core.shape[:2] + k.shape[2:])
    return DataFit(u_in, core, u_out, shift, kern, relative(num, den), (num, den), iterations)


def data_spectra(kernel: np.ndarray, stats: PatchStats, centered: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The data's counterparts of a kernel's mode-Gram spectra (descending): the eigenvalues of
    the output covariance K Sigma K^T, whose sum past R is the least output error any rank-R
    output 1x1 leaves, and (kernels with taps) of the input-mode Gram of the kernel whitened by
    the channel covariance, the same for the input 1x1 when the taps are uncorrelated. Their
    sums are the output's variance (its second moment when not ``centered``), so the forms'
    modelled errors become output errors on the data relative to it."""
    t = kernel.shape[0]
    s, p = stats.channels, stats.taps
    dt = fit_dtype(np.size(kernel))
    k3 = np.asarray(kernel, dtype=dt).reshape(t, s, p)
    sigma = stats.moment(centered)
    if stats.full:
        km = k3.reshape(t, -1)
        out = km @ sigma.astype(dt) @ km.T
    else:
        ks = np.einsum("tsp,sq->tqp", k3, sigma.astype(dt), optimize=True)
        out = ks.reshape(t, -1) @ k3.reshape(t, -1).T
    outer = np.clip(np.linalg.eigvalsh((out + out.T) / 2)[::-1], 0.0, None).astype(np.float64)
    if kernel.ndim < 3:
        return outer, None
    inner = np.clip(np.linalg.eigvalsh(mode_gram(_whitened(k3, sigma, stats.full)[0], 1))[::-1], 0.0, None)
    return outer, inner
