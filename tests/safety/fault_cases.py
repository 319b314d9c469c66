"""The fault-injection cases: bad inputs and hostile states through every ``fsam`` command.

Each case is a command line (run in-process through ``friendly_sam.cli.main``, or in real processes for
kills, locks and resource limits) with the state it needs (a copy of a finished tiny run, a damaged file,
a planted pickle, ...). Its outcome is classified:

* ``clear error``: non-zero exit, exactly one line on stderr of the form ``fsam CMD: error: ...``, no
  traceback; where the case says so, the run's files are byte-for-byte unchanged and no planted code ran.
* ``survived``: exit 0 and the case's check of the result passes (e.g. a resume with more epochs
  continued and recorded the change, compare counted a directory given twice once).
* anything else is ``unhandled`` (a traceback, a silent success where an error was due, a wrong result).

tests/safety/test_fault_suite.py runs each case as its own test (``pytest tests/safety/test_fault_suite.py``;
needs real Fashion-MNIST at /usr/share/datasets/fashion-mnist) and requires every one to be handled.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from testkit import FASHION_DIR
from testkit import TINY as TINY_RUN

from friendly_sam.cli import main as fsam_main
from friendly_sam.train import run_dir as rd
from friendly_sam.train.checkpoint import load_checkpoint, save_atomic

FASHION = str(FASHION_DIR)
TINY = ["--data-dir", FASHION, *TINY_RUN]
UNWRITABLE = "/proc/fsam-fault-suite"  # not creatable, even for root


BAD_CONFIGS = {
    "config: YAML syntax error": ("a: [1, 2\nb: 3", ".yaml"),
    "config: TOML syntax error": ("lr = = 3", ".toml"),
    "config: JSON syntax error": ('{"lr": 0.1,', ".json"),
    "config: empty file": ("", ".toml"),
    "config: not UTF-8": (b"lr = 0.1\nname = '\xe9'\n", ".toml"),
    "config: over 1 MiB": ("# " + "x" * (1 << 20) + "\n", ".toml"),
    "config: milestones = 'abc'": ('milestones = "abc"\n', ".toml"),
    "config: data_dir = 5": ("data_dir = 5\n", ".toml"),
    "config: epochs = 2.0": ("epochs = 2.0\n", ".toml"),
    "config: epochs = true": ("epochs = true\n", ".toml"),
    "config: cutout = 'false' (string boolean)": ('cutout = "false"\n', ".toml"),
    "config: YAML string boolean": ("cutout: 'no'\n", ".yaml"),
    "config: unknown key": ("learning_rate = 0.1\n", ".toml"),
    "config: key twice in two sections": ("[optimizer]\nlr = 0.1\n[schedule]\nlr = 0.2\n", ".toml"),
    "config: a-b and a_b": ("train-subset = 5\ntrain_subset = 6\n", ".toml"),
    "config: YAML duplicate key": ("lr: 0.1\nlr: 0.2\n", ".yaml"),
    "config: JSON duplicate key": ('{"lr": 0.1, "lr": 0.2}', ".json"),
    "config: top level a list": ("- 1\n- 2\n", ".yaml"),
    "config: lr = 'fast'": ('lr = "fast"\n', ".toml"),
    "config: lr = -1": ("lr = -1.0\n", ".toml"),
    "config: rho = nan": ("rho = nan\n", ".toml"),
    "config: rho = inf": ("rho = inf\n", ".toml"),
    "config: batch_size = 0": ("batch_size = 0\n", ".toml"),
    "config: unknown model": ('model = "resnet9000"\n', ".toml"),
    "config: unknown optimizer": ('optimizer = "adam7"\n', ".toml"),
    "config: unknown dataset": ('dataset = "imagenet-22k"\n', ".toml"),
    "config: label_noise = 2": ("label_noise = 2.0\n", ".toml"),
    "config: nested table in a section": ("[optimizer]\n[optimizer.inner]\nlr = 1\n", ".toml"),
    "config: YAML python tag": ("lr: !!python/object/apply:os.system ['touch pwned']\n", ".yaml"),
}

BAD_FLAGS = {
    "--lr abc": ["--lr", "abc"],
    "--lr nan": ["--lr", "nan"],
    "--lr inf": ["--lr", "inf"],
    "--lr -1": ["--lr", "-1"],
    "--epochs 0": ["--epochs", "0"],
    "--epochs -1": ["--epochs", "-1"],
    "--epochs 1.5": ["--epochs", "1.5"],
    "--batch-size 0": ["--batch-size", "0"],
    "--threads 0": ["--threads", "0"],
    "--train-subset 0": ["--train-subset", "0"],
    "--train-subset -5": ["--train-subset", "-5"],
    "--label-noise 1.5": ["--label-noise", "1.5"],
    "--label-noise nan": ["--label-noise", "nan"],
    "--milestones abc": ["--milestones", "abc"],
    "--milestones 2": ["--schedule", "step", "--milestones", "2"],
    "--warmup-epochs past the end": ["--warmup-epochs", "5"],
    "--device cuda:abc": ["--device", "cuda:abc"],
    "--device tpu": ["--device", "tpu"],
    "--device cuda without a GPU": ["--device", "cuda"]
    if not torch.cuda.is_available()
    else ["--device", "cuda:99"],
    "--rho -0.1": ["--rho", "-0.1"],
    "--rho inf": ["--rho", "inf"],
    "--momentum 2": ["--momentum", "2"],
    "--method base --component minibatch": ["--method", "base", "--component", "minibatch"],
    "--model unknown": ["--model", "nope"],
    "--dataset unknown": ["--dataset", "nope"],
    "--seed abc": ["--seed", "abc"],
    "--max-grad-norm 0": ["--max-grad-norm", "0"],
    "unknown flag --foo": ["--foo", "1"],
    "--name ../../../../x": ["--name", "../../../../x"],
    "--name with a slash": ["--name", "a/b"],
    "--name .hidden": ["--name", ".hidden"],
    "--name control chars": ["--name", "a\nb"],
    "--name 300 bytes": ["--name", "n" * 300],
}


def _without_flags_set_by(text: str) -> list[str]:
    """TINY without the flags for options a config file sets (a flag would override the bad value)."""
    flags: list[str] = []
    for flag, value in zip(TINY[::2], TINY[1::2]):
        if flag[2:].replace("-", "_") not in text:
            flags += [flag, value]
    return flags + ["--quiet"]


ANALYZE_QUICK = ["--subset", "32", "--parts", "sharpness", "--sharpness-steps", "1", "--quiet"]


@dataclass
class Case:
    """One bad input: ``argv`` for ``fsam`` (``{run}``, ``{ws}``, ``{fresh}``, ``{template}`` are substituted), the expected outcome
    (``error`` or ``ok``), an optional ``setup(ws) -> run`` preparing a run directory, a ``check`` of the
    result for ``ok`` cases, and ``intact``: the run's files must be unchanged afterwards."""

    name: str
    argv: list[str]
    expect: str = "error"
    setup: Callable[[Path], Path] | None = None
    check: Callable[[Path, str], bool] | None = None
    intact: bool = False
    marker: bool = False  # a planted payload would create ws/pwned


