"""Opening, reading and writing files without following links, blocking or leaving the directory.

Reading (:func:`read_bytes`, :func:`read_text`): the file is opened with ``O_NONBLOCK`` and checked with
``fstat`` before a byte is read, so a FIFO, a device, a socket or a directory is refused at once (a
FIFO never blocks the reader); a file over its size limit is refused before it is read.

Writing (:func:`write_atomic`, :func:`append_line`, :func:`open_lock_file`, :func:`update_file`): every
write names one entry of one directory. The directory is opened once and every operation is relative to
it (``openat``-style ``dir_fd``), the entry is opened with ``O_NOFOLLOW``: a symbolic link planted where
a run's file belongs (``.fsam.lock`` or ``resumes.jsonl`` pointing at a file outside) is refused, never
written through, and an atomic write replaces the link itself, never its target. Atomic writes go to a
temporary ``.NAME.RANDOM.tmp`` beside the file, are fsynced and renamed over it; the directory is
fsynced after the rename. An interrupted write (Ctrl-C, disk full, kill) leaves the previous version.

File modes: every file is created with mode ``0o666`` filtered by the process umask, like any file a
program creates (``umask 022``: ``rw-r--r--``; ``umask 077``: private). One policy for every file of a
run (docs/files.md); a replaced file gets the mode of a new file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .environment import format_bytes, shorten

TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
CREATE_MODE = 0o666  # filtered by the umask: the one file-mode policy

__all__ = [
    "CREATE_MODE",
    "FileRefused",
    "WriteError",
    "append_line",
    "check_entries",
    "file_mode",
    "open_lock_file",
    "open_regular",
    "read_bytes",
    "read_text",
    "remove_stale_temp_files",
    "update_file",
    "write_atomic",
    "write_text_atomic",
]

ErrorType = Callable[[str], Exception]


class FileRefused(ValueError):
    """A file friendly-sam will not read or write as asked: not a regular file, a symbolic link where a
    run's file belongs, over a size limit, nested too deep, ...; the message names the file and why."""


class WriteError(OSError):
    """A file could not be written (disk full, file too large, no permission, directory gone); the
    previous version of the file is unchanged."""


def file_mode() -> int:
    """The mode a new file gets: ``0o666`` less the process umask (read without changing it)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return CREATE_MODE & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not Linux: the only portable way to read it is to set it
    os.umask(mask)
    return CREATE_MODE & ~mask


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _name(path: Path) -> str:
    return shorten(str(path))


# --------------------------------------------------------------------------- reading
def open_regular(
    path: str | Path, what: str, error: ErrorType = FileRefused, limit: int | None = None, follow: bool = True
) -> tuple[int, int]:
    """Open ``path`` for reading, never blocking; return ``(fd, size)``. Refused with ``error(message)``:
    missing, unreadable, not a regular file, a symbolic link (``follow=False``), over ``limit`` bytes."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {_name(Path(path))} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise error(f"{what} {_name(Path(path))} is a symbolic link; it is never followed") from None
        raise error(f"{what} {_name(Path(path))} cannot be read ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{what} {_name(Path(path))} is not a regular file (it is {_kind(info.st_mode)})")
    if limit is not None and info.st_size > limit:
        os.close(fd)
        raise error(
            f"{what} {_name(Path(path))} is {info.st_size} bytes, over the limit of {limit} ({format_bytes(limit)})"
        )
    return fd, info.st_size


