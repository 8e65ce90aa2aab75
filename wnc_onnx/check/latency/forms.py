"""The forms one layer may take, and the kernel error each would cost (from the mode spectra)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Form:
    """``original``, or a decomposition with its ranks (r3 only for Tucker-2)."""

    method: str  # "original", "tucker2", "tucker1", "svd"
    r3: int | None = None
    r4: int = 0

    @property
    def label(self) -> str:
        if self.method == "original":
            return "original"
        if self.method == "tucker2":
            return f"tucker2 R3={self.r3} R4={self.r4}"
        return f"{self.method} R{'4' if self.method == 'tucker1' else ''}={self.r4}"

    def ranks(self) -> dict[str, int]:
        if self.method == "tucker2":
            return {"R3": int(self.r3 or 0), "R4": self.r4}
        return {"R": self.r4} if self.method == "svd" else {"R4": self.r4}


ORIGINAL = Form("original")


@dataclass
class ModeSpectra:
    """Per group: the out-mode (and for Tucker-2, in-mode) Gram eigenvalues, descending."""

    out: list[np.ndarray]
    inp: list[np.ndarray] | None = None

    @property
    def energy(self) -> float:
        return float(sum(v.sum() for v in self.out))

    def rel_error(self, form: Form) -> float:
        """Relative kernel error of ``form``: exact for SVD / Tucker-1, the HOSVD bound for Tucker-2
        (out-mode and in-mode energy left out, added)."""
        if form.method == "original":
            return 0.0
        total = self.energy
        if total <= 0:
            return 0.0
        lost = sum(float(v[form.r4 :].sum()) for v in self.out)
        if form.method == "tucker2" and self.inp is not None:
            lost += sum(float(v[int(form.r3 or 0) :].sum()) for v in self.inp)
        return math.sqrt(max(lost, 0.0) / total)


def round_up(r: int, multiple: int, full: int) -> int:
    return min(full, int(math.ceil(r / multiple) * multiple))


def at_least_as_accurate(
    base: Form, s: int, t: int, tucker_capable: bool, multiples: Sequence[int] = (8, 16)
) -> list[Form]:
    """``base`` and the forms whose kernel error cannot exceed it: the same ranks rounded up
    to SIMD-friendly multiples, and (for Tucker-2) Tucker-1, which keeps every input channel."""
    out = [base]
    if base.method == "tucker2":
        for m in multiples:
            out.append(Form("tucker2", round_up(int(base.r3 or 1), m, s), round_up(base.r4, m, t)))
        out.append(Form("tucker1", None, base.r4))
        for m in multiples:
            out.append(Form("tucker1", None, round_up(base.r4, m, t)))
    else:
        for m in multiples:
            out.append(Form(base.method, None, round_up(base.r4, m, min(s, t) if base.method == "svd" else t)))
    seen: list[Form] = []
    for f in out:
        if f not in seen and not (f.method == "tucker2" and not tucker_capable):
            seen.append(f)
    return seen


LADDER = (0.25, 0.35, 0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)


def ladder(base: Form, s: int, t: int, multiple: int = 8) -> list[Form]:
    """Forms of ``base``'s method at ranks scaled by ``LADDER`` (rounded to ``multiple`` where
    that is at least ``multiple``): the moves open to a speed-up target."""
    full4 = min(s, t) if base.method == "svd" else t

    def scaled(r: int, k: float, full: int) -> int:
        v = max(1, int(round(r * k)))
        if v >= 2 * multiple:
            v = int(round(v / multiple) * multiple)
        return min(full, v)

    out: list[Form] = []
    for k in LADDER:
        r3 = scaled(int(base.r3 or 1), k, s) if base.method == "tucker2" else None
        f = Form(base.method, r3, scaled(base.r4, k, full4))
        if f not in out:
            out.append(f)
    if base not in out:
        out.append(base)
    return out
