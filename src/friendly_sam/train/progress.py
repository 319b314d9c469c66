"""A dependency-free progress bar: loss, accuracy, images/s and ETA on one refreshed line."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """Redraws at most every ``interval`` seconds; silent when ``enabled`` is False."""

    def __init__(
        self,
        total: int,
        prefix: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.25,
        width: int = 24,
    ) -> None:
        self.total, self.prefix, self.enabled = total, prefix, enabled
        self.stream = stream or sys.stderr
        self.interval, self.width = interval, width
        self.start = self._last = time.perf_counter()
        self.done = 0

    def update(self, done: int, **fields: float | str) -> None:
        self.done = done
        now = time.perf_counter()
        if not self.enabled or (now - self._last < self.interval and done < self.total):
            return
        self._last = now
        elapsed = now - self.start
        frac = done / self.total if self.total else 1.0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        info = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.stream.write(
            f"\r{self.prefix} [{bar}] {done}/{self.total} {info} "
            f"{format_seconds(elapsed)}<{format_seconds(eta)}\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