def read_bytes(
    path: str | Path, what: str = "file", limit: int = 64 << 20, error: ErrorType = FileRefused
) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``; see :func:`open_regular`)."""
    fd, _ = open_regular(path, what, error, limit)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)  # the file may have grown since fstat
    if len(data) > limit:
        raise error(
            f"{what} {_name(Path(path))} is larger than {limit} bytes ({format_bytes(limit)}), the limit"
        )
    return data


def read_text(
    path: str | Path, what: str = "file", limit: int = 64 << 20, error: ErrorType = FileRefused
) -> str:
    """:func:`read_bytes` decoded as UTF-8; other bytes are refused naming their offset."""
    data = read_bytes(path, what, limit, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {_name(Path(path))} is not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})"
        ) from None


# --------------------------------------------------------------------------- writing
def _open_dir(directory: Path, path: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise WriteError(
            exc.errno, f"cannot write {_name(path)}: its directory cannot be opened ({exc.strerror})"
        ) from None


def _entry(path: Path) -> str:
    name = path.name
    if name in ("", ".", ".."):
        raise FileRefused(f"{_name(path)} names no file inside a directory")
    return name


def _refused_write(path: Path, exc: OSError, what: str) -> Exception:
    if exc.errno == errno.ELOOP:
        return FileRefused(
            f"{what} {_name(path)} is a symbolic link; friendly-sam never writes through a link (it may point "
            "outside the directory): remove the link, then try again"
        )
    if exc.errno in (errno.ENXIO, errno.EISDIR):
        return FileRefused(f"{what} {_name(path)} is not a regular file; remove it, then try again")
    return _write_error(path, exc)


def _write_error(path: Path, exc: BaseException) -> WriteError:
    detail = (
        exc.strerror
        if isinstance(exc, OSError) and exc.strerror
        else "the file system took only part of it: disk full or file-size limit?"
    )
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
    return WriteError(
        code,
        f"cannot write {_name(path)} ({detail}); its previous version is unchanged. Free disk space, raise "
        "the file-size limit or fix the permissions, then resume the run (or rerun the command)",
    )


def write_atomic(path: str | Path, write: bytes | Callable[[BinaryIO], Any]) -> None:
    """Replace ``path`` by ``write`` (bytes, or a function writing into a binary file) atomically.

    Readers see the old or the new file, never half of one; a link at ``path`` is replaced, not
    followed. A failed write raises :class:`WriteError` (the temporary file is removed, ``path`` keeps
    its previous content); a ``RuntimeError`` of the writer (``torch.save`` reports a short write so)
    counts as a failed write."""
    path = Path(path)
    name, dfd = _entry(path), _open_dir(path.parent, path)
    tmp = None
    try:
        tmp, fd = _create_temp(dfd, name)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        tmp = None
        _fsync(dfd)  # the rename itself survives a power cut
    except BaseException as exc:
        if tmp is not None:
            _unlink(tmp, dfd)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, (FileRefused, WriteError)):
            raise _write_error(path, exc) from exc
        raise
    finally:
        os.close(dfd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_atomic` of ``text`` in UTF-8."""
    write_atomic(path, text.encode("utf-8"))


def _create_temp(dfd: int, name: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f"{TEMP_PREFIX}{name[:150]}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return tmp, os.open(tmp, flags, CREATE_MODE, dir_fd=dfd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", name)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # not supported for directories on some file systems: best effort
        pass


def _unlink(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _open_entry(path: Path, flags: int, what: str) -> int:
    """``openat(dir, name, flags | O_NOFOLLOW | O_NONBLOCK)`` of a regular file (created with the umask)."""
    name, dfd = _entry(path), _open_dir(path.parent, path)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, CREATE_MODE, dir_fd=dfd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _refused_write(path, exc, what) from None
    finally:
        os.close(dfd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileRefused(f"{what} {_name(path)} is not a regular file (it is {_kind(info.st_mode)})")
    os.set_blocking(fd, True)
    return fd


def append_line(path: str | Path, line: str, what: str = "file") -> None:
    """Append ``line`` (a newline is added) to ``path`` in one write, then fsync; created if absent."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = _open_entry(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        os.close(fd)


def open_lock_file(path: str | Path, what: str = "lock file") -> int:
    """A read-write fd of the regular file ``path`` (created if absent, never through a link), to
    ``flock``. ``FileNotFoundError`` when its directory is gone."""
    return _open_entry(Path(path), os.O_RDWR | os.O_CREAT, what)


def update_file(path: str | Path, update: Callable[[bytes | None], bytes], what: str = "file") -> bytes:
    """Read-modify-write ``path`` under an exclusive lock of its directory: ``update(old bytes or None)``
    returns the new content, written atomically. Concurrent updaters (two ``fsam analyze`` on one run)
    run one after the other, each on the other's result, so no update is lost. Returns the new bytes."""
    path = Path(path)
    dfd = _open_dir(path.parent, path)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)  # only the short read-merge-write is serialised
        old = read_bytes(path, what) if os.path.lexists(path) else None
        new = update(old)
        write_atomic(path, new)
        return new
    finally:
        os.close(dfd)  # releases the lock


def check_entries(directory: str | Path, kinds: dict[str, str], what: str) -> None:
    """Refuse (:class:`FileRefused`) an entry of ``directory`` named in ``kinds`` that is a symbolic link
    or not of its kind (``"file"`` or ``"dir"``); absent entries are fine."""
    for name, kind in kinds.items():
        path = Path(directory) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            target = shorten(os.readlink(path), 120)
            raise FileRefused(
                f"{what} {_name(Path(directory))}: {name} is a symbolic link (to {target}); a run's files are "
                "never links (writing through it would change a file elsewhere): remove it, then try again"
            )
        wanted = stat.S_ISDIR(mode) if kind == "dir" else stat.S_ISREG(mode)
        if not wanted:
            raise FileRefused(
                f"{what} {_name(Path(directory))}: {name} is not a "
                f"{'directory' if kind == 'dir' else 'regular file'} (it is {_kind(mode)}): remove it, then try again"
            )


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes (``.NAME.*.tmp``) in ``directory``.

    Only call this while holding the directory's lock (a live writer's temporary file would be deleted
    under it otherwise). Links and non-files of such names are left alone. Returns the files removed."""
    removed = []
    for entry in Path(directory).iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
            try:
                if stat.S_ISREG(os.lstat(entry).st_mode):
                    entry.unlink()
                    removed.append(entry)
            except FileNotFoundError:
                continue
    return removed
