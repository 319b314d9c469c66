"""The cases of issue 19 that are not a cell of tests/matrix: each failed (trained wrong without a word)
before the step engine, and now trains right or stops with a clear error."""

from __future__ import annotations

import pytest
import torch
from integration_reference import (
    HPARAMS,
    assert_same_state,
    make_data,
    make_net,
    make_optimizer,
    micro_batches,
    reference_train,
)
from torch import nn

from friendly_sam import FriendlySAM
from friendly_sam.train import training_step


# ----------------------------------------------------------------------------- step(closure) callers
def _closure_loop(net: nn.Module, opt: FriendlySAM, steps: int = 6) -> None:
    """Composer / skorch / ignite: ``optimizer.step(closure)``, the closure zeroes and re-runs the pass."""
    for x, y in micro_batches(*make_data(), 8)[:steps]:

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss

        opt.step(closure)


@pytest.mark.parametrize("bind", [True, False], ids=["model=", "no model"])
def test_step_closure_keeps_batchnorm_statistics_to_the_clean_pass(bind):
    net = make_net()
    opt = make_optimizer(net.parameters(), **({"model": net} if bind else {}))
    _closure_loop(net, opt)
    assert net[1].num_batches_tracked.item() == 6  # was 12: both closure calls updated the statistics
    ref = make_net()
    reference_train(ref, make_optimizer(ref.parameters()), [[b] for b in micro_batches(*make_data(), 8)])
    assert_same_state(net, ref)


def test_step_closure_refuses_gradients_accumulated_outside_it():
    net = make_net()
    opt = make_optimizer(net.parameters(), model=net)
    _closure_loop(net, opt, steps=1)
    x, y = make_data(8)
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()  # an accumulated micro-batch, then step(closure)

    def closure():
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="accumulated micro-batches"):
        opt.step(closure)


def test_ascent_fraction_in_two_places_must_agree():
    net = make_net()
    opt = make_optimizer(net.parameters())
    opt.ascent_fraction = 0.25
    x, y = make_data(8)
    with pytest.raises(ValueError, match="conflicts with the optimizer's ascent_fraction=0.25"):
        training_step(net, opt, x, y, ascent_fraction=0.5)
    training_step(net, opt, x, y, ascent_fraction=0.25)  # the same value twice is fine


# ----------------------------------------------------------------------------- Lightning
def test_lightning_swa_batchnorm_epoch_takes_no_sam_step():
    pl = pytest.importorskip("pytorch_lightning")
    from friendly_sam.integrations.lightning import SAMLightningMixin

    class Net(SAMLightningMixin, pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()
            self.calls: list[int] = []

        def training_step(self, batch, batch_idx):
            self.calls.append(self.current_epoch)
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return make_optimizer(self.parameters())

    swa = pl.callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model = Net()
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[swa], accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, loader)
    # epochs 0 and 1 train (two passes per batch); the added BatchNorm epoch 2 runs one forward per batch
    assert model.calls.count(2) == 6
    for p, avg in zip(model.parameters(), swa._average_model.parameters()):
        assert torch.equal(p, avg)  # the final weights are the SWA average (no step moved them)


# ----------------------------------------------------------------------------- transformers
def _sam_trainer(tmp_path, optimizer=None, **kwargs):
    transformers = pytest.importorskip("transformers")
    from test_transformers import DictData, TinyClassifier, _args

    from friendly_sam.integrations.transformers import SAMTrainer

    model = TinyClassifier()
    x, y = make_data(16)
    opt = optimizer(model) if optimizer else None
    del transformers
    return SAMTrainer(
        model=model, args=_args(tmp_path), train_dataset=DictData(x, y), optimizers=(opt, None), **kwargs
    )


def test_samtrainer_refuses_a_sam_argument_its_optimizer_contradicts(tmp_path):
    given = lambda m: FriendlySAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)  # noqa: E731
    trainer = _sam_trainer(tmp_path, given, rho=0.5)
    with pytest.raises(ValueError, match=r"SAMTrainer\(rho=0.5\) conflicts with the optimizer you passed"):
        trainer.train()
    trainer = _sam_trainer(tmp_path, given, rho=0.1)  # agreeing is fine
    trainer.train()
    with pytest.raises(ValueError, match="conflicts with the optimizer"):
        from friendly_sam import SAM

        _sam_trainer(tmp_path, given, sam_class=SAM).train()


# ----------------------------------------------------------------------------- accelerate
def _accelerate_setup(accumulate: int):
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    from friendly_sam.integrations.accelerate import AcceleratedSAM

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    net = make_net()
    model, opt = accelerator.prepare(net, FriendlySAM(net.parameters(), torch.optim.SGD, **HPARAMS))

    def loss_fn(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    return accelerator, model, AcceleratedSAM(accelerator, model, opt, loss_fn)


def test_accelerate_clip_idiom_after_the_step_is_refused():
    accelerator, model, sam = _accelerate_setup(1)
    with accelerator.accumulate(model):
        sam.step(micro_batches(*make_data(), 8)[0])
        with pytest.raises(ValueError, match="Pass max_grad_norm= to AcceleratedSAM"):
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)


def test_accelerated_sam_outside_accumulate_with_accumulation_is_refused():
    accelerator, model, sam = _accelerate_setup(2)
    steps: list[int] = []
    sam.optimizer.base_optimizer.register_step_post_hook(lambda *_: steps.append(1))
    with pytest.raises(RuntimeError, match="outside `with accelerator.accumulate"):
        for batch in micro_batches(*make_data(), 8):
            sam.step(batch)  # no accumulate(): every call would have been an update (6 instead of 3)
    assert steps == []


# ----------------------------------------------------------------------------- docs
def test_every_adapter_names_its_ddp_mode():
    pytest.importorskip("transformers")
    from friendly_sam.integrations.accelerate import AcceleratedSAM
    from friendly_sam.integrations.lightning import SAMLightningMixin
    from friendly_sam.integrations.transformers import SAMTrainer
    from friendly_sam.train.step import ddp_training_step

    for adapter in (SAMLightningMixin, SAMTrainer, AcceleratedSAM):
        assert "*synchronized*" in (adapter.__doc__ or ""), adapter.__name__
    assert "per-replica" in (ddp_training_step.__doc__ or "")


def test_a_perturbed_pass_that_raises_leaves_the_weights_unperturbed():
    net = make_net()
    opt = make_optimizer(net.parameters())
    x, y = make_data(8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calls = []

    def loss_fn(logits, target):
        calls.append(1)
        if len(calls) == 2:  # the perturbed pass
            raise RuntimeError("out of memory (simulated)")
        return nn.functional.cross_entropy(logits, target)

    with pytest.raises(RuntimeError, match="simulated"):
        training_step(net, opt, x, y, loss_fn=loss_fn)
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]), f"{name} left perturbed"
    assert not opt.is_perturbed
    training_step(net, opt, x, y)  # the optimizer takes the next update normally


def test_samtrainer_builds_the_efficient_variants_it_is_given(tmp_path):
    trainer = _sam_trainer(tmp_path, rho=0.1, perturb_every=2, ascent_fraction=0.5)
    trainer.train()
    sam = trainer.sam_optimizer
    assert sam.perturb_every == 2 and {g["rho"] for g in sam.param_groups} == {0.1}
    assert trainer._sam_engine.ascent_fraction == 0.5
    assert sam.steps_taken == 2  # 16 samples, batch 8: one perturbed and one unperturbed update
