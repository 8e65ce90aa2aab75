"""finetune.augment: image-input augmentations, off unless asked; flips and rotations only when named."""

import numpy as np
import pytest

from wnc_onnx.errors import WncError
from wnc_onnx.finetune import augment


def images(n=6, c=3, h=16, w=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c, h, w)).astype(np.float32)


def test_off_by_default_and_only_image_inputs():
    feeds = {"image": images(), "state": np.ones((6, 64), np.float32)}
    assert augment.apply((), feeds, np.random.default_rng(0)) is feeds
    out = augment.apply(("crop", "color"), feeds, np.random.default_rng(0))
    assert out["state"] is feeds["state"] and out["image"].shape == feeds["image"].shape
    assert out["image"].dtype == np.float32 and not np.array_equal(out["image"], feeds["image"])
    assert np.array_equal(feeds["image"], images())  # the batch given is not changed in place


def test_seeded_and_the_same_draw_for_the_same_seed():
    a = augment.apply(("crop", "color"), {"x": images()}, np.random.default_rng(7))["x"]
    b = augment.apply(("crop", "color"), {"x": images()}, np.random.default_rng(7))["x"]
    c = augment.apply(("crop", "color"), {"x": images()}, np.random.default_rng(8))["x"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_crop_of_the_whole_image_is_the_image():
    x = images(1)[0]
    assert np.allclose(augment._resize(x, 16, 24), x, atol=1e-6)
    up = augment._resize(x[:, :8, :12], 16, 24)  # a corner, twice as large: the corner's values, interpolated
    assert up.shape == x.shape and up.min() >= x[:, :8, :12].min() - 1e-5 and up.max() <= x[:, :8, :12].max() + 1e-5


def test_flips_and_rotations_happen_only_when_named():
    x = {"x": images(n=64)}
    flipped = augment.apply(("flip",), x, np.random.default_rng(0))["x"]
    same = [np.array_equal(f, o) for f, o in zip(flipped, x["x"], strict=True)]
    mirrored = [np.array_equal(f, o[:, :, ::-1]) for f, o in zip(flipped, x["x"], strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and 10 < sum(mirrored) < 54
    color = augment.apply(("color",), x, np.random.default_rng(0))["x"]
    for c, o in zip(color, x["x"], strict=True):  # an affine map of each channel's values: never mirrored
        for cc, oc in zip(c, o, strict=True):
            k = np.polyfit(oc.ravel(), cc.ravel(), 1)
            assert np.allclose(np.polyval(k, oc), cc, atol=1e-4)
    with pytest.raises(WncError, match="unknown \\['blur'\\]"):
        augment.check(("crop", "blur"))
