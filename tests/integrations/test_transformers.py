"""SAMTrainer inside the real transformers.Trainer (tiny models from a config, no hub download), checked
against the hand-written first_step/second_step loop (integration_reference.reference_train) to 1e-6."""

from __future__ import annotations

import os

import pytest
import torch
from integration_reference import (
    HPARAMS,
    assert_same_state,
    make_data,
    make_net,
    micro_batches,
    reference_train,
)
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (pip install '.[test]')"
)
pytest.importorskip("accelerate", reason="accelerate not installed (pip install '.[test]')")
from friendly_sam import SAM, FriendlySAM  # noqa: E402
from friendly_sam.integrations.transformers import SAMTrainer  # noqa: E402

SAM_KW = {"rho": HPARAMS["rho"], "sigma": HPARAMS["sigma"], "lmbda": HPARAMS["lmbda"]}


class TinyClassifier(nn.Module):
    """The shared BatchNorm MLP behind the Trainer's dict-in, loss-out interface."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class DictData(torch.utils.data.Dataset):
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _args(tmp_path, **overrides):
    kw = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 8,
        "num_train_epochs": 1,
        "learning_rate": HPARAMS["lr"],
        "optim": "sgd",
        "optim_args": f"momentum={HPARAMS['momentum']}",
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "train_sampling_strategy": "sequential",
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
    }
    kw.update(overrides)
    return transformers.TrainingArguments(**kw)


def _reference(x, y, steps_of, clip=None, autocast_dtype=None):
    ref = make_net()
    opt = FriendlySAM(ref.parameters(), torch.optim.SGD, **HPARAMS)
    reference_train(ref, opt, steps_of(micro_batches(x, y, 8)), clip=clip, autocast_dtype=autocast_dtype)
    return ref


def _sgd_momentum_check(trainer):
    base = trainer.sam_optimizer.base_optimizer
    assert isinstance(base, torch.optim.SGD) and base.param_groups[0]["momentum"] == HPARAMS["momentum"]


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_samtrainer_equals_reference_with_accumulation_and_batchnorm(tmp_path, accumulate):
    x, y = make_data()
    model = TinyClassifier()
    trainer = SAMTrainer(
        model=model,
        args=_args(tmp_path, gradient_accumulation_steps=accumulate),
        train_dataset=DictData(x, y),
        **SAM_KW,
    )
    trainer.train()
    _sgd_momentum_check(trainer)
    ref = _reference(x, y, lambda b: [b[i : i + accumulate] for i in range(0, len(b), accumulate)])
    assert_same_state(model.net, ref)
    assert trainer.state.global_step == -(-6 // accumulate)  # a last, shorter window steps too
    assert model.net[1].num_batches_tracked.item() == 6  # BatchNorm statistics: clean passes only


def test_max_grad_norm_clips_the_perturbed_gradient(tmp_path):
    x, y = make_data()
    model = TinyClassifier()
    trainer = SAMTrainer(
        model=model, args=_args(tmp_path, max_grad_norm=0.05), train_dataset=DictData(x, y), **SAM_KW
    )
    trainer.train()
    assert_same_state(model.net, _reference(x, y, lambda b: [[m] for m in b], clip=0.05))


def test_bf16_autocast_equals_reference(tmp_path):
    # fp16 with a GradScaler needs a GPU accelerator (accelerate has no CPU fp16 scaler); bf16 runs on CPU.
    x, y = make_data()
    model = TinyClassifier()
    trainer = SAMTrainer(model=model, args=_args(tmp_path, bf16=True), train_dataset=DictData(x, y), **SAM_KW)
    trainer.train()
    assert_same_state(model.net, _reference(x, y, lambda b: [[m] for m in b], autocast_dtype=torch.bfloat16))


def test_checkpoint_resume_round_trip_keeps_the_ema(tmp_path):
    x, y = make_data()
    args = dict(num_train_epochs=2, save_strategy="steps", save_steps=6)
    first = SAMTrainer(
        model=TinyClassifier(),
        args=_args(tmp_path, max_steps=6, **args),
        train_dataset=DictData(x, y),
        **SAM_KW,
    )
    first.train()
    checkpoint = tmp_path / "checkpoint-6"
    assert (checkpoint / "optimizer.pt").exists()
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert all("ema" in s for s in saved["state"].values())

    model = TinyClassifier()
    model.net = make_net(seed=123)  # everything must come from the checkpoint
    second = SAMTrainer(
        model=model, args=_args(tmp_path, max_steps=12, **args), train_dataset=DictData(x, y), **SAM_KW
    )
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.state.global_step == 12
    assert_same_state(model.net, _reference(x, y, lambda b: [[m] for m in b * 2]))


def test_optimizers_argument_and_optimizer_cls_and_kwargs(tmp_path):
    x, y = make_data()
    ref = _reference(x, y, lambda b: [[m] for m in b])

    model = TinyClassifier()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, **HPARAMS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    trainer = SAMTrainer(
        model=model, args=_args(tmp_path), train_dataset=DictData(x, y), optimizers=(opt, sched)
    )
    trainer.train()
    assert_same_state(model.net, ref)

    model = TinyClassifier()
    kwargs = {"base_optimizer": torch.optim.SGD, **HPARAMS}
    trainer = SAMTrainer(
        model=model,
        args=_args(tmp_path),
        train_dataset=DictData(x, y),
        optimizer_cls_and_kwargs=(FriendlySAM, kwargs),
    )
    trainer.train()
    assert_same_state(model.net, ref)


def test_plain_optimizer_is_refused_with_a_message(tmp_path):
    x, y = make_data(16)
    model = TinyClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SAMTrainer(
        model=model, args=_args(tmp_path), train_dataset=DictData(x, y), optimizers=(opt, None)
    )
    with pytest.raises(TypeError, match="needs a friendly_sam optimizer"):
        trainer.train()


def test_tiny_bert_with_sam_and_adamw_weight_decay_groups(tmp_path):
    """A real transformers model (2-layer BERT, hidden 16, from a config) with args.optim='adamw_torch':
    SAM around AdamW with the Trainer's weight-decay groups, against the hand-written loop."""
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 32, (16, 6), generator=g)
    labels = (ids[:, 0] > 15).long()
    data = [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    ref = transformers.BertForSequenceClassification(config)
    ref.load_state_dict(model.state_dict())
    args = _args(tmp_path, optim="adamw_torch", optim_args=None, learning_rate=1e-3, weight_decay=0.1)
    trainer = SAMTrainer(model=model, args=args, train_dataset=data, sam_class=SAM, rho=0.05)
    trainer.train()

    decay = set(trainer.get_decay_parameter_names(ref))
    groups = [
        {"params": [p for n, p in ref.named_parameters() if n in decay], "weight_decay": 0.1},
        {"params": [p for n, p in ref.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    base_cls, base_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args, ref)
    opt = SAM(groups, base_cls, rho=0.05, **base_kwargs)
    ref.train()
    for start in (0, 8):
        batch = {"input_ids": ids[start : start + 8], "labels": labels[start : start + 8]}
        ref(**batch).loss.backward()
        opt.first_step()
        ref(**batch).loss.backward()
        opt.second_step()
    assert_same_state(model, ref)


def test_fp16_scaler_protocol_with_the_trainers_accelerator(tmp_path):
    # fp16 AMP needs a GPU accelerator; on CPU the Trainer's own Accelerator is given a CPU GradScaler, so
    # its backward() scales the loss and its AcceleratedOptimizer.step() updates the scale (in fp32).
    x, y = make_data()
    model = TinyClassifier()
    trainer = SAMTrainer(
        model=model, args=_args(tmp_path, max_grad_norm=0.5), train_dataset=DictData(x, y), **SAM_KW
    )
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    trainer.train()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    ref = make_net()
    opt = FriendlySAM(ref.parameters(), torch.optim.SGD, **HPARAMS)
    reference_train(ref, opt, [[m] for m in micro_batches(x, y, 8)], clip=0.5, scaler=scaler)
    assert_same_state(model.net, ref)
    assert trainer.accelerator.scaler.get_scale() == scaler.get_scale() == 2.0**13  # one update per step


def test_logged_loss_is_clean_and_grad_norm_is_the_perturbed_one(tmp_path):
    x, y = make_data(16)
    trainer = SAMTrainer(
        model=TinyClassifier(),
        args=_args(tmp_path, logging_strategy="steps", logging_steps=1, max_grad_norm=100.0),
        train_dataset=DictData(x, y),
        **SAM_KW,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    clean = nn.functional.cross_entropy(make_net()(x[:8]), y[:8]).item()
    assert logs[0]["loss"] == pytest.approx(clean, abs=1e-4)
    assert logs[0]["grad_norm"] > 0


def test_clipping_in_two_places_is_refused_before_training(tmp_path):
    x, y = make_data(16)
    model = TinyClassifier()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, max_grad_norm=1.0, **HPARAMS)
    trainer = SAMTrainer(
        model=model,
        args=_args(tmp_path, max_grad_norm=0.5),  # the same value in both places is one clip (accepted)
        train_dataset=DictData(x, y),
        optimizers=(opt, None),
    )
    with pytest.raises(ValueError, match="clipped twice"):
        trainer.train()
    assert not opt.is_perturbed