@dataclass
class Outcome:
    name: str
    handled: bool
    kind: str
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- states
class Workspace:
    """A temporary directory for one case, with helpers to damage copies of a finished tiny run (the
    template, built once by :func:`make_template` and never changed)."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.template = template
        self.count = 0

    def copy(self, unfinished: bool = True) -> Path:
        """A fresh copy of the finished run; ``unfinished``: without summary.json (resumable)."""
        self.count += 1
        run = self.root / f"run{self.count}"
        shutil.copytree(self.template, run)
        if unfinished:
            (run / rd.SUMMARY_FILE).unlink()
        return run

    def fresh(self) -> Path:
        self.count += 1
        return self.root / f"new{self.count}"


def make_template(path: Path) -> Path:
    """The finished 2-epoch F-SAM run every case copies."""
    code = fsam_main(["train", "--out", str(path), *TINY, "--epochs", "2", "--method", "fsam"])
    assert code == 0, "the template run failed"
    return path


def snapshot(run: Path) -> dict[str, bytes]:
    if not run.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != rd.LOCK_FILE}


def edit_checkpoint(edit: Callable[[dict[str, Any]], None]) -> Callable[[Workspace], Path]:
    """A setup: a copy whose checkpoint was changed by ``edit`` and saved again (a valid checksum)."""

    def setup(ws: Workspace) -> Path:
        run = ws.copy()
        ckpt = load_checkpoint(run / rd.CHECKPOINT_FILE)
        edit(ckpt)
        save_atomic(ckpt, run / rd.CHECKPOINT_FILE)
        return run

    return setup


def write_checkpoint_bytes(make: Callable[[bytes], bytes]) -> Callable[[Workspace], Path]:
    def setup(ws: Workspace) -> Path:
        run = ws.copy()
        path = run / rd.CHECKPOINT_FILE
        path.write_bytes(make(path.read_bytes()))
        return run

    return setup


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> Any:  # unpickling this would create a file: code execution
        return (open, (self.target, "w"))


def planted(ws: Workspace) -> Path:
    run = ws.copy()
    ckpt = torch.load(run / rd.CHECKPOINT_FILE, weights_only=True)
    ckpt["model"]["evil"] = _Payload(str(ws.root / "pwned"))  # type: ignore[assignment]
    torch.save(ckpt, run / rd.CHECKPOINT_FILE)
    return run


def flip_bit(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 0x10  # inside the tensor data
    return bytes(raw)


def with_file(name: str, content: str | bytes, base: Callable[[Workspace], Path] | None = None):
    def setup(ws: Workspace) -> Path:
        run = base(ws) if base else ws.copy()
        path = run / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return run

    return setup


def config_file(text: str | bytes, suffix: str = ".toml") -> Callable[[Workspace], Path]:
    """A setup: a config file in the workspace (the case's ``{run}`` is that file)."""

    def setup(ws: Workspace) -> Path:
        ws.count += 1
        path = ws.root / f"config{ws.count}{suffix}"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return setup


def nan_weights(ckpt: dict[str, Any]) -> None:
    for value in ckpt["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))


def foreign_run(ws: Workspace) -> Path:
    """A copy whose checkpoint came from a run with other settings (lr and rho 0.3)."""
    run = ws.copy()
    other = ws.fresh()
    assert (
        fsam_main(["train", "--out", str(other), *TINY, "--method", "fsam", "--lr", "0.3", "--rho", "0.3"])
        == 0
    )
    shutil.copy(other / rd.CHECKPOINT_FILE, run / rd.CHECKPOINT_FILE)
    return run


# --------------------------------------------------------------------------- checks of "ok" cases
def resumed_with_more_epochs(run: Path, out: str) -> bool:
    entries = [json.loads(line) for line in (run / rd.RESUMES_FILE).read_text().splitlines()]
    metrics = rd.read_metrics(run)
    return entries[-1]["changes"]["epochs"]["now"] == 3 and [m["epoch"] for m in metrics] == [1, 2, 3]


def counted_once(run: Path, out: str) -> bool:
    return "counted once" in out and "| fsam | 1 |" in out


def two_rows(run: Path, out: str) -> bool:
    return "differ in lr" in out and out.count("| fsam [lr=") == 2


def strict_json_everywhere(run: Path, out: str) -> bool:
    for path in run.iterdir():
        if path.suffix in (".json", ".jsonl"):
            for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
                json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    return True


def skipped_split_null(ws_root: Path) -> Callable[[Workspace], Path]:
    def setup(ws: Workspace) -> Path:
        run = ws.copy(unfinished=False)
        lines = (run / rd.METRICS_FILE).read_text().splitlines()
        first = json.loads(lines[0])
        first["test_acc"] = first["test_loss"] = None
        lines[0] = json.dumps(first)
        (run / rd.METRICS_FILE).write_text("\n".join(lines) + "\n")
        return run

    return setup


# --------------------------------------------------------------------------- the cases
def _train_config_file_cases(add: Callable[[Case], None]) -> None:
    """fsam train: config files"""
    for name, (text, suffix) in BAD_CONFIGS.items():
        flags = _without_flags_set_by(str(text))
        add(
            Case(
                f"train {name}",
                ["train", "--config", "{run}", "--out", "{fresh}", *flags],
                setup=config_file(text, suffix),
            )
        )
    add(Case("train config: missing file", ["train", "--config", "{ws}/missing.toml", *TINY]))
    add(Case("train config: a directory", ["train", "--config", "{ws}", *TINY]))
    add(Case("train config: /dev/null", ["train", "--config", "/dev/null", *TINY]))
    add(Case("train config: a FIFO", ["train", "--config", "{ws}/fifo", *TINY], setup=_fifo))


def _train_flag_cases(add: Callable[[Case], None]) -> None:
    """fsam train: flags"""
    for name, flags in BAD_FLAGS.items():
        add(Case(f"train {name}", ["train", "--out", "{fresh}", *TINY, *flags]))
    add(Case("train --name ../x without --out", ["train", *TINY, "--name", "../../../../x"]))


def _train_data_and_out_cases(add: Callable[[Case], None]) -> None:
    """fsam train: inputs that must succeed"""
    add(
        Case(  # an empty name is no name: the label is the optimizer
            "train --name '' (no name)",
            ["train", "--out", "{ws}/noname", *TINY, "--name", ""],
            expect="ok",
            check=lambda run, out: (run.parent / "noname" / rd.SUMMARY_FILE).is_file(),
        )
    )
    add(
        Case(  # the documented search goes on to the standard copy (md5-verified): a correct run
            "train --data-dir missing (the standard copy is found)",
            ["train", "--out", "{ws}/found", *TINY, "--data-dir", "{ws}/nodata"],
            expect="ok",
            check=lambda run, out: (run.parent / "found" / rd.CHECKPOINT_FILE).is_file(),
        )
    )
    add(
        Case(
            "train --data-dir a file (the standard copy is found)",
            ["train", "--out", "{ws}/found2", *TINY, "--data-dir", "/etc/hostname"],
            expect="ok",
            check=lambda run, out: (run.parent / "found2" / rd.CHECKPOINT_FILE).is_file(),
        )
    )
    add(
        Case(
            "train --data-dir garbage files",
            ["train", "--out", "{fresh}", *TINY, "--data-dir", "{run}"],
            setup=_garbage_data,
        )
    )
    add(Case("train --out is a file", ["train", "--out", "/etc/hostname", *TINY]))


def _train_run_dir_and_divergence_cases(add: Callable[[Case], None]) -> None:
    """fsam train: run directories"""
    add(Case("train --out not creatable", ["train", "--out", UNWRITABLE + "/run", *TINY]))
    add(Case("train --out name too long", ["train", "--out", "{ws}/" + "x" * 300, *TINY]))
    add(
        Case(
            "train --out holds a run",
            ["train", "--out", "{run}", *TINY],
            setup=lambda ws: ws.copy(False),
            intact=True,
        )
    )
    add(
        Case(
            "train --out holds foreign files",
            ["train", "--out", "{run}", *TINY],
            setup=with_file("notes.txt", "mine", lambda ws: _mkdir(ws)),
            intact=True,
        )
    )
    add(
        Case(
            "train --rho 1e30 (perturbed gradient not finite)",
            ["train", "--out", "{ws}/div1", *TINY, "--method", "fsam", "--rho", "1e30"],
        )
    )
    add(
        Case(
            "train --rho 1e300 --sigma 1e300",
            [
                "train",
                "--out",
                "{ws}/div2",
                *TINY,
                "--method",
                "fsam",
                "--rho",
                "1e300",
                "--sigma",
                "1e300",
            ],
        )
    )
    add(
        Case(
            "train --lr 1e12 (loss explodes)",
            ["train", "--out", "{ws}/div3", *TINY, "--lr", "1e12", "--method", "base"],
        )
    )


def _train_divergence_and_restart_cases(add: Callable[[Case], None]) -> None:
    """fsam train: flags (continued)"""
    add(
        Case(
            "train --lr 1e12 sam (loss explodes)",
            ["train", "--out", "{ws}/div4", *TINY, "--lr", "1e12", "--method", "sam"],
        )
    )
    add(
        Case(
            "train a run stopped before its first checkpoint, started anew",
            ["train", "--config", "{run}/config.json", "--out", "{run}", "--quiet"],
            expect="ok",
            setup=_killed_early,
            check=lambda run, out: (run / rd.CHECKPOINT_FILE).is_file(),
        )
    )


def _resume_setting_cases(add: Callable[[Case], None]) -> None:
    """fsam train --resume"""
    add(Case("resume: missing directory", ["train", "--resume", "{ws}/missing"]))
    add(Case("resume: a file", ["train", "--resume", "/etc/hostname"]))
    add(Case("resume: directory without a run", ["train", "--resume", "{run}"], setup=_mkdir))
    add(
        Case(
            "resume: stopped before its first checkpoint",
            ["train", "--resume", "{run}"],
            setup=_killed_early,
            intact=True,
        )
    )
    add(
        Case(
            "resume: --lr differs",
            ["train", "--resume", "{run}", "--lr", "0.3"],
            setup=lambda ws: ws.copy(),
            intact=True,
        )
    )
    add(
        Case(
            "resume: --rho differs",
            ["train", "--resume", "{run}", "--rho", "0.3"],
            setup=lambda ws: ws.copy(),
            intact=True,
        )
    )
    add(
        Case(
            "resume: --model differs",
            ["train", "--resume", "{run}", "--model", "resnet8"],
            setup=lambda ws: ws.copy(),
            intact=True,
        )
    )
    add(
        Case(
            "resume: --config with another rho",
            ["train", "--resume", "{run}", "--config", "{ws}/rho.toml"],
            setup=_rho_config,
            intact=True,
        )
    )
    add(
        Case(
            "resume: --epochs fewer than done",
            ["train", "--resume", "{run}", "--epochs", "1"],
            setup=lambda ws: ws.copy(),
            intact=True,
        )
    )
    add(
        Case(
            "resume: --out elsewhere",
            ["train", "--resume", "{run}", "--out", "{ws}/other"],
            setup=lambda ws: ws.copy(),
            intact=True,
        )
    )
    add(
        Case(
            "resume: --epochs 3 (safe, recorded)",
            ["train", "--resume", "{run}", "--epochs", "3", "--quiet"],
            expect="ok",
            setup=lambda ws: ws.copy(False),
            check=resumed_with_more_epochs,
        )
    )


def _resume_damaged_checkpoint_cases(add: Callable[[Case], None]) -> None:
    """fsam train --resume (continued)"""
    add(
        Case(
            "resume: --device cpu --threads 1 (safe)",
            ["train", "--resume", "{run}", "--device", "cpu", "--quiet"],
            expect="ok",
            setup=lambda ws: ws.copy(),
            check=lambda run, out: (run / rd.SUMMARY_FILE).is_file(),
        )
    )
    add(
        Case(
            "resume: a finished run",
            ["train", "--resume", "{run}", "--quiet"],
            expect="ok",
            setup=lambda ws: ws.copy(False),
            check=lambda run, out: "already finished" in out,
        )
    )
    add(
        Case(
            "resume: strict JSON after resume",
            ["train", "--resume", "{run}", "--quiet"],
            expect="ok",
            setup=lambda ws: ws.copy(),
            check=strict_json_everywhere,
        )
    )
    add(
        Case(
            "resume: planted pickle", ["train", "--resume", "{run}"], setup=planted, intact=True, marker=True
        )
    )
    add(
        Case(
            "resume: one flipped bit",
            ["train", "--resume", "{run}"],
            setup=write_checkpoint_bytes(flip_bit),
            intact=True,
        )
    )
    add(
        Case(
            "resume: truncated checkpoint",
            ["train", "--resume", "{run}"],
            setup=write_checkpoint_bytes(lambda d: d[: len(d) // 3]),
            intact=True,
        )
    )
    add(
        Case(
            "resume: empty checkpoint",
            ["train", "--resume", "{run}"],
            setup=write_checkpoint_bytes(lambda d: b""),
            intact=True,
        )
    )
    add(
        Case(
            "resume: random bytes",
            ["train", "--resume", "{run}"],
            setup=write_checkpoint_bytes(lambda d: random.Random(0).randbytes(4096)),
            intact=True,
        )
    )


def _resume_checkpoint_content_cases(add: Callable[[Case], None]) -> None:
    """fsam train --resume (continued)"""
    add(
        Case(
            "resume: checkpoint epoch -3",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c.update(epoch=-3)),
            intact=True,
        )
    )
    add(
        Case(
            "resume: checkpoint epoch 6 of a 2-epoch run",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c.update(epoch=6)),
            intact=True,
        )
    )
    add(
        Case(
            "resume: checkpoint elapsed nan",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c.update(elapsed=float("nan"))),
            intact=True,
        )
    )
    add(
        Case(
            "resume: checkpoint missing 'model'",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c.pop("model")),
            intact=True,
        )
    )
    add(
        Case(
            "resume: model missing a key",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c["model"].popitem()),
            intact=True,
        )
    )
    add(
        Case(
            "resume: wrong tensor shape",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(_wrong_shape),
            intact=True,
        )
    )
    add(
        Case(
            "resume: optimizer state of another optimizer",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c.update(optimizer={"state": {}, "param_groups": []})),
            intact=True,
        )
    )
    add(
        Case(
            "resume: rng state not uint8",
            ["train", "--resume", "{run}"],
            setup=edit_checkpoint(lambda c: c["rng"].update(torch=torch.zeros(3))),
            intact=True,
        )
    )


