"""Checkpoints are written atomically and refused with a reason when unusable."""

from __future__ import annotations

import io

import pytest
import torch

from friendly_sam.train.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_atomic
from friendly_sam.train.progress import ProgressBar

# The entries every trainer checkpoint holds (validated on load).
PARTS = dict(
    elapsed=1.0,
    model={"w": torch.zeros(2)},
    optimizer={"state": {}, "param_groups": []},
    scheduler={},
    rng={"torch": torch.get_rng_state()},
)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic(make_checkpoint({"seed": 0}, epoch=1, **PARTS), path)
    real_save = torch.save

    def crashing_save(obj, f):
        real_save({"partial": torch.zeros(1000)}, f)
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(make_checkpoint({"seed": 0}, epoch=2, **PARTS), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_foreign_and_incompatible_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a friendly-sam checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    ours = tmp_path / "ours.pt"
    save_atomic(make_checkpoint({"dataset": "mnist", "model": "resnet8"}, epoch=1, **PARTS), ours)
    with pytest.raises(CheckpointError, match="model: checkpoint 'resnet8' vs now 'resnet20'"):
        load_checkpoint(ours, {"dataset": "mnist", "model": "resnet20"})


def test_progress_bar_shows_rate_and_eta():
    stream = io.StringIO()
    bar = ProgressBar(10, "run", stream=stream, interval=0.0)
    for i in range(1, 11):
        bar.update(i, loss=0.5, acc=90.0, **{"img/s": 1000.0})
    bar.close()
    text = stream.getvalue()
    assert "10/10" in text and "loss 0.5" in text and "img/s 1000" in text and "<" in text
    silent = io.StringIO()
    ProgressBar(10, stream=silent, enabled=False).update(5)
    assert silent.getvalue() == ""
