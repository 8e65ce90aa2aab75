"""Image-folder training data (wnc_onnx.data.images): labels, decoding, shuffling, errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wnc_onnx.data.arrays import ArrayData
from wnc_onnx.data.images import ImageFolder, load_image_folder
from wnc_onnx.errors import WncError


def solid(path: Path, value: int | tuple[int, int, int], size: tuple[int, int] = (6, 5), mode: str = "RGB") -> Path:
    """A one-colour image of ``size`` = (W, H) (Pillow's order), written in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    """``counts[c]`` PNGs per class, each a distinct grey value, so a decoded pixel identifies its file."""
    value = 0
    for cls, n in counts.items():
        for i in range(n):
            solid(root / cls / f"{i:02d}.png", (value, value, value))
            value += 10
    return root


def grey_values(x: np.ndarray) -> list[int]:
    """The grey level (0..255) of each solid image in a batch decoded with mean 0, std 1."""
    return [int(round(v)) for v in x[:, 0, 0, 0] * 255]


# --- labels and layout -------------------------------------------------------------------


def test_labels_follow_sorted_folder_names(tmp_path):
    root = make_folder(tmp_path / "train", {"zebra": 2, "apple": 1, "mango": 3})
    data = load_image_folder(root, (4, 4), 3)
    assert data.classes == ["apple", "mango", "zebra"]
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert [p.parent.name for p in data.files] == ["apple", "mango", "mango", "mango", "zebra", "zebra"]
    assert len(data) == 6 and data.name == str(root)


def test_mixed_formats_sizes_and_ignored_files(tmp_path, caplog):
    root = tmp_path / "d"
    solid(root / "a" / "big.PNG", (1, 2, 3), size=(40, 30))
    solid(root / "a" / "grey.jpg", 90, size=(7, 9), mode="L")
    solid(root / "a" / "nested" / "deep.bmp", (5, 5, 5))
    solid(root / "b" / "x.gif", (9, 9, 9))
    solid(root / "b" / "y.tiff", (9, 9, 9))
    solid(root / "b" / "z.webp", (9, 9, 9))
    solid(root / "b" / ".hidden.png", (9, 9, 9))
    solid(root / "b" / ".cache" / "thumb.png", (9, 9, 9))
    (root / "b" / "notes.txt").write_text("not an image")
    solid(root / ".git" / "img.png", (9, 9, 9))  # a hidden folder is no class
    solid(root / "loose.png", (9, 9, 9))  # not in a class folder
    (root / "README").write_text("about the data")
    with caplog.at_level(logging.INFO, logger="wnc_onnx.data.images"):
        data = ImageFolder(root, (8, 8), 3)
    assert data.classes == ["a", "b"]
    assert sorted(p.name for p in data.files) == ["big.PNG", "deep.bmp", "grey.jpg", "x.gif", "y.tiff", "z.webp"]
    assert "ignored 2 file(s) (1 images) not in a class folder" in caplog.text
    x, y = next(data.batches(16))
    assert x.shape == (6, 3, 8, 8) and y.tolist() == data.labels.tolist()


def test_classes_argument_maps_labels(tmp_path):
    make_folder(tmp_path / "val", {"mango": 2, "zebra": 1})
    data = ImageFolder(tmp_path / "val", (3, 3), 1, classes=["apple", "mango", "zebra"])
    assert data.classes == ["apple", "mango", "zebra"]
    assert data.labels.tolist() == [1, 1, 2]
    _, y = next(data.batches(8))
    assert y.tolist() == [1, 1, 2]


# --- decoding: shapes, resize, normalisation ---------------------------------------------


def test_batch_shapes_and_dtypes(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 4, "b": 3})
    data = ImageFolder(root, (5, 7), 3)
    got = list(data.batches(3))
    assert [len(y) for _, y in got] == [3, 3, 1]
    for x, y in got:
        assert x.dtype == np.float32 and x.shape == (len(y), 3, 5, 7)
        assert y.dtype == np.int64
    x1, _ = next(ImageFolder(root, (2, 3), 1).batches(2))
    assert x1.shape == (2, 1, 2, 3)


def test_solid_image_normalised_everywhere(tmp_path):
    solid(tmp_path / "d" / "a" / "p.png", (128, 128, 128), size=(10, 7))
    solid(tmp_path / "d" / "b" / "q.png", (128, 128, 128), size=(3, 20))
    x, _ = next(ImageFolder(tmp_path / "d", (4, 5), 3, mean=(0.5,), std=(0.25,)).batches(2))
    assert x.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)


def test_per_channel_mean_and_std(tmp_path):
    solid(tmp_path / "d" / "a" / "p.png", (10, 100, 200))
    solid(tmp_path / "d" / "b" / "q.png", (10, 100, 200))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x, _ = next(ImageFolder(tmp_path / "d", (2, 2), 3, mean=mean, std=std).batches(1))
    for c, v in enumerate((10, 100, 200)):
        np.testing.assert_allclose(x[0, c], (v / 255 - mean[c]) / std[c], rtol=0, atol=1e-6)


