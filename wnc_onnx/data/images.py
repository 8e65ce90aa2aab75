"""Training data from an image folder: one subfolder per class, images decoded lazily per batch.

Layout (the usual one for classification data sets)::

    root/
        cat/  a.jpg  b.png  more/c.jpeg
        dog/  d.jpg ...

Class names are the subfolder names, sorted, and the label of a class is its index; a
validation folder passes the training folder's ``classes`` so that labels agree. Images
in a class folder may sit in nested folders. Hidden files and folders, files that are not
images, and files directly in ``root`` are ignored. Pixels go through Pillow: converted to
greyscale ("L") or RGB, resized (bilinear) to exactly ``size`` = (H, W), then scaled to
``((pixels / 255) - mean) / std`` per channel, as float32 (B, channels, H, W).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from wnc_onnx.data.arrays import ArrayData
from wnc_onnx.errors import WncError, one_line

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
MODES = {1: "L", 3: "RGB"}  # channels -> Pillow mode
REPLACE = "remove or replace the file (re-save it as PNG or JPEG)"

PathLike = str | os.PathLike[str]


def pillow() -> ModuleType:
    """``PIL.Image``; a WncError naming the install when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError:
        raise WncError("Pillow is not installed (needed to read image folders)", "pip install pillow") from None
    return Image


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