def _resume_foreign_file_cases(add: Callable[[Case], None]) -> None:
    """fsam train --resume (continued)"""
    add(
        Case(
            "resume: a foreign run's checkpoint",
            ["train", "--resume", "{run}"],
            setup=foreign_run,
            intact=True,
        )
    )
    add(
        Case(
            "resume: not a friendly-sam file",
            ["train", "--resume", "{run}"],
            setup=_plain_torch_file,
            intact=True,
        )
    )
    add(
        Case(
            "resume: checkpoint is a directory",
            ["train", "--resume", "{run}"],
            setup=_checkpoint_dir,
            intact=True,
        )
    )
    add(
        Case(
            "resume: config.json not JSON",
            ["train", "--resume", "{run}"],
            setup=with_file(rd.CONFIG_FILE, "{oops"),
            intact=True,
        )
    )
    add(
        Case(
            "resume: config.json a list",
            ["train", "--resume", "{run}"],
            setup=with_file(rd.CONFIG_FILE, "[1, 2]"),
            intact=True,
        )
    )
    add(
        Case(
            "resume: config.json wrong type",
            ["train", "--resume", "{run}"],
            setup=_config_wrong_type,
            intact=True,
        )
    )
    add(
        Case(
            "resume: metrics.jsonl damaged line",
            ["train", "--resume", "{run}"],
            setup=_damaged_metrics,
            intact=True,
        )
    )
    add(
        Case(
            "resume: NaN weights in the checkpoint",
            ["train", "--resume", "{run}", "--quiet"],
            setup=edit_checkpoint(nan_weights),
        )
    )


