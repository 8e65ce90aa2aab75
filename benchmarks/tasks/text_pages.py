"""Rendered pages with known text boxes: what a text detector reads, and how it is scored.

A page is a light, slightly noisy background with 3-7 text lines (``text_lines``' words and
fonts) at random sizes and positions that never overlap; the box of each line's ink is the
truth. ``db_boxes`` is the differentiable-binarization post-processing PP-OCR's detector is
used with (threshold the probability map at 0.3, keep the regions whose mean probability is at
least 0.5, grow each by the unclip distance area * 1.5 / perimeter), simplified to axis-aligned
boxes, which is exact for horizontal text. ``f_score`` matches boxes one to one at IoU >= 0.5
(the ICDAR rule) and gives the harmonic mean of precision and recall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from benchmarks.tasks.text_lines import _font, _text

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


@dataclass
class Pages:
    images: list[Image.Image]  # RGB, size x size
    boxes: list[list[Box]]


def render(n: int, seed: int = 0, size: int = 320) -> Pages:
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for _ in range(n):
        page = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(page)
        taken: list[Box] = []
        for _ in range(int(rng.integers(3, 8))):
            for _ in range(20):  # a free place, or give this line up
                text = _text(rng)[: int(rng.integers(8, 30))].strip()
                font = _font(rng, int(rng.integers(14, 30)))
                left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
                w, h = right - left, bottom - top
                if not text or w >= size - 8 or h >= size - 8:
                    continue
                x, y = int(rng.integers(4, size - w - 4)), int(rng.integers(4, size - h - 4))
                box = (x, y, x + w, y + h)
                if all(_iou(box, o) == 0 and not _near(box, o, 6) for o in taken):
                    fg = tuple(int(v) for v in rng.integers(0, 70, 3))
                    draw.text((x - left, y - top), text, font=font, fill=fg)
                    taken.append(box)
                    break
        if rng.random() < 0.5:
            page = page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
        arr = np.asarray(page, np.float32) + rng.normal(0, 5, (size, size, 3))
        images.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
        boxes.append(taken)
    return Pages(images, boxes)


def det_input(images: list[Image.Image]) -> np.ndarray:
    """PP-OCR's detector input: BGR, x / 255 normalized by its mean and std (ImageNet's, in that
    order over the BGR channels, as PaddleOCR applies them), NCHW."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    arr = np.stack([np.asarray(im.convert("RGB"), np.float32)[:, :, ::-1] / 255 for im in images])
    return ((arr - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.5) -> list[Box]:
    """Boxes from one (H, W) probability map."""
    labels, count = ndimage.label(prob > thresh)
    out = []
    for k, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        ys, xs = found
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < 3 or prob[found][labels[found] == k].mean() < box_thresh:
            continue
        d = w * h * unclip / (2 * (w + h))
        H, W = prob.shape
        out.append(
            (
                max(0, round(xs.start - d)),
                max(0, round(ys.start - d)),
                min(W, round(xs.stop + d)),
                min(H, round(ys.stop + d)),
            )
        )
    return out


def _iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _near(a: Box, b: Box, gap: int) -> bool:
    return _iou((a[0] - gap, a[1] - gap, a[2] + gap, a[3] + gap), b) > 0


def f_score(found: list[list[Box]], truth: list[list[Box]], iou: float = 0.5) -> float:
    """Harmonic mean of precision and recall over all pages, one-to-one matches at IoU >= iou."""
    hits = n_found = n_true = 0
    for got, want in zip(found, truth, strict=True):
        n_found, n_true = n_found + len(got), n_true + len(want)
        free = list(want)
        for g in got:
            best = max(free, key=lambda t: _iou(g, t), default=None)
            if best is not None and _iou(g, best) >= iou:
                hits += 1
                free.remove(best)
    if hits == 0:
        return 0.0
    p, r = hits / n_found, hits / n_true
    return 2 * p * r / (p + r)
