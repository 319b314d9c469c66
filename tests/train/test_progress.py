"""Progress: a redrawn bar on a terminal; plain lines (no carriage return, no escape code) in a log."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from friendly_sam.train import TrainConfig, train
from friendly_sam.train.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO, total: int = 50, **kw) -> str:
    bar = ProgressBar(total, "fsam epoch 1/2", stream=stream, **kw)
    for i in range(1, total + 1):
        bar.update(i, loss=0.5, acc=90.0)
    bar.close()
    return stream.getvalue()


def test_a_log_gets_plain_lines_only():
    text = _run(io.StringIO())
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [text.splitlines()[0]] and text.endswith("\n")  # the final count, once
    assert text.startswith("fsam epoch 1/2 50/50 loss 0.5 acc 90")
    many = _run(io.StringIO(), line_interval=0.0)  # a line per update when due, each a whole line
    assert len(many.splitlines()) == 50 and "\r" not in many


def test_a_terminal_gets_the_redrawn_bar():
    text = _run(Terminal(), interval=0.0)
    assert text.count("\r") >= 50 and "\x1b[K" in text and "\n" not in text
    assert "[########################] 50/50" in text


def test_a_disabled_bar_writes_nothing():
    assert _run(io.StringIO(), enabled=False) == "" and _run(Terminal(), enabled=False) == ""


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="real Fashion-MNIST not installed")
def test_training_into_a_log_writes_whole_lines(tmp_path, capsys):
    cfg = TrainConfig(
        dataset="fashion-mnist", data_dir=str(FASHION_DIR), model="cnn_small", epochs=2, train_subset=128,
        test_subset=64, batch_size=64, threads=1, device="cpu", method="base",
    )  # fmt: skip
    train(cfg, tmp_path / "run", progress=True)
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "\x1b" not in out + err
    assert [line.rsplit(" 2/2 ", 1)[0] for line in err.splitlines()] == ["sgd epoch 1/2", "sgd epoch 2/2"]
