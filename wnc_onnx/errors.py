"""Errors that reach the user as one line: the problem, then the fix."""

from __future__ import annotations

import re
from collections.abc import Callable


class WncError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits 2."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}; fix: {self.fix}" if self.fix else self.problem


RUNTIME_HINT = "pip install 'wnc-onnx[runtime]' (or '[train]' in a training environment; see README, 'Install')"
REEXPORT = "re-export the model from its framework (torch.onnx.export, tf2onnx, paddle2onnx)"


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """A library's message (often multi-line) as one line of at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


class NothingToCompressError(WncError):
    """The model holds no layer that the pass could rewrite."""


def option_error(
    exc: BaseException, flag: Callable[[str], str] | None = None, where: str = "the fields of wnc_onnx.CompressConfig"
) -> WncError:
    """A configuration's ValueError as one WncError. Its text names fields in backticks
    (`target_speedup`); ``flag`` (field -> command-line flag) puts the flag there instead."""

    def name(m: re.Match[str]) -> str:
        return flag(m.group(1)) if flag is not None else m.group(0)

    return WncError(f"invalid option: {re.sub(r'`([^`]+)`', name, str(exc))}", f"see {where}")
