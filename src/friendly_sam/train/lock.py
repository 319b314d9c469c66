"""One writer per run directory: an advisory lock held for the run's whole life, atomic creation of runs.

A run directory holds ``.fsam.lock``; the process that writes the run holds an exclusive ``flock`` on it
(and writes its pid, host and start time into it while it holds it, for the message another process
gets; on release the file's previous content is put back, so a refused command changes no byte). The kernel
drops the lock when the holder exits in any way, ``kill -9`` included, so a stale lock never blocks.
The lock file itself stays (deleting it would let two processes lock two different files of one name).

* :func:`create_run_dir` for a fresh run: creates the directory (or reuses an empty one, or one left by a
  run killed before its first checkpoint) and returns the held :class:`RunLock`. Two fresh starts with
  one ``--out``: exactly one wins, the other gets :class:`RunInUseError` or "already holds a run".
* :func:`open_run_dir` for ``--resume`` (and anything else that writes into an existing run).
* :func:`check_run_name` for a run name that becomes a directory name.

Locks are per host on local file systems; on NFS, Linux maps ``flock`` to NFS byte-range locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ..files import FileRefused, check_entries, open_lock_file, remove_stale_temp_files
from .run_dir import CHECKPOINT_FILE, ENTRY_KINDS, LEFTOVER_ENTRIES, LOCK_FILE, RUN_ENTRIES, RunDirectoryError

MAX_NAME_BYTES = 200

__all__ = [
    "RunDirectoryError",
    "RunInUseError",
    "RunLock",
    "check_run_name",
    "create_run_dir",
    "open_run_dir",
]


class RunInUseError(RunDirectoryError):
    """Another live process holds the run directory's lock; ``holder`` is what it wrote (pid, host, ...)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class _Vanished(Exception):
    """The lock file was unlinked (run directory discarded) between open and flock: try again."""


