"""Issue 21's hostile files and environments through the `fsam` command (in-process `cli.main` where a
subprocess is not the point): each ends in exit 0 with a right result, or exit 2 with one line, and a
refused command changes no byte of the run or of anything outside it."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from testkit import FASHION_DIR as FASHION
from testkit import fsam, tiny_config

from friendly_sam import cli
from friendly_sam.train import run_dir as rd
from friendly_sam.train import train
from friendly_sam.train.checkpoint import save_atomic

pytestmark = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST"
)
TINY = ["--data-dir", str(FASHION), "--model", "cnn_small", "--train-subset", "128", "--test-subset", "100"]
TINY += ["--batch-size", "64", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch tiny run, made under umask 022."""
    run = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(0o022)
    try:
        train(tiny_config(epochs=2), run, progress=False, log=lambda m: None)
    finally:
        os.umask(old)
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (links as their target), hashed: "a refused command changes no byte"."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "->" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fsam_main(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args: str, match: str) -> str:
    code, _, err = fsam_main(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fsam "), err
    assert "Traceback" not in err and match in lines[0], lines[0]
    assert len(lines[0]) < 1200, "a long user string was echoed whole"
    return lines[0]


# --------------------------------------------------------------------------- links and modes
@pytest.mark.parametrize("name", [".fsam.lock", "resumes.jsonl", "metrics.jsonl"])
def test_a_run_file_linked_outside_is_refused_and_never_written(capsys, run, tmp_path, name):
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(target)
    before = snapshot(run, target.parent)
    refused(capsys, "train", "--resume", run, "--epochs", "3", match="is a symbolic link")
    assert snapshot(run, target.parent) == before


def test_a_fresh_run_into_a_directory_with_a_linked_lock_is_refused(capsys, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    out = tmp_path / "new"
    out.mkdir()
    (out / ".fsam.lock").symlink_to(target)
    refused(capsys, "train", *TINY, "--out", out, match="symbolic link")
    assert target.read_text() == "precious\n"


def test_every_run_file_follows_one_mode_policy(finished):
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in finished.iterdir() if p.is_file()}
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", ".fsam.lock"} <= set(modes)
    assert set(modes.values()) == {"0o644"}, modes  # umask 022: readable by all, as any file


# --------------------------------------------------------------------------- special files
def test_a_fifo_checkpoint_is_named_not_a_regular_file(capsys, run):
    (run / "checkpoint.pt").unlink()
    os.mkfifo(run / "checkpoint.pt")
    line = refused(capsys, "train", "--resume", run, match="is not a regular file")
    assert "FIFO" in line and "has not finished an epoch" not in line


def test_a_fifo_pretrained_file_is_named_not_a_regular_file(capsys, tmp_path):
    os.mkfifo(tmp_path / "weights.pt")
    refused(capsys, "train", *TINY, "--out", tmp_path / "r", "--pretrained", tmp_path / "weights.pt",
            match="is not a regular file")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_a_planted_os_system_pickle_is_refused_and_never_runs(capsys, run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "friendly-sam-checkpoint", "version": 2, "x": Payload()}, run / "checkpoint.pt")
    refused(capsys, "train", "--resume", run, "--epochs", "3", match="holds Python objects")
    assert not marker.exists()


def test_a_bad_rng_state_in_a_checkpoint_is_a_clear_error(capsys, run):
    ckpt = rd.read_checkpoint(run)
    ckpt["rng"]["torch"] = torch.zeros_like(ckpt["rng"]["torch"])  # right size, not an mt19937 state
    save_atomic(ckpt, run / "checkpoint.pt")  # a valid checksum: only the validation can catch it
    before = snapshot(run)
    refused(capsys, "train", "--resume", run, "--epochs", "3", match="not a torch generator state")
    assert snapshot(run) == before


def test_a_finished_run_without_metrics_is_not_resumed_blindly(capsys, run):
    (run / "metrics.jsonl").unlink()
    (run / "summary.json").unlink()
    before = snapshot(run)
    refused(capsys, "train", "--resume", run, match="per-epoch records were deleted")
    assert snapshot(run) == before


