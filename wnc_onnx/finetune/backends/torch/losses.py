"""The training losses on torch tensors: the label loss, and the distillation objective's terms
(``finetune.distill``): KL divergence of softened class scores, and squared error over the
teacher's variance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

VARIANCE_FLOOR = 1e-8  # a constant teacher tensor: its squared error counts unscaled


def label_loss(kind: str, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class scores (N, C) with integer labels, or the mean squared error."""
    return F.cross_entropy(scores, y) if kind == "cross_entropy" else F.mse_loss(scores, y)


def term_loss(kind: str, axis: int, temperature: float, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One distillation term: "kl", KL(teacher || student) of the softmax along ``axis`` at the
    temperature (times T^2, Hinton et al.), averaged over the other axes (per position for
    sequences); "mse", the squared error over the teacher's variance."""
    if s.shape != t.shape:
        raise RuntimeError(f"the student's tensor has shape {tuple(s.shape)}, the teacher's {tuple(t.shape)}")
    s, t = s.float(), t.float()
    if kind == "kl":
        log_s = F.log_softmax(s / temperature, dim=axis)
        log_t = F.log_softmax(t / temperature, dim=axis)
        return (log_t.exp() * (log_t - log_s)).sum(dim=axis).mean() * temperature**2
    var = torch.clamp(t.var(unbiased=False), min=VARIANCE_FLOOR)
    return ((s - t) ** 2).mean() / var


def distill_loss(objective: Any, student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> Any:
    """The weighted sum of the objective's terms."""
    total: Any = 0.0
    for term in objective.terms:
        total = total + term.weight * term_loss(
            term.kind, term.axis, objective.temperature, student[term.tensor], teacher[term.tensor]
        )
    return total


def agreement(axis: int, s: torch.Tensor, t: torch.Tensor) -> tuple[int, int]:
    """(positions where the student's top class is the teacher's, positions): per sample, or per
    position of a sequence."""
    same = s.argmax(dim=axis) == t.argmax(dim=axis)
    return int(same.sum().item()), int(same.numel())
