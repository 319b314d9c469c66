"""SAMLightningMixin and sam_manual_step inside the real PyTorch Lightning Trainer, checked against the
hand-written first_step/second_step loop (integration_reference.reference_train) to 1e-6."""

from __future__ import annotations

import warnings

import pytest
import torch
from integration_reference import (
    assert_same_state,
    make_data,
    make_net,
    make_optimizer,
    micro_batches,
    reference_train,
)
from torch import nn

pl = pytest.importorskip(
    "pytorch_lightning", reason="pytorch-lightning not installed (pip install '.[test]')"
)
from friendly_sam.integrations.lightning import SAMLightningMixin, sam_manual_step  # noqa: E402

QUIET = {
    "accelerator": "cpu",
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class LitNet(SAMLightningMixin, pl.LightningModule):
    def __init__(self, **opt_overrides) -> None:
        super().__init__()
        self.net = make_net()
        self.calls: list[int] = []
        self.opt_overrides = opt_overrides

    def training_step(self, batch, batch_idx):
        self.calls.append(batch_idx)
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return make_optimizer(self.parameters(), **self.opt_overrides)


def _loader(x, y, batch_size=8):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("accumulate", [1, 2, 3, 4])
def test_automatic_optimisation_equals_reference_with_batchnorm(accumulate):
    x, y = make_data()
    model = LitNet()
    trainer = pl.Trainer(
        max_epochs=1, enable_checkpointing=False, accumulate_grad_batches=accumulate, **QUIET
    )
    trainer.fit(model, _loader(x, y))

    batches = micro_batches(x, y, 8)
    steps = [batches[i : i + accumulate] for i in range(0, len(batches), accumulate)]
    ref = make_net()
    # Lightning divides every micro-batch loss by accumulate_grad_batches, also in a last, shorter window
    reference_train(ref, make_optimizer(ref.parameters()), steps, divide_by=accumulate)
    assert_same_state(model.net, ref)  # includes BN running stats and num_batches_tracked
    assert trainer.global_step == len(steps)
    # each micro-batch: one clean and one perturbed pass
    assert len(model.calls) == 2 * len(batches)
    assert model.net[1].num_batches_tracked.item() == len(batches)  # clean passes only


def test_logged_loss_is_the_clean_loss():
    x, y = make_data(16)
    model = LitNet()
    trainer = pl.Trainer(max_steps=1, enable_checkpointing=False, **QUIET)
    net0 = make_net()
    clean = nn.functional.cross_entropy(net0(x[:8]), y[:8]).item()
    trainer.fit(model, _loader(x, y))
    assert trainer.callback_metrics["train_loss"].item() == pytest.approx(clean, abs=1e-6)


def test_gradient_clip_val_clips_the_perturbed_gradient():
    x, y = make_data()
    model = LitNet()
    trainer = pl.Trainer(max_epochs=1, enable_checkpointing=False, gradient_clip_val=0.05, **QUIET)
    trainer.fit(model, _loader(x, y))
    ref = make_net()
    reference_train(ref, make_optimizer(ref.parameters()), [[b] for b in micro_batches(x, y, 8)], clip=0.05)
    assert_same_state(model.net, ref)
    unclipped = make_net()
    reference_train(unclipped, make_optimizer(unclipped.parameters()), [[b] for b in micro_batches(x, y, 8)])
    assert (unclipped[0].weight - ref[0].weight).abs().max() > 1e-3  # the clip value binds


def test_gradient_clip_by_value_is_refused():
    x, y = make_data(16)
    trainer = pl.Trainer(
        max_steps=1,
        enable_checkpointing=False,
        gradient_clip_val=0.1,
        gradient_clip_algorithm="value",
        **QUIET,
    )
    with pytest.raises(ValueError, match="gradient_clip_algorithm='value'"):
        trainer.fit(LitNet(), _loader(x, y))


def test_fp16_mixed_precision_plugin_equals_reference_with_scaler():
    # Trainer(precision="16-mixed") on CPU silently becomes bf16 in Lightning 2.6, so the fp16 code path
    # (MixedPrecision with a GradScaler) is built explicitly, with a CPU GradScaler.
    from pytorch_lightning.plugins.precision import MixedPrecision

    x, y = make_data()
    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=2)
    )
    model = LitNet()
    trainer = pl.Trainer(max_epochs=1, enable_checkpointing=False, plugins=[plugin], **QUIET)
    trainer.fit(model, _loader(x, y))

    ref = make_net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=2)
    steps = [[b] for b in micro_batches(x, y, 8)]
    reference_train(ref, make_optimizer(ref.parameters()), steps, scaler=scaler, autocast_dtype=torch.float16)
    assert_same_state(model.net, ref)
    assert plugin.scaler.get_scale() == scaler.get_scale() == 2.0**17  # one update per step (6 steps)
    assert trainer.global_step == len(steps)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    from pytorch_lightning.plugins.precision import MixedPrecision

    x, y = make_data(16)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**40))
    model = LitNet()
    before = {
        k: v.clone() for k, v in model.net.state_dict().items() if "running" not in k and "tracked" not in k
    }
    trainer = pl.Trainer(max_steps=1, enable_checkpointing=False, plugins=[plugin], **QUIET)
    trainer.fit(model, _loader(x, y))
    after = model.net.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed on an overflow step"
    assert plugin.scaler.get_scale() < 2.0**40
    assert all("ema" not in s for s in trainer.optimizers[0].state.values())  # EMA not poisoned