# --------------------------------------------------------------------------- bounded readers
DEEP = 60_000


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".toml", "lr = " + "[" * DEEP + "]" * DEEP),
        (".yaml", "lr: " + "[" * DEEP + "]" * DEEP),
        (".json", '{"lr": ' + "[" * DEEP + "]" * DEEP + "}"),
        (".yaml", 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'),
        (".toml", "seed = 18446744073709551616\n"),
        (".toml", "seed = " + "7" * 5000 + "\n"),
    ],
)
def test_hostile_config_files_are_one_line(capsys, tmp_path, suffix, text):
    config = tmp_path / f"c{suffix}"
    config.write_text(text)
    t0 = time.monotonic()
    line = refused(capsys, "train", "--config", config, *TINY, "--out", tmp_path / "r", match=str(config))
    assert any(limit in line for limit in ("nested more than", "anchor or alias", "64 bits", "digits")), line
    assert time.monotonic() - t0 < 10 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("seed", [str(2**64), "9" * 5000, "-" + "9" * 30])
def test_huge_seeds_on_the_command_line_say_what_to_do(capsys, tmp_path, seed):
    refused(capsys, "train", *TINY, "--seed", seed, "--out", tmp_path / "r", match="2**63")


def test_a_long_name_is_not_echoed_whole(capsys, tmp_path):
    line = refused(capsys, "train", *TINY, "--name", "n" * 100_000, match="cannot be a run name")
    assert "characters)" in line


@pytest.mark.parametrize("victim", ["config.json", "metrics.jsonl"])
def test_a_deeply_nested_run_file_is_one_line_in_resume_and_compare(capsys, run, victim):
    deep = "[" * DEEP + "]" * DEEP
    (run / victim).write_text(deep + "\n")
    before = snapshot(run)
    refused(capsys, "compare", run, match="nested more than")
    refused(capsys, "train", "--resume", run, "--epochs", "3", match="nested more than")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", '{"results": [1]}', '{"results": {"trace": 5}}', '{"results": {"trace": {"trace": "x"}}}'],
)
def test_a_damaged_analysis_file_is_survived_by_compare_and_refused_by_analyze(capsys, run, content):
    (run / "analysis.json").write_text(content)
    code, out, err = fsam_main(capsys, "compare", run)
    if code == 0:
        assert "| fsam |" in out and "Traceback" not in err
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1
    if content.startswith("[") or '"results": [' in content or '"trace": 5' in content:
        before = snapshot(run)
        refused(capsys, "analyze", run, "--parts", "trace", "--trace-samples", "1", "--subset", "32",
                "--quiet", match="analysis")  # fmt: skip
        assert snapshot(run) == before


def test_two_analyses_at_once_both_land(run):
    """Two `fsam analyze` on one run with different --parts: analysis.json keeps both."""
    small = ["--subset", "32", "--batch-size", "32", "--trace-samples", "2", "--sharpness-steps", "2", "--quiet"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "friendly_sam.cli", "analyze", str(run), "--parts", part, *small],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            text=True,
        )
        for part in ("sharpness", "trace")
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    results = json.loads((run / "analysis.json").read_text())["results"]
    assert {"sharpness", "trace"} <= set(results), sorted(results)