def test_resize_is_pillow_bilinear_to_h_w(tmp_path):
    # A horizontal ramp, 12 wide and 4 high, resized to H=2, W=3: values must grow along the last axis.
    ramp = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (4, 1))
    img = Image.fromarray(ramp, mode="L")
    img.save(tmp_path / "a.png")
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    (tmp_path / "a.png").rename(tmp_path / "d" / "a" / "ramp.png")
    solid(tmp_path / "d" / "b" / "other.png", 0, mode="L")
    x, _ = next(ImageFolder(tmp_path / "d", (2, 3), 1).batches(1))
    want = np.asarray(img.resize((3, 2), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    assert x.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(x[0, 0], want, rtol=0, atol=1e-6)
    assert np.all(np.diff(x[0, 0], axis=1) > 0) and np.all(np.diff(x[0, 0], axis=0) == 0)


def test_grey_and_rgb_conversion(tmp_path):
    solid(tmp_path / "d" / "a" / "rgb.png", (200, 100, 50))
    solid(tmp_path / "d" / "b" / "grey.png", 77, mode="L")
    x1, _ = next(ImageFolder(tmp_path / "d", (3, 3), 1).batches(2))
    assert x1.shape == (2, 1, 3, 3)
    np.testing.assert_allclose(x1[0], round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1.01 / 255)
    np.testing.assert_allclose(x1[1], 77 / 255, rtol=0, atol=1e-6)
    x3, _ = next(ImageFolder(tmp_path / "d", (3, 3), 3).batches(2))
    np.testing.assert_allclose(x3[1], 77 / 255, rtol=0, atol=1e-6)  # grey -> the same value in R, G and B
    for c, v in enumerate((200, 100, 50)):
        np.testing.assert_allclose(x3[0, c], v / 255, rtol=0, atol=1e-6)


def test_jpeg_decodes_close_to_its_colour(tmp_path):
    solid(tmp_path / "d" / "a" / "p.jpeg", (60, 120, 180), size=(16, 16))
    solid(tmp_path / "d" / "b" / "q.JPG", (60, 120, 180), size=(16, 16))
    x, _ = next(ImageFolder(tmp_path / "d", (8, 8), 3).batches(2))
    for c, v in enumerate((60, 120, 180)):
        np.testing.assert_allclose(x[:, c], v / 255, rtol=0, atol=4 / 255)


def test_to_arrays_matches_batches(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 3, "b": 2})
    data = ImageFolder(root, (4, 4), 3, mean=(0.5,), std=(0.5,))
    arrays = data.to_arrays()
    assert isinstance(arrays, ArrayData) and arrays.name == str(root)
    assert arrays.x.shape == (5, 3, 4, 4) and arrays.x.dtype == np.float32
    assert arrays.y.tolist() == data.labels.tolist() and arrays.y.dtype == np.int64
    xs, ys = zip(*data.batches(2), strict=True)
    np.testing.assert_array_equal(np.concatenate(xs), arrays.x)
    np.testing.assert_array_equal(np.concatenate(ys), arrays.y)


# --- shuffling ---------------------------------------------------------------------------


def test_shuffle_reproducible_complete_and_same_rule_as_arraydata(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 5, "b": 4, "c": 3})
    data = ImageFolder(root, (2, 2), 3)
    plain = [v for x, _ in data.batches(5) for v in grey_values(x)]
    assert plain == [10 * i for i in range(12)]
    run1 = [(grey_values(x), y.tolist()) for x, y in data.batches(5, shuffle=True, seed=7)]
    run2 = [(grey_values(x), y.tolist()) for x, y in data.batches(5, shuffle=True, seed=7)]
    assert run1 == run2
    seen = [v for vals, _ in run1 for v in vals]
    assert sorted(seen) == plain and seen != plain  # every sample exactly once, in another order
    labels = {10 * i: int(lab) for i, lab in enumerate(data.labels)}
    assert all(labels[v] == lab for vals, ys in run1 for v, lab in zip(vals, ys, strict=True))
    arrays = data.to_arrays()
    for (x, y), (ax, ay) in zip(data.batches(5, True, 7), arrays.batches(5, True, 7), strict=True):
        np.testing.assert_array_equal(x, ax)
        np.testing.assert_array_equal(y, ay)
    other = [v for x, _ in data.batches(5, shuffle=True, seed=8) for v in grey_values(x)]
    assert other != seen


def test_decoding_is_lazy_per_batch(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "b" / "zz_broken.png").write_bytes(b"not a png at all")  # sorts last: in the second batch of 3
    data = ImageFolder(root, (2, 2), 3)  # listing only: the broken file is not opened yet
    batches = data.batches(3)
    x, _ = next(batches)
    assert x.shape == (3, 3, 2, 2)
    with pytest.raises(WncError, match=r"cannot read image .*zz_broken\.png") as exc:
        next(batches)
    assert "remove or replace the file" in str(exc.value)


# --- errors ------------------------------------------------------------------------------