def _analyze_input_cases(add: Callable[[Case], None]) -> None:
    """fsam analyze"""
    add(Case("analyze: missing directory (never created)", ["analyze", "{ws}/missing-run"], check=None))
    add(Case("analyze: a file", ["analyze", "/etc/hostname"]))
    add(Case("analyze: directory without a run", ["analyze", "{run}"], setup=_mkdir))
    for flag, value in (
        ("--span", "inf"),
        ("--span", "nan"),
        ("--span", "-1"),
        ("--span", "0"),
        ("--eig-tol", "nan"),
        ("--rho", "inf"),
        ("--rho", "-1"),
        ("--rho", "nan"),
        ("--subset", "0"),
        ("--points-1d", "1"),
        ("--points-2d", "0"),
        ("--eig-iters", "0"),
        ("--batch-size", "-3"),
        ("--threads", "0"),
        ("--device", "tpu"),
        ("--device", "cuda:abc"),
        ("--parts", "foo"),
        ("--skip", "all"),
        ("--bn-mode", "train"),
        ("--seed", "x"),
    ):
        add(
            Case(
                f"analyze {flag} {value}",
                ["analyze", "{run}", *ANALYZE_QUICK, flag, value],
                setup=lambda ws: ws.copy(False),
                intact=True,
            )
        )
    if not torch.cuda.is_available():
        add(
            Case(
                "analyze --device cuda without a GPU",
                ["analyze", "{run}", *ANALYZE_QUICK, "--device", "cuda"],
                setup=lambda ws: ws.copy(False),
                intact=True,
            )
        )
    add(
        Case(
            "analyze: --checkpoint missing",
            ["analyze", "{run}", *ANALYZE_QUICK, "--checkpoint", "{ws}/none.pt"],
            setup=lambda ws: ws.copy(False),
            intact=True,
        )
    )
    add(
        Case(
            "analyze: planted pickle",
            ["analyze", "{run}", *ANALYZE_QUICK],
            setup=planted,
            intact=True,
            marker=True,
        )
    )
    add(
        Case(
            "analyze: flipped bit",
            ["analyze", "{run}", *ANALYZE_QUICK],
            setup=write_checkpoint_bytes(flip_bit),
            intact=True,
        )
    )