# --------------------------------------------------------------------------- compare
def test_compare_counts_a_copied_run_once(capsys, run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, out, _ = fsam_main(capsys, "compare", run, copy)
    assert code == 0 and "is a copy of the run" in out and "| fsam | 1 |" in out, out


def test_compare_keeps_runs_on_different_data_apart(capsys, run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    lines = (other / "metrics.jsonl").read_text().splitlines()  # another run: its own timings
    (other / "metrics.jsonl").write_text(
        "".join(line.replace('"train_time": ', '"train_time": 1') + "\n" for line in lines)
    )
    for d, classes in ((run, ["a", "b"]), (other, ["a", "c"])):
        (d / "classes.json").write_text(json.dumps({"classes": classes, "counts": {"train": 128}}))
    code, out, _ = fsam_main(capsys, "compare", run, other)
    assert code == 0 and "data #1" in out and "data #2" in out, out


def test_compare_refuses_metrics_whose_epochs_do_not_run_in_order(capsys, run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    second = json.loads(lines[1])
    (run / "metrics.jsonl").write_text("\n".join([lines[1], lines[0], json.dumps(second)]) + "\n")
    refused(capsys, "compare", run, match="epochs must run 1, 2, 3")


def test_compare_plot_into_an_existing_directory_is_refused(capsys, run, tmp_path):
    (tmp_path / "plots").mkdir()
    before = snapshot(tmp_path)
    refused(capsys, "compare", run, "--plot", tmp_path / "plots", match="is a directory")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- environment
def test_a_closed_stdout_never_stops_a_run(tmp_path):
    """`fsam train ... | head -1`: the run keeps training and checkpointing after its reader is gone."""
    out = tmp_path / "r"
    args = [*TINY, "--epochs", "3", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "friendly_sam.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout.readline().startswith(b"run directory")
    proc.stdout.close()  # head -1 exits
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Broken pipe" not in err and b"Traceback" not in err
    assert rd.read_checkpoint(out)["epoch"] == 3 and rd.has_summary(out)


def test_a_run_started_with_closed_stdout_and_stderr_completes_uncorrupted(tmp_path):
    """`fsam train ... >&- 2>&-`: no console at all; the run finishes and its files are intact (a C library's
    message to the closed descriptor 2 must not land in a file that reused it)."""
    out = tmp_path / "r"
    loud = [a for a in TINY if a != "--quiet"]  # the progress bar writes to stderr
    cmd = " ".join([shlex.quote(sys.executable), "-m", "friendly_sam.cli", "train", *loud, "--epochs", "2"])
    proc = subprocess.run(["sh", "-c", f"exec {cmd} --out {shlex.quote(str(out))} >&- 2>&-"], timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0
    assert rd.read_checkpoint(out)["epoch"] == 2 and [m["epoch"] for m in rd.read_metrics(out)] == [1, 2]


def test_an_image_size_beyond_memory_is_refused_with_the_number(capsys, tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
    from folder_helpers import tiny_args, write_png_folder

    data = write_png_folder(tmp_path / "data", {"train": 2})
    line = refused(capsys, "train", *tiny_args(data, "--image-size", "1000000", "--out", tmp_path / "r"),
                   match="lower --image-size")  # fmt: skip
    assert "needs" in line and "iB" in line and not (tmp_path / "r").exists()


def _ctrl_c_as_from_a_terminal() -> None:
    """In the child before exec: SIGINT at its default (an ignored SIGINT is inherited, and the pytest worker
    may carry one from a library under test), as in a shell where Ctrl-C reaches the program."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_after_a_checkpoint_says_how_to_continue_and_resumes(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(
        # far more epochs than can run before the signal, however slowly this test process is scheduled
        [sys.executable, "-m", "friendly_sam.cli", "train", *TINY, "--epochs", "100000", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True,
        preexec_fn=_ctrl_c_as_from_a_terminal,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # at whatever moment: in a step, an evaluation or a checkpoint write
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)
    assert f"continue the run with `fsam train --resume {out}`" in err
    result = fsam(
        "train", "--resume", str(out), "--epochs", str(rd.read_checkpoint(out)["epoch"] + 1), "--quiet"
    )
    assert result.returncode == 0, result.stderr


def test_interrupted_commands_are_told_their_own_way_to_continue(tmp_path):
    parser = cli.build_parser()
    analyze = parser.parse_args(["analyze", str(tmp_path)])
    assert "analysis.json is unchanged" in cli._continue_hint(analyze, ["analyze", str(tmp_path)])
    compare = parser.parse_args(["compare", str(tmp_path)])
    assert "nothing was written" in cli._continue_hint(compare, ["compare", str(tmp_path)])
    train_args = parser.parse_args(["train", "--out", str(tmp_path / "x")])
    train_args.run_dir = tmp_path / "x"
    assert "has no checkpoint yet" in cli._continue_hint(train_args, ["train", "--out", str(tmp_path / "x")])


# --------------------------------------------------------------------------- the error policy
def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_the_error_policy_separates_user_mistakes_from_bugs():
    ours = _raise(ValueError("--lr: invalid value"))  # raised here, in a test: not friendly_sam's frame
    assert cli.user_error(ours) is None  # a ValueError from outside our package is a bug
    from friendly_sam.train.config import TrainConfig

    try:
        TrainConfig(lr=-1.0).validate()
    except ValueError as exc:  # our own check's message
        assert cli.user_error(exc) is exc
    try:
        json.loads("{")  # a library's ValueError passing through: a bug, keep the traceback
    except ValueError as exc:
        assert cli.user_error(exc) is None
    try:
        int("x")  # a conversion gone wrong: not a check of ours, even inside our code
    except ValueError as exc:
        assert cli.user_error(exc) is None
    assert cli.user_error(_raise(FileNotFoundError(2, "No such file", "x"))) is not None
    assert cli.user_error(_raise(TypeError("bug"))) is None
    assert cli.user_error(_raise(RuntimeError("bug"))) is None
