"""Runs written before the options were renamed (``optimizer``, ``perturbation``, ``diagnostics*``) still
resume, compare and analyse: their saved configurations are read in today's spellings."""

from __future__ import annotations

import json

from testkit import TINY, needs_fashion_mnist

from friendly_sam.cli import main
from friendly_sam.commands.compare import read_run
from friendly_sam.train import TrainConfig
from friendly_sam.train import run_dir as rd
from friendly_sam.train.checkpoint import check_resume_config, load_checkpoint
from friendly_sam.train.config import label_of, upgrade_saved

OLD = {"method": "optimizer", "ddp_mode": "perturbation", "decomposition": "diagnostics",
       "decomposition_every": "diagnostics_every", "decomposition_subset": "diagnostics_subset"}  # fmt: skip


def _old_spelling(config: dict) -> dict:
    out = {OLD.get(k, k): v for k, v in config.items()}
    out["optimizer"] = {"base": "sgd"}.get(out["optimizer"], out["optimizer"])
    return out


def test_old_configs_upgrade_to_the_same_run():
    for method in ("base", "fsam"):
        now = TrainConfig(method=method, base="adamw", epochs=3).to_dict()
        old = _old_spelling(now)
        assert upgrade_saved(old) == now and TrainConfig.from_saved(old, "old").to_dict() == now
        assert check_resume_config(old, now, done_epochs=1).changes == {}
    assert label_of(_old_spelling(TrainConfig(method="base").to_dict())) == "sgd"
    assert label_of(_old_spelling(TrainConfig(method="base", base="adamw").to_dict())) == "adamw"


@needs_fashion_mnist
def test_a_run_in_old_spellings_resumes_and_compares(tmp_path, capsys):
    run = tmp_path / "old"
    assert main(["train", "--out", str(run), *TINY, "--method", "base"]) == 0  # one epoch
    ckpt = load_checkpoint(run / rd.CHECKPOINT_FILE)
    ckpt["config"] = config = _old_spelling(ckpt["config"])  # as the previous version wrote it
    rd.write_checkpoint(run, ckpt)
    (run / rd.CONFIG_FILE).write_text(json.dumps(config))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "epochs changed from 1 to 2" in capsys.readouterr().out
    assert read_run(run)["label"] == "sgd"
