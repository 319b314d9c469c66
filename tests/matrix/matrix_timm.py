"""The matrix's timm row: the optimizer from timm's factory (``create_optimizer_v2(model, "fsam")`` after
``register_timm()``), trained by ``training_step`` (timm's own loop calls ``optimizer.step()`` once per step
and cannot drive two passes: docs/integrations.md, "timm")."""

from __future__ import annotations

from typing import Any

from matrix_entries import Entry, one_batch_per_call, run_training_step
from matrix_setup import HPARAMS, Features
from timm.optim import create_optimizer_v2
from torch import nn

from friendly_sam.integrations.timm import register_timm


def _timm_optimizer(net: nn.Module, features: Features) -> Any:
    register_timm()
    opt = create_optimizer_v2(
        net,
        "fsam",
        base_optimizer="momentum",  # plain momentum SGD, as the reference ("sgd" is timm's Nesterov)
        weight_decay=0.0,
        perturb_every=features.perturb_every,
        **HPARAMS,
    )
    if features.ascent_fraction != 1.0:
        opt.ascent_fraction = features.ascent_fraction
    return opt


ENTRIES = [
    Entry(
        "timm create_optimizer_v2 + training_step",
        lambda f: run_training_step(f, build=lambda net: _timm_optimizer(net, f)),
        has=one_batch_per_call,
        fp16_autocast=False,
        ddp_note="not run here: the optimizer of the training_step row, built by timm",
    )
]
