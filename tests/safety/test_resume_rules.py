"""Resume compares the whole configuration: trajectory changes are refused, safe ones reported."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from friendly_sam.train import TrainConfig
from friendly_sam.train.checkpoint import (
    CheckpointError,
    check_resume_config,
    load_checkpoint,
    make_checkpoint,
    save_atomic,
)
from friendly_sam.train.config import EPOCHS_KEY, IDENTITY_KEYS, SAFE_KEYS


def test_every_config_field_is_classified_exactly_once():
    names = [f.name for f in fields(TrainConfig)]
    classified = [*IDENTITY_KEYS, *SAFE_KEYS, EPOCHS_KEY]
    assert len(classified) == len(set(classified)), "a key is in two classes"
    assert set(names) - set(classified) == set(), (
        "new TrainConfig field: add it to IDENTITY_KEYS or SAFE_KEYS"
    )
    assert set(classified) - set(names) == set(), "a classified key is no TrainConfig field"


def _cfg(**changes):
    return TrainConfig(**{"epochs": 4, **changes}).to_dict()


@pytest.mark.parametrize("key", IDENTITY_KEYS)
def test_each_identity_key_is_refused(key):
    other = {"flip": True, "train_subset": 100, "test_subset": 50, "max_grad_norm": 1.0}
    value = other.get(key, _changed(getattr(TrainConfig(), key)))
    with pytest.raises(CheckpointError, match=rf"different run setting \({key}: checkpoint"):
        check_resume_config(_cfg(), _cfg(**{key: value}), done_epochs=2, source="run/checkpoint.pt")


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if not isinstance(value, float) or value < 0.5 else value / 2
    if isinstance(value, (tuple, list)):
        return [0.3]
    return {"fashion-mnist": "mnist", "resnet8": "resnet20", "fsam": "sam", "sgd": "adamw"}.get(value, "x")


def test_all_differences_are_listed_and_safe_ones_reported():
    with pytest.raises(
        CheckpointError, match=r"checkpoint run/c\.pt .*lr: checkpoint 0\.05 vs now 0\.1.*seed"
    ):
        check_resume_config(_cfg(), _cfg(lr=0.1, seed=3, threads=2), 2, "run/c.pt")
    check = check_resume_config(_cfg(), _cfg(threads=2, device="cpu", tensorboard=True), 2)
    assert check.changes == {"threads": (None, 2), "device": ("auto", "cpu"), "tensorboard": (False, True)}
    assert "threads changed from None to 2" in check.messages
    assert check_resume_config(_cfg(), _cfg(), 2).messages == []


def test_epochs_may_grow_or_shrink_down_to_what_is_done():
    check = check_resume_config(_cfg(), _cfg(epochs=8), done_epochs=4)
    assert check.changes == {"epochs": (4, 8)}
    assert (
        "epochs changed from 4 to 8 after 4 done: the learning-rate schedule now spans 8" in check.messages[0]
    )
    assert (
        "constant"
        in check_resume_config(
            _cfg(schedule="constant"), {**_cfg(schedule="constant"), "epochs": 6}, 4
        ).messages[0]
    )
    assert check_resume_config(_cfg(epochs=6), _cfg(epochs=5), done_epochs=5).changes == {"epochs": (6, 5)}
    with pytest.raises(CheckpointError, match="6 epochs done, more than the 4 asked"):
        check_resume_config(_cfg(epochs=8), _cfg(epochs=4), done_epochs=6)


def test_a_key_missing_from_an_older_config_counts_as_its_default():
    old = _cfg()
    del old["ddp_mode"], old["threads"]
    assert check_resume_config(old, _cfg(), 1).messages == []
    with pytest.raises(CheckpointError, match="ddp_mode: checkpoint 'per-replica' vs now 'synchronized'"):
        check_resume_config(old, _cfg(ddp_mode="synchronized"), 1)
    with pytest.raises(CheckpointError, match="mystery: checkpoint 1 vs now None"):  # unknown keys: identity
        check_resume_config({**_cfg(), "mystery": 1}, _cfg(), 1)


def test_load_checkpoint_applies_the_rules_and_passes_the_messages(tmp_path):
    path = tmp_path / "checkpoint.pt"
    parts = dict(
        epoch=6,
        elapsed=1.0,
        model={"w": torch.zeros(1)},
        optimizer={"state": {}, "param_groups": []},
        scheduler={},
        rng={"torch": torch.get_rng_state()},
    )
    save_atomic(make_checkpoint(_cfg(epochs=8), **parts), path)
    with pytest.raises(
        CheckpointError, match=f"checkpoint {path} belongs to a different run setting.*6 epochs"
    ):
        load_checkpoint(path, _cfg(epochs=4))  # epoch 6 of a 4-epoch config
    notes: list[str] = []
    load_checkpoint(path, _cfg(epochs=10, threads=1), note=notes.append)
    assert notes == [
        f"resuming {path}: threads changed from None to 1",
        f"resuming {path}: epochs changed from 8 to 10 after 6 done: the learning-rate schedule now spans 10 "
        "epochs from here on (the next steps' lr differs from the one planned)",
    ]
