"""The file layer (friendly_sam.files) on its own: links, FIFOs, modes, atomicity, locked merges, bounded
readers, the environment. Each test names the issue-21 case it covers."""

from __future__ import annotations

import json
import os
import resource
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from friendly_sam.files import (
    FileRefused,
    MemoryNeedError,
    WriteError,
    append_line,
    check_memory,
    file_mode,
    load_torch_file,
    memory_available,
    open_lock_file,
    parse_json,
    parse_toml,
    parse_yaml,
    read_text,
    shorten,
    update_file,
    write_atomic,
)
from friendly_sam.files.environment import _TolerantStream, shorten_words
from friendly_sam.train import run_dir as rd


@pytest.fixture
def outside(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    return run, target


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- writes never follow links
def test_an_append_never_writes_through_a_link(outside):
    run, target = outside
    (run / "resumes.jsonl").symlink_to(target)
    with pytest.raises(FileRefused, match="resumes.jsonl is a symbolic link"):
        append_line(run / "resumes.jsonl", "{}")
    assert target.read_text() == "precious\n"


def test_a_lock_file_is_never_opened_through_a_link(outside):
    run, target = outside
    (run / ".fsam.lock").symlink_to(target)
    with pytest.raises(FileRefused, match="symbolic link"):
        open_lock_file(run / ".fsam.lock")
    assert target.read_text() == "precious\n"


def test_an_atomic_write_replaces_the_link_not_its_target(outside):
    run, target = outside
    (run / "summary.json").symlink_to(target)
    write_atomic(run / "summary.json", b"{}\n")
    assert target.read_text() == "precious\n"
    assert not (run / "summary.json").is_symlink() and (run / "summary.json").read_text() == "{}\n"


def test_writes_to_special_files_are_refused_without_blocking(tmp_path):
    fifo = _fifo(tmp_path / "metrics.jsonl")
    t0 = time.monotonic()
    with pytest.raises(FileRefused, match="not a regular file"):
        append_line(fifo, "{}")
    with pytest.raises(FileRefused, match="not a regular file"):
        open_lock_file(fifo)
    (tmp_path / "adir").mkdir()
    with pytest.raises(WriteError):
        write_atomic(tmp_path / "adir", b"x")
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- reads never block
@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
def test_reads_refuse_non_regular_files_at_once(tmp_path, kind):
    path = {
        "fifo": lambda: _fifo(tmp_path / "x.json"),
        "dir": lambda: tmp_path,
        "device": lambda: Path("/dev/zero"),
    }[kind]()
    t0 = time.monotonic()
    with pytest.raises(FileRefused, match="not a regular file"):
        read_text(path, "metrics file")
    with pytest.raises(FileRefused, match="not a regular file"):
        load_torch_file(path, "checkpoint")
    assert time.monotonic() - t0 < 5


def test_a_file_over_its_limit_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(10_000)
    with pytest.raises(FileRefused, match="is 10000 bytes, over the limit of 100"):
        read_text(big, "run summary", limit=100)


# --------------------------------------------------------------------------- one mode policy
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_writer_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert file_mode() == 0o666 & ~umask
        write_atomic(tmp_path / "checkpoint.pt", b"x")
        append_line(tmp_path / "metrics.jsonl", "{}")
        os.close(open_lock_file(tmp_path / ".fsam.lock"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert set(modes.values()) == {0o666 & ~umask}, modes


# --------------------------------------------------------------------------- atomic and interruptible
def test_an_interrupted_atomic_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    write_atomic(path, b"old")

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a checkpoint write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, interrupted)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_two_concurrent_updates_both_land(tmp_path):
    """Two `fsam analyze` on one run: the read-merge-write of analysis.json is serialised."""
    path = tmp_path / "analysis.json"
    barrier = threading.Barrier(2)

    def add(part):
        barrier.wait()

        def merge(old):
            current = json.loads(old) if old else {}
            time.sleep(0.2)  # both have read before either writes, were it not for the lock
            return json.dumps({**current, part: 1}).encode()

        update_file(path, merge)

    threads = [threading.Thread(target=add, args=(p,)) for p in ("sharpness", "trace")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(path.read_text()) == {"sharpness": 1, "trace": 1}


def test_update_json_refuses_a_file_that_is_not_an_object(tmp_path):
    path = tmp_path / "analysis.json"
    path.write_text("[1, 2]")
    with pytest.raises(rd.RunDirectoryError, match="holds a JSON list, not an object"):
        rd.update_json(path, "analysis file", lambda old: {"x": 1})
    assert path.read_text() == "[1, 2]"


# --------------------------------------------------------------------------- bounded readers
DEEP = 100_000


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_json, "[" * DEEP + "]" * DEEP),
        (parse_json, '{"a":' * DEEP + "1" + "}" * DEEP),
        (parse_toml, "a = " + "[" * DEEP + "]" * DEEP),
        (parse_yaml, "a: " + "[" * DEEP + "]" * DEEP),
        (parse_yaml, "".join("  " * i + "a:\n" for i in range(2000))),
    ],
)
def test_deep_nesting_is_one_clear_error(parse, text):
    with pytest.raises(FileRefused, match="nested more than 100 levels"):
        parse(text, "config file c")