def _analyze_checkpoint_cases(add: Callable[[Case], None]) -> None:
    """fsam analyze (continued)"""
    add(
        Case(
            "analyze: a foreign run's checkpoint",
            ["analyze", "{run}", *ANALYZE_QUICK],
            setup=foreign_run,
            intact=True,
        )
    )
    add(
        Case(
            "analyze: checkpoint epoch 6 of a 2-epoch run",
            ["analyze", "{run}", *ANALYZE_QUICK],
            setup=edit_checkpoint(lambda c: c.update(epoch=6)),
            intact=True,
        )
    )
    add(
        Case(
            "analyze: wrong tensor shape",
            ["analyze", "{run}", *ANALYZE_QUICK],
            setup=edit_checkpoint(_wrong_shape),
            intact=True,
        )
    )
    add(
        Case(
            "analyze: NaN weights (never a sharpness of 0.0)",
            ["analyze", "{run}", *ANALYZE_QUICK],
            setup=edit_checkpoint(nan_weights),
        )
    )
    add(
        Case(
            "analyze: --out not creatable",
            ["analyze", "{run}", *ANALYZE_QUICK, "--out", UNWRITABLE + "/a"],
            setup=lambda ws: ws.copy(False),
        )
    )
    add(
        Case(
            "analyze: a good run",
            ["analyze", "{run}", *ANALYZE_QUICK],
            expect="ok",
            setup=lambda ws: ws.copy(False),
            check=strict_json_everywhere,
        )
    )


