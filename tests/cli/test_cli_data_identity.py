"""`fsam train` on hostile or changed image folders, the way a user meets them: a FIFO among the images,
an empty test split, image size from the data, and `--resume` on data that changed since the checkpoint
(renamed class, added image, another folder) refused with a message naming the change."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import fsam

CLASSES = ("bag", "coat", "shirt")


def write_folder(root: Path, per_class: int = 6, size: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def run_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "imagefolder", "--data-dir", str(data_dir), "--out", str(out),
        "--model", "cnn_small", "--batch-size", "6", "--epochs", "1", "--threads", "1", "--quiet",
        "--num-workers", "0", *extra,
    ]  # fmt: skip


def one_line_error(result, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_fifo_among_the_images_stops_with_one_line_not_a_hang(tmp_path):
    data = write_folder(tmp_path / "d")
    os.mkfifo(data / "train" / "coat" / "x.png")
    result = fsam(*run_args(data, tmp_path / "r"), timeout=120)  # today: blocks for ever
    one_line_error(result, "x.png", "a FIFO", "--skip-bad-images")


def test_a_test_split_without_images_is_named(tmp_path):
    data = write_folder(tmp_path / "d")
    (data / "test" / "coat").mkdir(parents=True)
    one_line_error(fsam(*run_args(data, tmp_path / "r")), "test has class folders but no images")


def test_the_image_size_follows_the_data(tmp_path):
    data = write_folder(tmp_path / "d", size=20)
    result = fsam(*run_args(data, tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "classes.json").read_text())["image_size"] == 20  # not 224


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch run on a tiny folder: (folder, run directory)."""
    base = tmp_path_factory.mktemp("identity")
    data = write_folder(base / "d")
    result = fsam(*run_args(data, base / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    return data, base / "run"


def _copies(trained, tmp_path: Path) -> tuple[Path, Path]:
    data, run = trained
    shutil.copytree(data, tmp_path / "d", symlinks=True)
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "d", tmp_path / "run"


def _resume(run: Path, *extra: str):
    return fsam("train", "--resume", str(run), "--epochs", "2", *extra)


def test_resume_refuses_a_renamed_class(trained, tmp_path):
    data, run = _copies(trained, tmp_path)
    (data / "train" / "coat").rename(data / "train" / "zcoat")  # today: labels permuted silently
    before = (run / "checkpoint.pt").read_bytes()
    one_line_error(_resume(run, "--data-dir", str(data)), "class 'coat' renamed to 'zcoat'", "--accept-data-change")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_added_images_and_another_folder(trained, tmp_path):
    data, run = _copies(trained, tmp_path)
    shutil.copy(data / "train" / "bag" / "0.png", data / "train" / "bag" / "extra.png")
    one_line_error(_resume(run, "--data-dir", str(data)), "1 file(s) added: bag/extra.png")
    other = write_folder(tmp_path / "other", seed=1, per_class=5)
    one_line_error(_resume(run, "--data-dir", str(other)), "file(s) removed")


def test_resume_on_a_copy_of_the_same_folder_and_a_deliberate_change(trained, tmp_path):
    data, run = _copies(trained, tmp_path)
    result = _resume(run, "--data-dir", str(data), "--epochs", "1")  # the same images elsewhere: accepted
    assert result.returncode == 0, result.stderr[-2000:]
    shutil.copy(data / "train" / "bag" / "0.png", data / "train" / "bag" / "extra.png")
    result = _resume(run, "--data-dir", str(data), "--accept-data-change")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--accept-data-change: training goes on with changed data" in result.stdout + result.stderr


def test_analyze_refuses_data_that_changed_since_the_checkpoint(trained, tmp_path):
    data, run = _copies(trained, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(data)}))
    (data / "train" / "coat").rename(data / "train" / "zcoat")
    result = fsam("analyze", str(run), "--parts", "sharpness", "--subset", "6", "--sharpness-steps", "1")
    one_line_error(result, "class 'coat' renamed to 'zcoat'", "Analyse it on the data it was trained on")