def test_checkpoint_resume_round_trip(tmp_path):
    # Resume at an epoch boundary: Lightning restarts a plain DataLoader's epoch from its first batch, so
    # a mid-epoch resume would see other data than an uninterrupted run (a Lightning property, not ours).
    x, y = make_data()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    first = pl.Trainer(max_steps=6, callbacks=[ckpt], **QUIET)
    first.fit(LitNet(), _loader(x, y))
    path = tmp_path / "epoch=0-step=6.ckpt"
    assert path.exists()

    resumed = LitNet()
    resumed.net = make_net(seed=123)  # different weights: everything must come from the checkpoint
    second = pl.Trainer(max_steps=12, enable_checkpointing=False, **QUIET)
    second.fit(resumed, _loader(x, y), ckpt_path=str(path))
    assert second.global_step == 12
    assert all("ema" in s for s in second.optimizers[0].state.values())

    ref = make_net()
    reference_train(ref, make_optimizer(ref.parameters()), [[b] for b in micro_batches(x, y, 8) * 2])
    assert_same_state(resumed.net, ref)


class ManualNet(SAMLightningMixin, pl.LightningModule):
    """The manual-optimisation recipe of docs/integrations.md."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = make_net()

    def training_step(self, batch, batch_idx):
        x, y = batch

        def closure():
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.manual_backward(loss)
            return loss

        loss = sam_manual_step(self, closure)
        self.log("train_loss", loss)
        self.lr_schedulers().step()

    def configure_optimizers(self):
        opt = make_optimizer(self.parameters())
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        }


def test_manual_recipe_counts_steps_and_equals_reference(tmp_path):
    x, y = make_data()
    model = ManualNet()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer = pl.Trainer(max_steps=4, callbacks=[ckpt], **QUIET)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)")
        trainer.fit(model, _loader(x, y))
    assert trainer.global_step == 4  # max_steps stopped it after 4 of the 6 batches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]

    ref = make_net()
    opt = make_optimizer(ref.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for batch in micro_batches(x, y, 8)[:4]:
        reference_train(ref, opt, [[batch]])
        sched.step()
    assert_same_state(model.net, ref)


def test_manual_recipe_refuses_fp16_scaler_with_a_message():
    from pytorch_lightning.plugins.precision import MixedPrecision

    x, y = make_data(16)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = pl.Trainer(max_steps=1, enable_checkpointing=False, plugins=[plugin], **QUIET)
    with pytest.raises(RuntimeError, match="use automatic optimisation with SAMLightningMixin"):
        trainer.fit(ManualNet(), _loader(x, y))


def test_bf16_mixed_equals_reference():
    x, y = make_data()
    model = LitNet()
    trainer = pl.Trainer(max_epochs=1, enable_checkpointing=False, precision="bf16-mixed", **QUIET)
    trainer.fit(model, _loader(x, y))
    ref = make_net()
    steps = [[b] for b in micro_batches(x, y, 8)]
    reference_train(ref, make_optimizer(ref.parameters()), steps, autocast_dtype=torch.bfloat16)
    assert_same_state(model.net, ref)


def test_plain_optimizer_passes_through_the_mixin():
    class Plain(LitNet):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = make_data(16)
    model = Plain()
    trainer = pl.Trainer(max_steps=2, enable_checkpointing=False, gradient_clip_val=0.5, **QUIET)
    trainer.fit(model, _loader(x, y))
    assert len(model.calls) == 2  # one pass per step