def test_unknown_class_folder_is_named(tmp_path):
    make_folder(tmp_path / "val", {"mango": 1, "kiwi": 1})
    with pytest.raises(WncError, match="folder 'kiwi' is not one of the classes"):
        ImageFolder(tmp_path / "val", (3, 3), 3, classes=["apple", "mango"])


def test_duplicate_classes(tmp_path):
    make_folder(tmp_path / "val", {"mango": 1, "kiwi": 1})
    with pytest.raises(WncError, match=r"class list names \['kiwi'\] more than once"):
        ImageFolder(tmp_path / "val", (3, 3), 3, classes=["kiwi", "mango", "kiwi"])


def test_root_missing_or_not_a_directory(tmp_path):
    with pytest.raises(WncError, match="image folder not found") as exc:
        ImageFolder(tmp_path / "nope", (3, 3), 3)
    assert "nope" in str(exc.value)
    f = solid(tmp_path / "one.png", (1, 1, 1))
    with pytest.raises(WncError, match="image folder is not a directory"):
        ImageFolder(f, (3, 3), 3)


def test_no_class_subfolders(tmp_path):
    solid(tmp_path / "flat" / "a.png", (1, 1, 1))
    (tmp_path / "flat" / ".hidden").mkdir()
    with pytest.raises(WncError, match=r"has no class subfolders \(only 1 loose file") as exc:
        ImageFolder(tmp_path / "flat", (3, 3), 3)
    assert "root/<class>/<image>" in str(exc.value)


def test_class_folder_without_images_is_named(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 1})
    (root / "empty").mkdir()
    (root / "empty" / "labels.csv").write_text("x")
    solid(root / "empty" / ".DS_Store.png", (1, 1, 1))
    with pytest.raises(WncError, match="class folder 'empty' holds no images"):
        ImageFolder(root, (3, 3), 3)


def test_single_class_only_warns(tmp_path, caplog):
    root = make_folder(tmp_path / "d", {"only": 2})
    with caplog.at_level(logging.WARNING, logger="wnc_onnx.data.images"):
        data = ImageFolder(root, (3, 3), 3)
    assert len(data) == 2 and "only 1 class(es)" in caplog.text


def test_verify_finds_unreadable_file_up_front(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 1, "b": 1})
    ImageFolder(root, (2, 2), 3).verify()  # all readable: no error
    (root / "a" / "fake.jpg").write_text("text, not JPEG")
    data = ImageFolder(root, (2, 2), 3)
    with pytest.raises(WncError, match=r"cannot read image .*fake\.jpg"):
        data.verify()
    with pytest.raises(WncError, match=r"cannot read image .*fake\.jpg"):
        data.to_arrays()


def test_truncated_image_fails_at_decode(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 1, "b": 1})
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(root / "a" / "cut.png")
    blob = (root / "a" / "cut.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WncError, match=r"cannot read image .*cut\.png"):
        ImageFolder(root, (2, 2), 3).to_arrays()


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_bad_channels(tmp_path, channels):
    root = make_folder(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(WncError, match=f"1 \\(greyscale\\) or 3 \\(RGB\\) channels, not {channels}"):
        ImageFolder(root, (2, 2), channels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (0.1, 0.2)}, "mean has 2 values for 3-channel images"),
        ({"std": (1.0, 1.0, 1.0, 1.0)}, "std has 4 values for 3-channel images"),
        ({"std": (0.5, 0.0, 0.5)}, r"std \[0.5, 0.0, 0.5\] contains 0"),
        ({"std": (0.0,)}, "contains 0"),
        ({"mean": (float("nan"),)}, "is not finite"),
        ({"mean": ("a",)}, "is not a list of numbers"),
        ({"size": (0, 4)}, "two positive integers"),
        ({"size": (4,)}, "two positive integers"),
        ({"size": (4.0, 4.0)}, "two positive integers"),
    ],
)
def test_bad_mean_std_size(tmp_path, kwargs, message):
    root = make_folder(tmp_path / "d", {"a": 1, "b": 1})
    args = {"size": (2, 2), "channels": 3, **kwargs}
    with pytest.raises(WncError, match=message):
        ImageFolder(root, **args)


def test_bad_batch_size(tmp_path):
    data = ImageFolder(make_folder(tmp_path / "d", {"a": 1, "b": 1}), (2, 2), 3)
    with pytest.raises(WncError, match="batch size must be at least 1"):
        next(data.batches(0))


def test_pillow_missing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", {"a": 1, "b": 1})
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(WncError, match="Pillow is not installed") as exc:
        ImageFolder(root, (2, 2), 3)
    assert exc.value.fix == "pip install pillow"


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((2, 4), np.uint8)
    pixels[:, 2:] = 255  # left half black, right half white, 2 rows x 4 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels, "L").save(tmp_path / "a" / "x.jpg", exif=exif, quality=100)
    (tmp_path / "b").mkdir()
    solid(tmp_path / "b" / "y.png", 0, mode="L")
    x = load_image_folder(tmp_path, (4, 2), 1).to_arrays().x[0, 0]  # upright: 4 rows x 2 columns
    assert x[:2].max() < 0.2 and x[2:].min() > 0.8  # the stored left (black) half is now on top