def _compare_cases(add: Callable[[Case], None]) -> None:
    """fsam compare"""
    add(Case("compare: missing directory", ["compare", "{ws}/missing"]))
    add(Case("compare: empty directory", ["compare", "{run}"], setup=_mkdir))
    add(Case("compare: run without metrics", ["compare", "{run}"], setup=_killed_early))
    add(Case("compare: damaged metrics.jsonl", ["compare", "{run}"], setup=_damaged_metrics))
    add(Case("compare: config.json not JSON", ["compare", "{run}"], setup=with_file(rd.CONFIG_FILE, "{oops")))
    add(
        Case(
            "compare: --metric unknown",
            ["compare", "{run}", "--metric", "nope"],
            setup=lambda ws: ws.copy(False),
        )
    )
    add(
        Case(
            "compare: --plot not writable",
            ["compare", "{run}", "--plot", UNWRITABLE + "/p.png"],
            setup=lambda ws: ws.copy(False),
        )
    )
    add(
        Case(
            "compare: the same run twice",
            ["compare", "{run}", "{run}/../" + "{runname}"],
            expect="ok",
            setup=lambda ws: ws.copy(False),
            check=counted_once,
        )
    )
    add(
        Case(
            "compare: one label, two settings",
            ["compare", "{run}", "{template}"],
            expect="ok",
            setup=_other_lr,
            check=two_rows,
        )
    )
    add(
        Case(
            "compare: null for a skipped split",
            ["compare", "{run}"],
            expect="ok",
            setup=skipped_split_null(Path()),
            check=lambda run, out: "| fsam | 1 |" in out,
        )
    )


