"""Weight and multiply-accumulate counts, as Kim et al. (2016) count them.

Weights exclude biases (they are carried over unchanged). MACs are per sample;
``None`` pixel counts (dynamic spatial size) give ``None`` MACs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Costs:
    """Per emitted node: weights and MACs (MACs None when the spatial size is unknown)."""

    params: tuple[int, ...]
    macs: tuple[int, ...] | None

    @property
    def total_params(self) -> int:
        return sum(self.params)

    @property
    def total_macs(self) -> int | None:
        return None if self.macs is None else sum(self.macs)


def _macs(per_pixel: tuple[int, ...], pixels: tuple[int | None, ...]) -> tuple[int, ...] | None:
    if any(p is None for p in pixels):
        return None
    return tuple(a * int(p) for a, p in zip(per_pixel, pixels, strict=True))  # type: ignore[arg-type]


def conv_costs(s: int, t: int, kernel: int, groups: int, out_pixels: int | None) -> Costs:
    """A plain convolution: ``s``/``t`` are per-group channels, ``kernel`` the window size."""
    w = groups * s * t * kernel
    return Costs((w,), _macs((w,), (out_pixels,)))


def lowrank_costs(
    s: int,
    t: int,
    kernel: int,
    groups: int,
    in_pixels: int | None,
    out_pixels: int | None,
    r3: int | None,
    r4: int,
) -> Costs:
    """Costs of the emitted nodes.

    Tucker-2 (``r3`` set): 1x1 S->R3 at the input size, DxD R3->R4 and 1x1 R4->T at
    the output size. Tucker-1 / SVD (``r3`` None): DxD S->R4, then 1x1 R4->T.
    """
    g = groups
    if r3 is None:
        two = (g * kernel * s * r4, g * r4 * t)
        return Costs(two, _macs(two, (out_pixels, out_pixels)))
    three = (g * s * r3, g * kernel * r3 * r4, g * r4 * t)
    return Costs(three, _macs(three, (in_pixels, out_pixels, out_pixels)))