def test_a_yaml_alias_bomb_is_refused_at_once():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    assert len(bomb) < 400
    t0 = time.monotonic()
    with pytest.raises(FileRefused, match="anchor or alias"):
        parse_yaml(bomb, "config file bomb.yaml")
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize("parse", [parse_json, parse_toml, parse_yaml])
@pytest.mark.parametrize("value", [str(2**64), "9" * 5000])
def test_huge_integers_are_refused_naming_the_limit(parse, value):
    text = {parse_json: '{"seed": %s}', parse_toml: "seed = %s", parse_yaml: "seed: %s"}[parse] % value
    with pytest.raises(FileRefused, match="(64 bits|digit)") as info:
        parse(text, "config file c")
    assert len(str(info.value)) < 400


def test_plain_data_within_the_limits_is_read():
    assert parse_json('{"a": [1, 2.5, null], "b": 18446744073709551615}', "f") == {
        "a": [1, 2.5, None],
        "b": 2**64 - 1,
    }
    assert parse_yaml("a: [1, 2]\nb: {c: x}\n", "f") == {"a": [1, 2], "b": {"c": "x"}}
    assert parse_toml("a = [1, 2]\n[b]\nc = 'x'\n", "f") == {"a": [1, 2], "b": {"c": "x"}}


def test_a_planted_os_system_pickle_holds_python_objects_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(FileRefused, match="holds Python objects.*nothing in it was run"):
        load_torch_file(path, "checkpoint")
    assert not marker.exists()


# --------------------------------------------------------------------------- environment
def test_memory_available_reads_the_address_space_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    pid = os.fork()
    if pid == 0:  # the limit in a child, so that this process keeps its own
        try:
            resource.setrlimit(resource.RLIMIT_AS, (64 << 30, hard))
            available, source = memory_available()
            ok = available is not None and available <= 64 << 30
            try:
                check_memory(1 << 50, "a test", "lower --image-size")
                ok = False
            except MemoryNeedError as exc:
                ok = ok and "lower --image-size" in str(exc) and "1.0 PiB" in str(exc)
        finally:
            os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0


def test_a_console_whose_reader_went_away_drops_output(tmp_path):
    read, write = os.pipe()
    stream = _TolerantStream(os.fdopen(write, "w", buffering=1))
    stream.write("first\n")
    os.close(read)  # `| head -1` exits
    for _ in range(3):
        stream.write("more\n" * 1000)
        stream.flush()
    assert stream.closed_reader


def test_long_strings_are_shortened_when_echoed():
    name = "n" * 100_000
    assert len(shorten(name)) < 260 and "100000 characters" in shorten(name)
    message = shorten_words(f"--name {name!r} cannot be a run name")
    assert len(message) < 400 and message.startswith("--name 'nnn") and message.endswith("run name")