def _demo_models_and_command_cases(add: Callable[[Case], None]) -> None:
    """fsam demo, models, no command"""
    add(Case("demo --epochs 0", ["demo", "--out", "{ws}/demo", "--epochs", "0"]))
    add(Case("demo --train-subset -1", ["demo", "--out", "{ws}/demo", "--train-subset", "-1"]))
    add(Case("demo --seed abc", ["demo", "--out", "{ws}/demo", "--seed", "abc"]))
    add(
        Case(
            "demo --out not creatable",
            ["demo", "--out", UNWRITABLE, "--data-dir", FASHION, "--epochs", "1", "--train-subset", "128"],
        )
    )
    add(Case("models --num-classes 0", ["models", "--num-classes", "0"]))
    add(Case("models --in-channels abc", ["models", "--in-channels", "abc"]))
    add(Case("no command", []))
    add(Case("unknown command", ["frobnicate"]))


def cases() -> list[Case]:
    """Every in-process case."""
    out: list[Case] = []
    _train_config_file_cases(out.append)
    _train_flag_cases(out.append)
    _train_data_and_out_cases(out.append)
    _train_run_dir_and_divergence_cases(out.append)
    _train_divergence_and_restart_cases(out.append)
    _resume_setting_cases(out.append)
    _resume_damaged_checkpoint_cases(out.append)
    _resume_checkpoint_content_cases(out.append)
    _resume_foreign_file_cases(out.append)
    _analyze_input_cases(out.append)
    _analyze_checkpoint_cases(out.append)
    _compare_cases(out.append)
    _demo_models_and_command_cases(out.append)
    return out


def _mkdir(ws: Workspace) -> Path:
    path = ws.fresh()
    path.mkdir()
    return path


def _fifo(ws: Workspace) -> Path:
    os.mkfifo(ws.root / "fifo")
    return ws.root / "fifo"


def _garbage_data(ws: Workspace) -> Path:
    path = _mkdir(ws)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (path / name).write_bytes(os.urandom(64))
    return path


def _killed_early(ws: Workspace) -> Path:
    run = ws.copy()
    (run / rd.CHECKPOINT_FILE).unlink()
    (run / rd.METRICS_FILE).unlink()
    return run


def _rho_config(ws: Workspace) -> Path:
    (ws.root / "rho.toml").write_text("rho = 0.3\n")
    return ws.copy()


def _wrong_shape(ckpt: dict[str, Any]) -> None:
    key = next(k for k, v in ckpt["model"].items() if v.dim() > 1)
    ckpt["model"][key] = torch.zeros(3, 3)


def _plain_torch_file(ws: Workspace) -> Path:
    run = ws.copy()
    torch.save({"weights": torch.zeros(3)}, run / rd.CHECKPOINT_FILE)
    return run


def _checkpoint_dir(ws: Workspace) -> Path:
    run = ws.copy()
    (run / rd.CHECKPOINT_FILE).unlink()
    (run / rd.CHECKPOINT_FILE).mkdir()
    return run


def _config_wrong_type(ws: Workspace) -> Path:
    run = ws.copy()
    cfg = json.loads((run / rd.CONFIG_FILE).read_text())
    cfg["epochs"] = "two"
    (run / rd.CONFIG_FILE).write_text(json.dumps(cfg))
    return run


def _damaged_metrics(ws: Workspace) -> Path:
    run = ws.copy()
    (run / rd.METRICS_FILE).write_text('{"epoch": 1, "train_loss": 2.0}\n{garbage\n{"epoch": 2}\n')
    return run


def _other_lr(ws: Workspace) -> Path:
    run = ws.fresh()
    assert (
        fsam_main(["train", "--out", str(run), *TINY, "--epochs", "2", "--method", "fsam", "--lr", "0.1"])
        == 0
    )
    return run


# --------------------------------------------------------------------------- running cases
def run_case(case: Case, ws: Workspace) -> Outcome:
    t0 = time.perf_counter()
    run = case.setup(ws) if case.setup else ws.root / "none"
    fresh = str(ws.fresh())  # a directory of its own: one case's run never blocks the next
    argv = [
        a.replace("{run}", str(run))
        .replace("{ws}", str(ws.root))
        .replace("{runname}", run.name)
        .replace("{fresh}", fresh)
        .replace("{template}", str(ws.template))
        for a in case.argv
    ]
    before = snapshot(run) if case.intact else None
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ws.root)  # runs/ of a case without --out lands in the workspace
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = fsam_main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # escaped main(): a traceback for the user
                traceback.print_exc()
                code = -1
    finally:
        os.chdir(cwd)
    outcome = classify(case, ws, run, code, stdout.getvalue(), stderr.getvalue(), before)
    outcome.extra["time_s"] = round(time.perf_counter() - t0, 2)
    return outcome