class ImageFolder:
    """One subfolder per class (sorted names -> labels 0..C-1), images decoded lazily per batch."""

    labeled = True

    def __init__(
        self,
        root: PathLike,
        size: tuple[int, int],
        channels: int,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        classes: Sequence[str] | None = None,
    ) -> None:
        self._decoding(root, size, channels, mean, std)
        folders = class_folders(self.root)
        self.classes = check_classes(classes) if classes is not None else [f.name for f in folders]
        self.files, self.labels = self.scan(folders)
        if len(self.classes) < 2:
            log.warning(
                "%s: only %d class(es) %s; classification needs at least 2", self.name, len(self.classes), self.classes
            )

    def _decoding(
        self, root: PathLike, size: tuple[int, int], channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.root = Path(root)
        self.name = str(root)
        self.size = check_size(size)
        self.channels = channels
        self.mode = check_channels(channels)
        self.mean = per_channel(mean, channels, "mean")
        self.std = per_channel(std, channels, "std")
        if np.any(self.std == 0):
            raise WncError(
                f"std {np.ravel(std).tolist()} contains 0 (it divides the pixels)", "pass non-zero std values"
            )
        self.image = pillow()

    def scan(self, folders: list[Path]) -> tuple[list[Path], np.ndarray]:
        """The image files of each class folder, and their labels."""
        index = {name: i for i, name in enumerate(self.classes)}
        files: list[Path] = []
        labels: list[int] = []
        for folder in folders:
            if folder.name not in index:
                raise WncError(
                    f"{self.root}: folder {folder.name!r} is not one of the classes {self.classes}",
                    "remove the folder, or give the same class folders as the training data",
                )
            images = images_under(folder)
            if not images:
                raise WncError(
                    f"{self.root}: class folder {folder.name!r} holds no images "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})",
                    "add images to it or remove the folder",
                )
            files += images
            labels += [index[folder.name]] * len(images)
        return files, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, order: Sequence[int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Batches (x, y), decoded one batch at a time; the order rule of ``ArrayData.batches``;
        y is None for a folder without labels."""
        if batch_size < 1:
            raise WncError(f"batch size must be at least 1, got {batch_size}", "pass a positive batch size")
        if order is None:
            order = np.random.default_rng(seed).permutation(len(self)).tolist() if shuffle else range(len(self))
        picks = np.asarray(order, dtype=np.int64)
        for start in range(0, len(picks), batch_size):
            idx = picks[start : start + batch_size]
            yield self.decode([self.files[i] for i in idx]), (self.labels[idx] if self.labeled else None)

    def to_arrays(self) -> ArrayData:
        """Every image decoded at once (N * channels * H * W float32 in memory)."""
        return ArrayData(self.decode(self.files), self.labels.copy(), self.name)

    def decode(self, paths: Sequence[Path]) -> np.ndarray:
        """Images as normalised float32 (len(paths), channels, H, W)."""
        h, w = self.size
        out = np.empty((len(paths), self.channels, h, w), dtype=np.float32)
        for k, path in enumerate(paths):
            out[k] = self.pixels(path).reshape(h, w, self.channels).transpose(2, 0, 1)
        out *= np.float32(1 / 255)
        out -= self.mean
        out /= self.std
        return out

    def pixels(self, path: Path) -> np.ndarray:
        """One image as uint8 (H, W) or (H, W, 3): EXIF-rotated, converted, then resized to ``size``."""
        h, w = self.size
        try:
            from PIL import ImageOps

            with self.image.open(path) as src:  # upright as a viewer shows it (phone photos carry EXIF rotation)
                im = ImageOps.exif_transpose(src).convert(self.mode)
            if im.size != (w, h):
                im = im.resize((w, h), self.image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # Pillow raises several types for unreadable or damaged files
            raise WncError(f"cannot read image {path}: {one_line(exc)}", REPLACE) from None

    def verify(self) -> None:
        """Open every file's header (cheap, no pixel decoding): an unreadable file fails now, not mid-epoch.

        Truncated pixel data is only found when the image is decoded in ``batches``."""
        for path in self.files:
            try:
                with self.image.open(path):
                    pass
            except Exception as exc:
                raise WncError(f"cannot read image {path}: {one_line(exc)}", REPLACE) from None


load_image_folder = ImageFolder  # the function-style name used by the CLI and the README


class UnlabeledImages(ImageFolder):
    """Every image under ``root``, class folders or not (calibration and distillation need no labels)."""

    labeled = False

    def __init__(
        self,
        root: PathLike,
        size: tuple[int, int],
        channels: int,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        self._decoding(root, size, channels, mean, std)
        self.classes = []
        self.files = images_under(self.root)
        self.labels = np.zeros(len(self.files), dtype=np.int64)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    ok = len(size) == 2 and all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in size)
    if not ok:
        raise WncError(f"image size must be two positive integers (H, W), got {size!r}", "e.g. size=(224, 224)")
    return int(size[0]), int(size[1])


def check_channels(channels: int) -> str:
    if channels not in MODES:
        raise WncError(
            f"images can be read with 1 (greyscale) or 3 (RGB) channels, not {channels!r}",
            "pass channels=1 or 3 (the model input's channel count)",
        )
    return MODES[channels]


def per_channel(values: Sequence[float] | float, channels: int, what: str) -> np.ndarray:
    """``values`` (one, or one per channel) as float32 (channels, 1, 1)."""
    try:
        vals = [float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()]
    except (TypeError, ValueError):
        raise WncError(f"{what} {values!r} is not a list of numbers", f"e.g. {what}=(0.5, 0.5, 0.5)") from None
    if len(vals) not in (1, channels):
        raise WncError(
            f"{what} has {len(vals)} values for {channels}-channel images",
            f"give one {what} value or {channels} (one per channel)",
        )
    if not all(math.isfinite(v) for v in vals):
        raise WncError(f"{what} {vals} is not finite", f"pass finite {what} values")
    return np.broadcast_to(np.asarray(vals, dtype=np.float32), (channels,)).reshape(channels, 1, 1).copy()


def check_classes(classes: Sequence[str]) -> list[str]:
    names = list(classes)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WncError(f"class list names {dupes} more than once", "give each class once")
    return names


def visible(path: Path) -> bool:
    return not path.name.startswith(".")


def class_folders(root: Path) -> list[Path]:
    """The non-hidden subfolders of ``root``, sorted by name; files directly in ``root`` are logged and skipped."""
    if not root.exists():
        raise WncError(f"image folder not found: {root}", "check the path")
    if not root.is_dir():
        raise WncError(f"image folder is not a directory: {root}", "pass a folder holding one subfolder per class")
    entries = sorted((p for p in root.iterdir() if visible(p)), key=lambda p: p.name)
    folders = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if not p.is_dir()]
    if loose:
        n_img = sum(is_image(p) for p in loose)
        level = logging.WARNING if n_img else logging.INFO
        log.log(level, "%s: ignored %d file(s) (%d images) not in a class folder", root, len(loose), n_img)
    if not folders:
        raise WncError(
            f"{root} has no class subfolders" + (f" (only {len(loose)} loose file(s))" if loose else ""),
            "put the images of each class in their own subfolder: root/<class>/<image>",
        )
    return folders


def images_under(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its non-hidden subfolders, sorted by path."""
    found: list[Path] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath, name)
            if is_image(p):
                found.append(p)
            elif visible(p):
                skipped += 1
    if skipped:
        log.info("%s: ignored %d file(s) that are not images", folder, skipped)
    return sorted(found)
