"""What the trainer writes today is plain, checksummed data; bad checkpoints stop a resume untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit import fsam, needs_fashion_mnist, tiny_config

from friendly_sam.train import train
from friendly_sam.train.checkpoint import CHECKSUM_KEY, load_checkpoint, save_atomic
from friendly_sam.train.run_dir import LOCK_FILE

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    cfg = tiny_config()
    train(cfg, run, progress=False, log=lambda message: None)
    return run, cfg


def test_trainer_checkpoints_load_weights_only_and_verify(finished_run):
    run, cfg = finished_run
    raw = torch.load(run / "checkpoint.pt", weights_only=True)  # model, optimizer, LambdaLR, RNG, ...
    assert raw["scheduler"]["lr_lambdas"] == [None]  # the schedule closure is rebuilt, never pickled
    assert CHECKSUM_KEY in raw
    assert load_checkpoint(run / "checkpoint.pt", cfg.to_dict())["epoch"] == 1


def _resume_is_refused(run: Path, message: str) -> None:
    (run / "summary.json").unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE}
    result = fsam("train", "--resume", str(run), "--quiet")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (
        result.stderr
    )
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE}
    assert before == after  # metrics.jsonl intact (the lock file holds the last holder's pid)


@pytest.mark.slow
def test_resume_refuses_a_flipped_bit_and_a_negative_epoch(finished_run):
    run, _ = finished_run
    ckpt = run / "checkpoint.pt"
    good = ckpt.read_bytes()
    model = torch.load(ckpt, weights_only=True)["model"]
    weight = next(t for t in model.values() if t.dtype == torch.float32 and t.numel() > 64)
    pattern = weight.reshape(-1)[:16].numpy().tobytes()
    at = good.find(pattern)
    assert at > 0
    flipped = bytearray(good)
    flipped[at + 5] ^= 0x10
    ckpt.write_bytes(bytes(flipped))
    _resume_is_refused(run, f"checkpoint {ckpt} is damaged")

    ckpt.write_bytes(good)
    bogus = torch.load(ckpt, weights_only=True)
    bogus["epoch"] = -3
    save_atomic(bogus, ckpt)  # consistent checksum: only the validation can catch it
    _resume_is_refused(run, f"checkpoint {ckpt} is invalid: epoch -3 is negative")
    ckpt.write_bytes(good)
