"""The environment a run lives in: the memory it may use, a console that went away, long strings in messages.

* :func:`memory_available`: the least of ``MemAvailable`` (/proc/meminfo), the address space the
  process may still map (``RLIMIT_AS`` less its current size) and its cgroup's room (``memory.max`` less
  ``memory.current``, v2; ``memory.limit_in_bytes`` less usage, v1). :func:`check_memory` refuses an
  allocation that does not fit, naming the number and the option that lowers it.
* :func:`protect_console`: a closed stdout or stderr (``fsam train ... | head -1``) drops further
  console output instead of stopping the run.
* :func:`shorten`: a user's string echoed in a message is cut to a readable length.
"""

from __future__ import annotations

import os
import re
import resource
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "MemoryNeedError",
    "check_memory",
    "format_bytes",
    "memory_available",
    "protect_console",
    "shorten",
    "shorten_words",
]

MAX_ECHO = 200  # characters of a user's string repeated in a message


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` itself, or its start and end with the number of characters left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 4
    return f"{text[:head]}...{text[-tail:]} ({len(text)} characters)"


def shorten_words(message: str, limit: int = MAX_ECHO) -> str:
    """``message`` with every run of over ``limit`` non-blank characters shortened (:func:`shorten`)."""
    return re.sub(rf"\S{{{limit + 1},}}", lambda m: shorten(m.group(0), limit), message)


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- memory
class MemoryNeedError(ValueError):
    """An allocation that would not fit the memory this process may use; the message says how much it
    needs, how much there is (and which limit), and the option that lowers the need."""


def _read_int(path: str | Path) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def _cgroup_left(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0":  # cgroup v2: every ancestor's memory.max applies
            rooms = []
            group = root / parts[2].lstrip("/")
            for d in [group, *group.parents]:
                limit, used = _read_int(d / "memory.max"), _read_int(d / "memory.current")
                if limit is not None:
                    rooms.append(limit - (used or 0))
                if d == root:
                    break
            return max(0, min(rooms)) if rooms else None
        if "memory" in parts[1].split(","):  # cgroup v1
            d = root / "memory" / parts[2].lstrip("/")
            limit = _read_int(d / "memory.limit_in_bytes") or _read_int(root / "memory/memory.limit_in_bytes")
            used = _read_int(d / "memory.usage_in_bytes") or 0
            if limit is not None and limit < 1 << 60:
                return max(0, limit - used)
    return None


def memory_available() -> tuple[int | None, str]:
    """``(bytes, which limit)``: the least of MemAvailable, the address space left under RLIMIT_AS and
    the room left in the process's cgroup; ``(None, "unknown")`` where none can be read."""
    found = [
        (value, name)
        for value, name in (
            (_meminfo_available(), "MemAvailable"),
            (_address_space_left(), "the address-space limit (ulimit -v, RLIMIT_AS)"),
            (_cgroup_left(), "the container's memory limit (cgroup)"),
        )
        if value is not None
    ]
    return min(found) if found else (None, "unknown")


def check_memory(need: int, what: str, lower: str, share: float = 1.0) -> None:
    """Refuse (:class:`MemoryNeedError`) ``need`` bytes for ``what`` when over ``share`` of
    :func:`memory_available`; ``lower`` names the option(s) that reduce the need."""
    available, source = memory_available()
    if available is None or need <= available * share:
        return
    raise MemoryNeedError(
        f"{what} needs {format_bytes(need)} of memory; this process may use {format_bytes(available)} "
        f"({source}){'' if share == 1.0 else f', of which {share:.0%} for this'}: {lower}"
    )


# --------------------------------------------------------------------------- console
class _TolerantStream:
    """A text stream that turns a closed reader (EPIPE and the like) into dropping further output:
    the file descriptor is pointed at /dev/null so that no later flush (at exit included) fails."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_reader = False

    def _silence(self) -> None:
        self.closed_reader = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> int:
        if not self.closed_reader:
            try:
                self._stream.write(text)
            except (OSError, ValueError):  # EPIPE, EIO, EBADF, a closed file: the console is best effort
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.closed_reader:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._silence()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect_console() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` tolerate a reader that went away (``| head -1``, a closed
    terminal) or a descriptor closed from the start (``2>&-``): output is then dropped, the program goes
    on. Only real console streams are wrapped."""
    for fd in (0, 1, 2):  # a closed standard descriptor would be reused by the next file we open: a
        try:  # C library's message to "stderr" would then land in a checkpoint. Hold them on /dev/null.
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:  # started with the descriptor closed (`2>&-`): Python gives None
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
        elif stream is getattr(sys, f"__{name}__"):
            setattr(sys, name, _TolerantStream(stream))
