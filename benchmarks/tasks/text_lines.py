"""Rendered text lines: what OCR models read, with the text known.

Each line is a random mix of English words, numbers and punctuation drawn in one of the DejaVu
fonts (Debian's fonts-dejavu; Pillow's own default font where they are missing) at a random
size, dark on a light background with a little noise and blur, cropped to the text with a
margin. ``rotated=True`` turns half of them upside down (the 180-degree case of a text-direction
classifier) and says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("DejaVu*.ttf"))
_WORD_TEXT = (
    "the of and to in is was for on are with as by at from or an be this which have not had but were all "
    "their one been has more when will would there can said each about into than them some time two may "
    "first only new very after also made many where most over such years through back much before good "
    "under invoice total amount date page number order price receipt customer account report section "
    "table figure street road city phone email www com net org data model image text line box value"
)
WORDS = _WORD_TEXT.split()


@dataclass
class Lines:
    images: list[Image.Image]  # RGB, each one line
    texts: list[str]
    upside_down: np.ndarray  # bool per line (rotated=True), else all False


def _font(rng: np.random.Generator, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if FONTS:
        return ImageFont.truetype(str(FONTS[int(rng.integers(len(FONTS)))]), size)
    return ImageFont.load_default(size=size)


def _text(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(int(rng.integers(2, 7))):
        r = rng.random()
        if r < 0.7:
            w = WORDS[int(rng.integers(len(WORDS)))]
            parts.append(w.capitalize() if rng.random() < 0.2 else w)
        elif r < 0.9:
            parts.append(str(int(rng.integers(0, 100000))))
        else:
            parts.append(f"{rng.integers(1, 99)}.{rng.integers(0, 99):02d}")
    return " ".join(parts) + ("." if rng.random() < 0.3 else "")


def render(n: int, seed: int = 0, rotated: bool = False) -> Lines:
    rng = np.random.default_rng(seed)
    images, texts, flips = [], [], []
    for _ in range(n):
        text = _text(rng)
        font = _font(rng, int(rng.integers(22, 40)))
        box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
        w, h = box[2] - box[0], box[3] - box[1]
        pad = int(rng.integers(4, 12))
        bg = tuple(int(v) for v in rng.integers(200, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 70, 3))
        im = Image.new("RGB", (w + 2 * pad, h + 2 * pad), bg)
        ImageDraw.Draw(im).text((pad - box[0], pad - box[1]), text, font=font, fill=fg)
        if rng.random() < 0.5:
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (im.height, im.width, 3))
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        flip = bool(rotated and rng.random() < 0.5)
        images.append(im.rotate(180) if flip else im)
        texts.append(text)
        flips.append(flip)
    return Lines(images, texts, np.asarray(flips))
