"""One writer per run directory, with real concurrent processes; a killed holder never blocks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time

import pytest
from testkit import run_python

from friendly_sam.train.lock import (
    RunDirectoryError,
    RunInUseError,
    RunLock,
    check_run_name,
    create_run_dir,
    open_run_dir,
)
from friendly_sam.train.run_dir import CHECKPOINT_FILE, CONFIG_FILE, LOCK_FILE, METRICS_FILE

FORK = multiprocessing.get_context("fork")  # cheap children: torch is imported already


def test_a_held_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    with create_run_dir(tmp_path / "run") as lock:
        holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(
            RunInUseError, match=rf"in use by another fsam process \(pid {os.getpid()} on host"
        ):
            open_run_dir(tmp_path / "run")  # a --resume while the run is alive
        with pytest.raises(RunInUseError, match=f"kill {os.getpid()}") as info:
            create_run_dir(tmp_path / "run")  # a second fresh start
        assert info.value.holder["pid"] == os.getpid()
        assert lock.held
    assert not lock.held
    open_run_dir(tmp_path / "run").release()  # free again


def _fresh_start(run_dir, barrier, results):
    barrier.wait()
    try:
        lock = create_run_dir(run_dir)
    except RunDirectoryError as exc:  # RunInUseError included
        results.put(("lost", type(exc).__name__))
        return
    (run_dir / CHECKPOINT_FILE).write_bytes(b"x")  # the winner's run makes progress
    time.sleep(0.3)
    lock.release()
    results.put(("won", os.getpid()))


@pytest.mark.slow
def test_concurrent_fresh_starts_have_exactly_one_winner(tmp_path):
    for attempt in range(8):
        run_dir = tmp_path / f"runs{attempt}" / "same-out"
        barrier, results = FORK.Barrier(4), FORK.Queue()
        procs = [FORK.Process(target=_fresh_start, args=(run_dir, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert [o[0] for o in outcomes].count("won") == 1, outcomes


def _hold_forever(run_dir, ready):
    RunLock(run_dir).acquire()
    (run_dir / METRICS_FILE).write_text("{}\n")
    ready.set()
    time.sleep(600)


def test_a_holder_killed_with_sigkill_leaves_no_blocking_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_forever, args=(run_dir, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunInUseError, match=f"pid {holder.pid} on host"):
            open_run_dir(run_dir)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(60)
    assert holder.exitcode == -signal.SIGKILL
    (run_dir / ".checkpoint.pt.abc.tmp").write_bytes(b"half-written by the killed run")
    lock = create_run_dir(run_dir)  # stale lock file: no blocking; no checkpoint: startable anew
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert [p.name for p in lock.removed_temp_files] == [".checkpoint.pt.abc.tmp"]
    assert any("stopped before its first checkpoint" in n for n in lock.notes)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    lock.release()


@pytest.mark.slow
def test_lock_across_independent_interpreters(tmp_path):
    run_dir = tmp_path / "run"
    with create_run_dir(run_dir):
        code = (
            "import sys; from friendly_sam.train.lock import open_run_dir, RunInUseError\n"
            f"try: open_run_dir({str(run_dir)!r})\n"
            "except RunInUseError as e: print(e); sys.exit(3)\n"
        )
        result = run_python("-c", code)
    assert result.returncode == 3 and f"pid {os.getpid()}" in result.stdout
    assert run_python("-c", code).returncode == 0  # released: the other interpreter gets it


def test_what_a_fresh_start_may_reuse(tmp_path):
    killed_early = tmp_path / "early"
    killed_early.mkdir()
    (killed_early / CONFIG_FILE).write_text("{}")
    (killed_early / METRICS_FILE).write_text("")
    (killed_early / "tensorboard").mkdir()
    with create_run_dir(killed_early) as lock:  # config but no checkpoint: not stuck any more
        assert "removed config.json, metrics.jsonl, tensorboard" in lock.notes[0]
    started = tmp_path / "started"
    started.mkdir()
    (started / CHECKPOINT_FILE).write_bytes(b"x")
    with pytest.raises(
        RunDirectoryError, match=f"already holds a run; continue it with `fsam train --resume {started}`"
    ):
        create_run_dir(started)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(
        RunDirectoryError, match=r"holds files that are not a friendly-sam run \(thesis.tex\)"
    ):
        create_run_dir(home)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirectoryError, match="exists and is not a directory"):
        create_run_dir(tmp_path / "file")
    with pytest.raises(RunDirectoryError, match="is not a run directory"):
        open_run_dir(tmp_path / "nowhere")
    assert (home / "thesis.tex").read_text() == "precious"


def test_discard_removes_an_unstarted_run_only(tmp_path):
    lock = create_run_dir(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "a" / CONFIG_FILE).write_text("{}")
    lock.discard()  # e.g. the data set was missing
    assert not (tmp_path / "runs" / "a").exists() and not lock.held
    lock = create_run_dir(tmp_path / "b")
    (tmp_path / "b" / CHECKPOINT_FILE).write_bytes(b"x")
    lock.discard()
    assert (tmp_path / "b" / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize(
    "name", ["../../../../x", "a/b", "..", ".", ".hidden", "a\\b", "", "  ", "a\x00b", "x" * 300]
)
def test_run_names_cannot_leave_the_runs_folder(name):
    with pytest.raises(ValueError, match="cannot be a run name"):
        check_run_name(name)


@pytest.mark.parametrize("name", ["fsam", "fsam-rho0.1", "F-SAM rho=0.1", "sam_seed_3", "été"])
def test_ordinary_run_names_pass(name):
    assert check_run_name(name) == name
