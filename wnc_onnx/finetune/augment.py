"""Simple augmentations of image inputs for fine-tuning (``--augment``), off by default.

They apply to every input shaped like images, (N, 1 or 3, H, W) floats, batch by batch, before
the teacher sees the batch: with distillation the teacher labels the augmented input, so no
label has to stay true under it. ``crop`` takes a random region of 60-100% of the area (aspect
3:4 to 4:3) and resizes it back (bilinear); ``color`` scales each image's contrast and shifts
its brightness (about 20%); ``flip`` mirrors left-right and ``rotate`` turns by 90 degrees (square
inputs only): those two change some tasks' answers (text, digits, left/right), so they run only
when named.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wnc_onnx.errors import WncError

KINDS = ("crop", "color", "flip", "rotate")


def check(kinds: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise WncError(f"--augment {','.join(kinds)}: unknown {bad}", f"choose from {', '.join(KINDS)}")
    return tuple(dict.fromkeys(kinds))


def _is_image(x: np.ndarray) -> bool:
    return x.ndim == 4 and x.shape[1] in (1, 3) and np.issubdtype(x.dtype, np.floating) and min(x.shape[2:]) >= 4


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of one (C, h0, w0) image to (C, h, w), pixel centres aligned."""
    c, h0, w0 = x.shape
    ys = np.clip((np.arange(h) + 0.5) * h0 / h - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(w) + 0.5) * w0 / w - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    wy, wx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(x.dtype)


def _crop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c, h, w = x.shape
    area = rng.uniform(0.6, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, max(2, round(np.sqrt(area / aspect)))))
    cw = int(min(w, max(2, round(np.sqrt(area * aspect)))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return _resize(x[:, top : top + ch, left : left + cw], h, w)


def _color(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    spread = float(x.std()) or 1.0
    return ((x - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.2, 0.2) * spread).astype(x.dtype)


def apply(kinds: tuple[str, ...], feeds: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``feeds`` with every image-shaped input augmented, each sample on its own draw."""
    if not kinds:
        return feeds
    out = dict(feeds)
    for name, x in feeds.items():
        if not _is_image(x):
            continue
        y = x.copy()
        for i in range(len(y)):
            if "crop" in kinds:
                y[i] = _crop(y[i], rng)
            if "color" in kinds:
                y[i] = _color(y[i], rng)
            if "flip" in kinds and rng.random() < 0.5:
                y[i] = y[i][:, :, ::-1]
            if "rotate" in kinds and y.shape[2] == y.shape[3]:
                y[i] = np.rot90(y[i], int(rng.integers(4)), axes=(1, 2))
        out[name] = y
    return out
