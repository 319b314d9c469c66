"""The matrix's Hugging Face rows: transformers' Trainer (SAMTrainer) and accelerate (AcceleratedSAM)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import accelerate
import torch
import transformers
from accelerate.state import AcceleratorState, GradientState
from matrix_entries import Entry
from matrix_setup import (
    SEED,
    Features,
    autocast,
    make_data,
    make_net,
    make_optimizer,
    make_scaler,
    micro_batches,
)
from torch import nn

from friendly_sam.integrations.accelerate import AcceleratedSAM
from friendly_sam.integrations.transformers import SAMTrainer


class DictNet(nn.Module):
    """The matrix net behind the Trainer's dict-in, loss-out interface."""

    def __init__(self, features: Features, seed: int = 0) -> None:
        super().__init__()
        self.net = make_net(features, seed)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class DictData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = make_data()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class SeedPerUpdate(transformers.TrainerCallback):
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        torch.manual_seed(SEED + state.global_step)


def _hf_args(out: str, features: Features, **overrides: Any) -> transformers.TrainingArguments:
    kw = {
        "output_dir": out,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": features.accumulate,
        "max_steps": len(micro_batches()) // features.accumulate,
        "lr_scheduler_type": "constant",
        "max_grad_norm": features.clip or 0.0,  # the Trainer's own clipping (default 1.0)
        "bf16": features.precision == "bf16",
        "train_sampling_strategy": "sequential",
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        **overrides,
    }
    return transformers.TrainingArguments(**kw)


def _sam_trainer(features: Features, args: transformers.TrainingArguments, seed: int = 0) -> SAMTrainer:
    model = DictNet(features, seed)
    trainer = SAMTrainer(
        model=model,
        args=args,
        train_dataset=DictData(),
        optimizers=(make_optimizer(model.parameters(), features), None),
        rng=features.random or "fresh",
        callbacks=[SeedPerUpdate()] if features.random else None,
    )
    if features.precision == "16":  # accelerate has no CPU fp16 scaler: the Trainer's own, given one
        trainer.accelerator.scaler = make_scaler()
    return trainer


def run_sam_trainer(features: Features) -> nn.Module:
    with tempfile.TemporaryDirectory() as out:
        if not features.resume:
            trainer = _sam_trainer(features, _hf_args(out, features))
            trainer.train()
            return trainer.model.net
        half = len(micro_batches()) // features.accumulate // 2
        _sam_trainer(features, _hf_args(out, features, save_strategy="steps", save_steps=half, max_steps=half)).train()
        (checkpoint,) = Path(out).glob("checkpoint-*")
        trainer = _sam_trainer(features, _hf_args(out, features), seed=7)
        trainer.train(resume_from_checkpoint=str(checkpoint))
        return trainer.model.net


def _accelerator(features: Features) -> Any:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = accelerate.Accelerator(
        cpu=True,
        gradient_accumulation_steps=features.accumulate,
        mixed_precision="bf16" if features.precision == "bf16" else "no",
    )
    if features.precision == "16":
        accelerator.scaler = make_scaler()
    return accelerator


def run_accelerated_sam(features: Features) -> nn.Module:
    dtype = torch.float16 if features.precision == "16" else None

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        with autocast(dtype):
            return nn.functional.cross_entropy(model(x), y)

    def build(seed: int) -> tuple[Any, nn.Module, AcceleratedSAM]:
        accelerator = _accelerator(features)
        net = make_net(features, seed)
        model, optimizer = accelerator.prepare(net, make_optimizer(net.parameters(), features))
        sam = AcceleratedSAM(
            accelerator, model, optimizer, loss_fn, max_grad_norm=features.clip, rng=features.random or "fresh"
        )
        return accelerator, net, sam

    accelerator, net, sam = build(0)
    batches = micro_batches()
    half = len(batches) // 2 if features.resume else len(batches)
    with tempfile.TemporaryDirectory() as out:
        for i, batch in enumerate(batches):
            if i == half:
                accelerator.save_state(out)
                accelerator, net, sam = build(7)
                accelerator.load_state(out)
            if features.random and i % features.accumulate == 0:
                torch.manual_seed(SEED + i // features.accumulate)
            with accelerator.accumulate(sam.model):
                sam.step(batch)
    return net


ENTRIES = [
    Entry(
        "transformers SAMTrainer",
        run_sam_trainer,
        fp16_autocast=False,
        ddp_note="not run here: SAMTrainer under torchrun is the synchronized mode (docs above)",
    ),
    Entry(
        "accelerate AcceleratedSAM",
        run_accelerated_sam,
        ddp="AcceleratedSAM",
    ),
]
