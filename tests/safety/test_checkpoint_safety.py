"""Checkpoints are data: weights-only loading, a checksum, structural validation, clear errors."""

from __future__ import annotations

import pickle
import struct

import pytest
import torch
from torch import nn

from friendly_sam.train import TrainConfig
from friendly_sam.train.checkpoint import (
    CHECKSUM_KEY,
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_state_checked,
    make_checkpoint,
    remove_stale_temp_files,
    save_atomic,
    validate_checkpoint,
)

MARKER_VALUE = 1.2345678  # a weight value whose bytes are easy to find in the file


def _parts() -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    """What the trainer saves: model, optimizer (with momentum state), LambdaLR scheduler, RNG state."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight.fill_(MARKER_VALUE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))  # a closure, as trainer
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    parts = dict(
        epoch=2,
        elapsed=3.5,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        rng={"torch": torch.get_rng_state()},
        replica_states=[],
        world_size=1,
    )
    return model, opt, parts


def _save(path, **override):
    _, _, parts = _parts()
    parts.update(override)
    save_atomic(make_checkpoint(TrainConfig().to_dict(), **parts), path)
    return path


def test_round_trip_is_weights_only_and_checksummed(tmp_path):
    path = _save(tmp_path / "checkpoint.pt")
    raw = torch.load(path, weights_only=True)  # plain data: any tool can read it safely
    assert raw["format"] == FORMAT and len(raw[CHECKSUM_KEY]["sha256"]) == 64
    ckpt = load_checkpoint(path, TrainConfig().to_dict())
    model, opt, _ = _parts()
    load_state_checked(model, ckpt["model"], path, "model")
    load_state_checked(opt, ckpt["optimizer"], path, "optimizer")
    assert torch.equal(model[0].weight, torch.full((3, 4), MARKER_VALUE))


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this creates a file: code execution
        return (open, (self.target, "w"))


def test_a_planted_pickle_payload_never_runs(tmp_path):
    function, args = _Payload(str(tmp_path / "proof")).__reduce__()
    function(*args).close()  # the payload is real: what any unpickling of it would call creates the file
    assert (tmp_path / "proof").exists()

    planted = tmp_path / "checkpoint.pt"
    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "version": 2, "x": _Payload(str(marker))}, planted)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt holds Python objects.*nothing in it was run"):
        load_checkpoint(planted)
    assert not marker.exists()


def test_one_flipped_bit_in_tensor_data_is_refused(tmp_path):
    path = _save(tmp_path / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<f", MARKER_VALUE) * 4)
    assert at > 0
    data[at + 1] ^= 0x01
    path.write_bytes(bytes(data))
    flipped = torch.load(path, weights_only=True)  # torch alone loads it and would resume on it
    assert not torch.equal(flipped["model"]["0.weight"], torch.full((3, 4), MARKER_VALUE))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is damaged"):
        load_checkpoint(path)


def test_truncated_garbage_and_foreign_files(tmp_path):
    path = _save(tmp_path / "checkpoint.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is corrupt or unreadable"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt is corrupt or unreadable"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not a friendly-sam checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="a_dir is not a regular file .it is a directory"):
        (tmp_path / "a_dir").mkdir()
        load_checkpoint(tmp_path / "a_dir")
    with pytest.raises(CheckpointError, match="no checkpoint at .*absent.pt .it does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epoch": -3}, "epoch -3 is negative"),
        ({"epoch": "3"}, "'epoch' is a str"),
        ({"epoch": True}, "'epoch' is a bool"),
        ({"elapsed": float("nan")}, "elapsed nan"),
        ({"model": {"w": [1.0]}}, "'model' must map parameter names to tensors"),
        ({"optimizer": {"state": {}}}, "'optimizer' lacks"),
        ({"rng": {}}, "'rng' lacks"),
        ({"replica_states": [1]}, "'replica_states' must be a list of dicts"),
        ({"world_size": 0}, "world_size 0"),
    ],
)
def test_fields_are_validated_before_use(tmp_path, override, message):
    path = _save(tmp_path / "checkpoint.pt", **override)  # a valid checksum: only validation can refuse
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is invalid: {message}"):
        load_checkpoint(path)


def test_a_missing_entry_is_named(tmp_path):
    _, _, parts = _parts()
    del parts["scheduler"]
    with pytest.raises(CheckpointError, match="missing entries scheduler"):
        validate_checkpoint(make_checkpoint({}, **parts), "x.pt")


def test_state_that_does_not_fit_the_model_is_a_checkpoint_error(tmp_path):
    path = _save(tmp_path / "checkpoint.pt")
    ckpt = load_checkpoint(path)
    wider = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    with pytest.raises(
        CheckpointError, match=rf"checkpoint {path}: its model state does not fit.*size mismatch"
    ):
        load_state_checked(wider, ckpt["model"], path, "model")
    with pytest.raises(CheckpointError, match="its model state does not fit.*Missing key"):
        deeper = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 3))
        load_state_checked(deeper, ckpt["model"], path, "model")
    adam = torch.optim.Adam(nn.Linear(2, 2).parameters())
    with pytest.raises(CheckpointError, match="its optimizer state does not fit"):
        load_state_checked(adam, ckpt["optimizer"], path, "optimizer")


def test_version_1_checkpoints_load_weights_only_with_a_note(tmp_path):
    _, _, parts = _parts()
    path = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "version": 1, "config": TrainConfig().to_dict(), **parts}, path)
    notes: list[str] = []
    assert load_checkpoint(path, note=notes.append)["epoch"] == 2
    assert len(notes) == 1 and "no checksum" in notes[0] and str(path) in notes[0]
    # stripping the checksum from a version-2 file is not a way around it
    ckpt = torch.load(_save(tmp_path / "new.pt"), weights_only=True)
    del ckpt[CHECKSUM_KEY]
    torch.save(ckpt, tmp_path / "stripped.pt")
    with pytest.raises(CheckpointError, match="no valid checksum"):
        load_checkpoint(tmp_path / "stripped.pt")


def test_stale_temp_files_are_removed(tmp_path):
    _save(tmp_path / "checkpoint.pt")
    stale = [tmp_path / ".checkpoint.pt.k3j_x9.tmp", tmp_path / ".metrics.jsonl.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / "notes.tmp").write_text("user file: not ours")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "notes.tmp"]


def test_only_plain_data_can_be_checksummed(tmp_path):
    with pytest.raises(CheckpointError, match="not object"):
        save_atomic(make_checkpoint({}, epoch=1, thing=object()), tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left


def test_checksum_survives_pickle_round_trip_of_tuples(tmp_path):
    # AdamW param_groups hold a tuple (betas); weights-only loading keeps it, the digest treats it alike
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    _, _, parts = _parts()
    path = _save(tmp_path / "c.pt", optimizer=opt.state_dict())
    assert isinstance(pickle.loads(pickle.dumps(opt.state_dict()))["param_groups"][0]["betas"], tuple)
    load_checkpoint(path)


def test_per_replica_states_round_trip(tmp_path):
    # under torchrun: every rank's F-SAM EMA, keyed by parameter index (int keys)
    replicas = [{0: {"ema": torch.ones(3)}, 1: {"ema": torch.zeros(2)}}, {0: {"ema": torch.full((3,), 2.0)}}]
    path = _save(tmp_path / "c.pt", replica_states=replicas, world_size=2)
    loaded = load_checkpoint(path)["replica_states"]
    assert torch.equal(loaded[1][0]["ema"], replicas[1][0]["ema"]) and list(loaded[0]) == [0, 1]
    damaged = torch.load(path, weights_only=True)
    damaged["replica_states"][0][1]["ema"] += 1  # changed behind the checksum's back
    torch.save(damaged, path)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path)