class RunLock:
    """Exclusive advisory lock on ``run_dir/.fsam.lock``; a context manager (``with RunLock(d): ...``).

    :meth:`acquire` never waits: a held lock raises :class:`RunInUseError` naming the holder's pid and
    host. After acquiring, stale temporary files of interrupted atomic writes are removed
    (``removed_temp_files``). ``notes`` collects remarks for the user (set by :func:`create_run_dir`).
    The lock belongs to this open file: forked children share it, ``exec``-ed programs do not. A lock
    never released explicitly is held until the process exits (dropping the object does not release it:
    losing a lock silently would be worse)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.notes: list[str] = []
        self.removed_temp_files: list[Path] = []
        self._fd: int | None = None
        self._previous = b""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock now or raise (:class:`RunInUseError`, :class:`RunDirectoryError`); return self."""
        if self._fd is not None:
            raise RunDirectoryError(f"{self.path} is already locked by this RunLock")
        for _ in range(5):
            try:
                self._fd = self._try_lock()
                break
            except _Vanished:
                time.sleep(0.01)
        else:
            raise RunDirectoryError(f"{self.run_dir} keeps being removed while locking it; try again")
        try:  # a run's files are never links or special files: writing through them would leave the run
            check_entries(self.run_dir, ENTRY_KINDS, "run directory")
        except FileRefused as exc:
            self.release()
            raise RunDirectoryError(str(exc)) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        self._previous = os.pread(self._fd, 4096, 0)  # put back on release: a refused command changes no byte
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(holder) + "\n").encode(), 0)
        self.removed_temp_files = remove_stale_temp_files(self.run_dir)
        return self

    def _try_lock(self) -> int:
        try:  # never through a link: a planted .fsam.lock -> /elsewhere is refused, not truncated
            fd = open_lock_file(self.path, "the run's lock file")
        except FileNotFoundError:
            if self.run_dir.is_dir():
                raise _Vanished from None
            raise RunDirectoryError(f"run directory {self.run_dir} does not exist") from None
        except FileRefused as exc:
            raise RunDirectoryError(str(exc)) from None
        except OSError as exc:
            raise RunDirectoryError(f"cannot open the lock file {self.path} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunInUseError(_in_use_message(self.run_dir, holder), holder) from None
        except OSError as exc:
            os.close(fd)
            raise RunDirectoryError(
                f"cannot lock {self.path} ({exc.strerror}); this file system may not support locks: "
                "put runs on a local disk"
            ) from None
        try:  # still the file of that name? (a discard may have unlinked it before we locked)
            same = os.path.samestat(os.stat(self.path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            raise _Vanished
        return fd

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file stays, with the last holder's details."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:  # the holder's details matter only while it holds the lock
                os.ftruncate(fd, 0)
                os.pwrite(fd, self._previous, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def discard(self) -> None:
        """Remove the run directory if no checkpoint was written, then release (e.g. the data failed to load).

        Only the run's own files go; a directory holding a checkpoint or other files is kept."""
        try:
            if self._fd is not None and not (self.run_dir / CHECKPOINT_FILE).exists():
                _remove_leftovers(self.run_dir)
                self.path.unlink(missing_ok=True)
                try:
                    self.run_dir.rmdir()
                except OSError:  # not empty: someone else's files, keep them
                    pass
        finally:
            self.release()

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _in_use_message(run_dir: Path, holder: dict[str, Any]) -> str:
    if holder.get("pid"):
        who = f"pid {holder['pid']} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
        stop = f"stop it (kill {holder['pid']} on {holder.get('host', '?')})"
    else:
        who, stop = "a process that is just starting", "stop it"
    return (
        f"run directory {run_dir} is in use by another fsam process ({who}); two writers would corrupt "
        f"the run. Wait for it to finish or {stop}, then try again (with --resume to continue it), "
        "or choose another --out"
    )


def _remove_leftovers(run_dir: Path) -> list[str]:
    removed = []
    for name in LEFTOVER_ENTRIES:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
        else:
            continue
        removed.append(name)
    return removed


def create_run_dir(run_dir: str | Path) -> RunLock:
    """Create (or claim) ``run_dir`` for a fresh run and return its held :class:`RunLock`.

    Atomic against concurrent starts: whoever takes the lock decides, under it, whether the directory
    is free. Free means: new, empty, or left by a run killed before its first checkpoint (its
    ``config.json``, ``metrics.jsonl``, ... are removed; ``lock.notes`` says so). Refused with
    :class:`RunDirectoryError`: a directory holding a checkpoint ("use --resume"), one holding files
    that are not a run's, a path that is a file; :class:`RunInUseError` while another process holds it."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirectoryError(f"{run_dir} exists and is not a directory; choose another --out") from None
    except OSError as exc:
        raise RunDirectoryError(f"cannot create the run directory {run_dir} ({exc.strerror})") from None
    lock = RunLock(run_dir).acquire()
    try:
        if (run_dir / CHECKPOINT_FILE).exists():
            raise RunDirectoryError(
                f"run directory {run_dir} already holds a run; continue it with "
                f"`fsam train --resume {run_dir}`, or choose another --out"
            )
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_ENTRIES)
        if foreign:
            raise RunDirectoryError(
                f"{run_dir} holds files that are not a friendly-sam run ({', '.join(foreign[:5])}); "
                "choose another --out"
            )
        removed = _remove_leftovers(run_dir)
        if removed:
            lock.notes.append(
                f"{run_dir} held a run stopped before its first checkpoint; starting it anew "
                f"(removed {', '.join(removed)})"
            )
    except BaseException:
        lock.release()
        raise
    return lock


def open_run_dir(run_dir: str | Path) -> RunLock:
    """Lock an existing run directory (for ``--resume``, or any writer into a run); return the held lock.

    :class:`RunDirectoryError` when ``run_dir`` is not a directory, :class:`RunInUseError` when another
    process holds it. Whether it holds a checkpoint is for the caller to check (under the lock)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} is not a run directory (it does not exist or is a file)")
    return RunLock(run_dir).acquire()


def check_run_name(name: str) -> str:
    """Return ``name`` if it is usable as one directory name under the runs folder, else raise ``ValueError``.

    Refused: empty or blank, a path separator (``/``, ``\\``), ``.``/``..`` or any leading dot (hidden or
    relative), control characters, more than ``MAX_NAME_BYTES`` bytes."""
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "it is empty"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        problem = "it contains a path separator"
    elif name.startswith("."):
        problem = "it starts with '.' (hidden, or '..' leaving the runs folder)"
    elif ".." in name:
        problem = "it contains '..'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it contains control characters"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"it is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise ValueError(
            f"--name {name!r} cannot be a run name: {problem}. Use letters, digits, '-', '_', '.', "
            "'=' and spaces, e.g. --name fsam-rho0.1"
        )
    return name
