"""What a run reports as it goes: a progress bar on a terminal, plain lines in a log, the epoch line.

On a terminal the bar redraws one line in place (carriage return, erase-line escape). When the stream is
not a terminal (a log file, a pipe, CI), no carriage return or escape code is ever written: a plain line
every ``line_interval`` seconds and one when the count is complete.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBar:
    """Progress of ``total`` units; silent when ``enabled`` is False. On a terminal: one line redrawn at
    most every ``interval`` seconds; otherwise plain lines, at most every ``line_interval`` seconds."""

    def __init__(
        self,
        total: int,
        prefix: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.25,
        line_interval: float = 30.0,
        width: int = 24,
    ) -> None:
        self.total, self.prefix, self.enabled = total, prefix, enabled
        self.stream = stream or sys.stderr
        self.terminal = is_terminal(self.stream)
        self.interval = interval if self.terminal else line_interval
        self.width = width
        self.start = self._last = time.perf_counter()
        self.done, self._last_done = 0, -1

    def update(self, done: int, **fields: float | str) -> None:
        self.done = done
        now = time.perf_counter()
        if not self.enabled or (now - self._last < self.interval and done < self.total):
            return
        if done == self._last_done:  # a log gets the final count once
            return
        self._last, self._last_done = now, done
        elapsed = now - self.start
        frac = done / self.total if self.total else 1.0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        info = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        times = f"{format_seconds(elapsed)}<{format_seconds(eta)}"
        if self.terminal:
            bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
            self.stream.write(f"\r{self.prefix} [{bar}] {done}/{self.total} {info} {times}\x1b[K")
        else:
            self.stream.write(f"{self.prefix} {done}/{self.total} {info} {times}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.terminal:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def epoch_line(label: str, epochs: int, record: dict[str, Any]) -> str:
    """The one line logged after each epoch (also in logs: no escape codes)."""
    val = f" val {_percent(record['val_acc'])}" if "val_acc" in record else ""
    test = f" test {_percent(record['test_acc'])}" if "test_acc" in record else ""  # a folder may have no test/
    return (
        f"{label} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
        f"acc {record['train_acc']:.2f}%{val}{test} "
        f"({record['images_per_s']:.0f} img/s, {format_seconds(record['elapsed'])})"
    )