def classify(
    case: Case, ws: Workspace, run: Path, code: int, out: str, err: str, before: dict[str, bytes] | None
) -> Outcome:
    lines = [line for line in err.splitlines() if line.strip()]
    problems = []
    if "Traceback" in err:
        problems.append("traceback")
    if case.marker and (ws.root / "pwned").exists():
        problems.append("planted code ran")
    if before is not None and snapshot(run) != before:
        problems.append("run files changed")
    if case.expect == "error":
        if code == 0:
            problems.append("exit 0 (silently accepted)")
        elif len(lines) != 1 or not lines[0].startswith("fsam") or "error:" not in lines[0]:
            problems.append(f"stderr is not one error line: {err.strip()[-300:]!r}")
        kind = "clear error"
    else:
        if code != 0:
            problems.append(f"exit {code}: {err.strip()[-300:]!r}")
        elif case.check is not None:
            try:
                ok = case.check(run, out)
            except Exception as exc:  # a check that cannot even read the result: not survived
                ok, out = False, f"{out}\ncheck failed: {exc!r}"
            if not ok:
                problems.append(f"wrong result: {out.strip()[-300:]!r}")
        kind = "survived"
    message = lines[-1] if lines else ""
    return Outcome(
        case.name,
        not problems,
        kind if not problems else "unhandled",
        "; ".join(problems),
        {"message": message[:300]},
    )


# --------------------------------------------------------------------------- subprocess cases
SUBPROCESS_CASES = {
    "concurrent: second fresh start with one --out": "writers",
    "concurrent: --resume while the run is alive": "writers",
    "kill -9 mid-run, then --resume": "writers",
    "full disk during the checkpoint write": "full disk",
    "run directory deleted mid-run": "deleted",
}
LONG = [*TINY, "--epochs", "4", "--train-subset", "1536"]  # lives long enough to be disturbed, even when busy


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "friendly_sam.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, timeout: float = 120) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.stat().st_size > 0:
            return True
        time.sleep(0.05)
    return False


def writers_and_kill(ws: Workspace) -> list[Outcome]:
    """Two writers on one run directory (the second is refused naming the holder), then SIGKILL mid-run
    and a resume that finishes with one strict metrics record per epoch: real processes."""
    results = []
    run = ws.fresh()
    first = subprocess.Popen(
        _cli("train", "--out", str(run), *LONG), env=_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(run / rd.LOCK_FILE)
        time.sleep(0.5)
        second = subprocess.run(
            _cli("train", "--out", str(run), *TINY), env=_env(), capture_output=True, text=True
        )
        ok = (
            second.returncode == 2
            and f"pid {first.pid}" in second.stderr
            and "Traceback" not in second.stderr
        )
        results.append(
            Outcome(
                "concurrent: second fresh start with one --out",
                ok,
                "clear error" if ok else "unhandled",
                second.stderr.strip()[-300:],
            )
        )
        _wait_for(run / rd.METRICS_FILE)
        third = subprocess.run(
            _cli("train", "--resume", str(run)), env=_env(), capture_output=True, text=True
        )
        ok = third.returncode == 2 and f"pid {first.pid}" in third.stderr
        results.append(
            Outcome(
                "concurrent: --resume while the run is alive",
                ok,
                "clear error" if ok else "unhandled",
                third.stderr.strip()[-300:],
            )
        )
        _wait_for(run / rd.CHECKPOINT_FILE)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    resumed = subprocess.run(
        _cli("train", "--resume", str(run), "--quiet"), env=_env(), capture_output=True, text=True
    )
    epochs = [m["epoch"] for m in rd.read_metrics(run)] if resumed.returncode == 0 else []
    ok = resumed.returncode == 0 and epochs == list(range(1, 5))
    results.append(
        Outcome(
            "kill -9 mid-run, then --resume",
            ok,
            "survived" if ok else "unhandled",
            f"epochs {epochs} {resumed.stderr[-300:]}",
        )
    )
    return results


def full_disk(ws: Workspace) -> Outcome:
    """A full disk during the checkpoint write (RLIMIT_FSIZE): one clear line, previous checkpoint intact."""
    run = ws.copy()
    before = (run / rd.CHECKPOINT_FILE).read_bytes()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = subprocess.run(
        _cli("train", "--resume", str(run), "--quiet", "--epochs", "3"),
        env=_env(),
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    ok = (
        full.returncode == 2
        and len(lines) == 1
        and "cannot write" in lines[0]
        and (run / rd.CHECKPOINT_FILE).read_bytes() == before
    )
    ok = ok and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    return Outcome(
        "full disk during the checkpoint write",
        ok,
        "clear error" if ok else "unhandled",
        full.stderr.strip()[-300:],
    )


def deleted_mid_run(ws: Workspace) -> Outcome:
    """The run directory deleted while the run writes to it: one clear line, exit 2."""
    run = ws.fresh()
    proc = subprocess.Popen(
        _cli("train", "--out", str(run), *LONG), env=_env(), stderr=subprocess.PIPE, text=True
    )
    _wait_for(run / rd.METRICS_FILE)
    while run.exists():  # the run may create a file while it is being removed: until it is gone
        shutil.rmtree(run, ignore_errors=True)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    ok = proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err
    return Outcome(
        "run directory deleted mid-run", ok, "clear error" if ok else "unhandled", err.strip()[-300:]
    )
