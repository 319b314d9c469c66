"""The matrix's PyTorch Lightning rows: automatic optimisation with SAMLightningMixin, manual optimisation
with sam_manual_step, and automatic optimisation without the mixin (the optimizer knows the model)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matrix_entries import Entry, loader_of
from matrix_setup import SEED, Batch, Features, make_net, make_optimizer, make_scaler, micro_batches
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn

from friendly_sam.integrations.lightning import SAMLightningMixin, sam_manual_step

QUIET = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}


class Plain(pl.LightningModule):
    """A LightningModule as users write it; the optimizer knows the model (``model=``)."""

    def __init__(self, features: Features) -> None:
        super().__init__()
        self.features = features
        self.net = make_net(features)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        features = self.features
        opt = make_optimizer(self.parameters(), features, clip_in_optimizer=not self.clip_by_trainer, model=self)
        opt.rng = features.random or "fresh"
        return opt

    clip_by_trainer = True


class WithMixin(SAMLightningMixin, Plain):
    def __init__(self, features: Features) -> None:
        super().__init__(features)
        self.sam_rng = features.random or "fresh"


class Manual(SAMLightningMixin, Plain):
    clip_by_trainer = False  # manual optimisation: the optimizer's own max_grad_norm

    def __init__(self, features: Features) -> None:
        super().__init__(features)
        self.automatic_optimization = False

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        if self.features.random:
            torch.manual_seed(SEED + self.trainer.global_step)

        def closure() -> torch.Tensor:
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.manual_backward(loss)
            return loss

        sam_manual_step(self, closure)


class SeedPerUpdate(pl.Callback):
    def __init__(self, features: Features) -> None:
        self.features = features

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if self.features.random and batch_idx % self.features.accumulate == 0:
            torch.manual_seed(SEED + batch_idx // self.features.accumulate)


def _trainer(features: Features, max_steps: int, callbacks: list[Any], manual: bool) -> pl.Trainer:
    kw: dict[str, Any] = {}
    if features.precision == "16":  # "16-mixed" on CPU would silently become bf16: the fp16 plugin, explicitly
        kw["plugins"] = [MixedPrecision("16-mixed", "cpu", scaler=make_scaler())]
    elif features.precision == "bf16":
        kw["precision"] = "bf16-mixed"
    if features.clip and not manual:
        kw["gradient_clip_val"] = features.clip
    if not manual:
        kw["accumulate_grad_batches"] = features.accumulate
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(callbacks[1:]), **QUIET, **kw)


def _fit(cls: type[Plain], features: Features) -> nn.Module:
    steps = len(micro_batches()) // features.accumulate
    manual = cls is Manual
    seeder = SeedPerUpdate(features)
    if not features.resume:
        module = cls(features)
        _trainer(features, steps, [seeder], manual).fit(module, loader_of())
        return module.net
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp, every_n_train_steps=steps // 2, save_top_k=-1)
        _trainer(features, steps // 2, [seeder, ckpt], manual).fit(cls(features), loader_of())
        (path,) = Path(tmp).glob("*.ckpt")
        resumed = cls(features)
        resumed.net = make_net(features, seed=7)  # everything must come from the checkpoint
        _trainer(features, steps, [seeder], manual).fit(resumed, loader_of(), ckpt_path=str(path))
    return resumed.net


def lightning_resume_steps(features: Features) -> list[list[Batch]] | None:
    """Lightning restarts a plain DataLoader's epoch from its first batch on a mid-epoch resume (a
    Lightning property): the resumed half sees the first half's batches again."""
    if not features.resume:
        return None
    batches = micro_batches()
    half = [[b] for b in batches[: len(batches) // 2]]
    return half + half


LIGHTNING_DDP = "not run here: Lightning strategy='ddp' is the synchronized mode (docs above)"

ENTRIES = [
    Entry(
        "Lightning automatic + SAMLightningMixin",
        lambda f: _fit(WithMixin, f),
        refuses=lambda f: (ValueError, "cannot run in Lightning automatic") if f.ascent_fraction < 1 else None,
        reference_steps=lightning_resume_steps,
        ddp_note=LIGHTNING_DDP,
    ),
    Entry(
        "Lightning manual + sam_manual_step",
        lambda f: _fit(Manual, f),
        refuses=lambda f: (
            (RuntimeError, "use automatic optimisation with SAMLightningMixin")
            if f.precision == "16"
            else (ValueError, "cannot run sub-batch ascent")
            if f.ascent_fraction < 1
            else None
        ),
        has=lambda f: "no such option: accumulation is the user's code in manual optimisation" if f.accumulate > 1 else None,
        reference_steps=lightning_resume_steps,
        ddp_note=LIGHTNING_DDP,
    ),
    Entry(
        "Lightning automatic, no mixin (model=)",
        lambda f: _fit(Plain, f),
        refuses=lambda f: (
            (RuntimeError, "needs a closure")
            if f.precision == "16"
            else (RuntimeError, "found gradients computed (before it|since the last step)")
            if f.accumulate > 1
            else (ValueError, "gradient_clip_val without SAMLightningMixin")
            if f.clip
            else (ValueError, "cannot run sub-batch ascent")
            if f.ascent_fraction < 1
            else None
        ),
        reference_steps=lightning_resume_steps,
        ddp_note=LIGHTNING_DDP,
    ),
]
