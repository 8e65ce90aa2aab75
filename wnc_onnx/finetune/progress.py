"""A progress line per epoch on stderr (samples, running loss, throughput), redrawn in place on a terminal."""

from __future__ import annotations

import sys
import time


class EpochBar:
    def __init__(self, total: int | None, epoch: int, epochs: int, quiet: bool) -> None:
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.show = not quiet and sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if not self.show:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        width = 24
        if self.total:
            bar = "#" * int(width * min(done, self.total) / self.total)
            where = f"[{bar:<{width}}] {done}/{self.total}"
        else:
            where = f"{done} samples"
        sys.stderr.write(f"\repoch {self.epoch + 1}/{self.epochs} {where} loss {loss:.4f} {rate:.0f}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.show:
            sys.stderr.write("\n")
            self.show = False
