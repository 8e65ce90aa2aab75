"""What a rule learns about one layer, and the factors chosen for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx


@dataclass
class Layer:
    """A Conv/Gemm/MatMul node as the low-rank pass sees it.

    ``s``/``t`` are input/output channels per group; ``spatial`` the kernel window
    (empty for a plain matrix); ``in_pixels``/``out_pixels`` the positions per sample
    where the input/output side is evaluated (None when not static).
    """

    node: onnx.NodeProto
    name: str
    rule: str
    weight: str = ""
    s: int = 0
    t: int = 0
    groups: int = 1
    spatial: tuple[int, ...] = ()
    in_pixels: int | None = None
    out_pixels: int | None = None
    strides: tuple[int, ...] = ()
    skip: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def window(self) -> int:
        return int(np.prod(self.spatial)) if self.spatial else 1

    @property
    def tucker_capable(self) -> bool:
        """A spatial kernel: Tucker-2 (and Tucker-1) apply; otherwise only SVD."""
        return self.window > 1


@dataclass
class Factors:
    """Per-group factors in the kernel layout (T, S, *spatial).

    tucker2: core (R4, R3, *sp), u_in (S, R3), u_out (T, R4)
    tucker1: core (R4, S, *sp), u_out (T, R4)
    svd:     left (T, R), right (R, S)
    """

    method: str
    r3: int | None
    r4: int
    groups: list[dict[str, np.ndarray]]
    rel_error: float
    hooi_iterations: int = 0
    # --calibration: the output error on the calibration data of these factors and of the
    # data-free ones at the same ranks (None without calibration)
    data_error: float | None = None
    data_error_free: float | None = None
    # --calibration: (T * groups,) added to the bias, in kernel units (the error of the inputs' mean)
    bias_shift: np.ndarray | None = None
