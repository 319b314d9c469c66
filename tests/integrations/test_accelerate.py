"""AcceleratedSAM with a real accelerate.Accelerator, checked against the hand-written
first_step/second_step loop (integration_reference.reference_train) to 1e-6."""

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

accelerate = pytest.importorskip("accelerate", reason="accelerate not installed (pip install '.[test]')")
from friendly_sam.integrations.accelerate import AcceleratedSAM  # noqa: E402


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _train(accelerator, x, y, *, clip=None, loss=loss_fn, net=None, base_steps=None):
    """The docs/integrations.md example."""
    from friendly_sam import FriendlySAM

    model = make_net() if net is None else net
    optimizer = FriendlySAM(model.parameters(), torch.optim.SGD, **HPARAMS)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    sam = AcceleratedSAM(accelerator, model, optimizer, loss, max_grad_norm=clip)
    if base_steps is not None:
        sam.optimizer.base_optimizer.register_step_post_hook(lambda *_: base_steps.append(1))
    for batch in loader:
        with accelerator.accumulate(model):
            sam.step(batch)
    return model, optimizer


def _grouped(batches, k):
    return [batches[i : i + k] for i in range(0, len(batches), k)]


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_accumulate_gives_the_large_batch_step(accumulate):
    x, y = make_data()
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    base_steps: list[int] = []
    model, optimizer = _train(accelerator, x, y, base_steps=base_steps)
    assert len(base_steps) == -(-6 // accumulate)  # one base step per update, not per micro-batch
    ref = make_net()
    ref_opt = make_optimizer(ref.parameters())
    # accelerate divides by gradient_accumulation_steps, also in the last, shorter window
    reference_train(ref, ref_opt, _grouped(micro_batches(x, y, 8), accumulate), divide_by=accumulate)
    assert_same_state(model, ref)
    assert model[1].num_batches_tracked.item() == 6


def test_clip_applies_to_the_perturbed_gradient():
    x, y = make_data()
    model, _ = _train(accelerate.Accelerator(cpu=True), x, y, clip=0.05)
    ref = make_net()
    reference_train(ref, make_optimizer(ref.parameters()), _grouped(micro_batches(x, y, 8), 1), clip=0.05)
    assert_same_state(model, ref)


def test_fp16_scaler_path_equals_reference():
    # accelerate builds no GradScaler on CPU (fp16 AMP is GPU-only there); the same code path is run with a
    # CPU GradScaler set on the real Accelerator, whose backward() then scales the loss.
    x, y = make_data()
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=2)

    def fp16_loss(model, batch):
        with torch.autocast("cpu", dtype=torch.float16):
            return loss_fn(model, batch)

    model, _ = _train(accelerator, x, y, loss=fp16_loss)
    ref = make_net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=2)
    reference_train(
        ref,
        make_optimizer(ref.parameters()),
        _grouped(micro_batches(x, y, 8), 2),
        scaler=scaler,
        autocast_dtype=torch.float16,
    )
    assert_same_state(model, ref)
    assert accelerator.scaler.get_scale() == scaler.get_scale() == 2.0**15  # one update per step (3 steps)


def test_save_state_load_state_round_trip(tmp_path):
    x, y = make_data()
    first = accelerate.Accelerator(cpu=True)
    _train(first, x, y)
    first.save_state(str(tmp_path))

    second = accelerate.Accelerator(cpu=True)
    from friendly_sam import FriendlySAM

    model = make_net(seed=123)
    optimizer = FriendlySAM(model.parameters(), torch.optim.SGD, **HPARAMS)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model, optimizer, loader = second.prepare(model, optimizer, loader)
    second.load_state(str(tmp_path))
    assert all("ema" in s for s in optimizer.optimizer.state.values())
    sam = AcceleratedSAM(second, model, optimizer, loss_fn)
    for batch in loader:
        with second.accumulate(model):
            sam.step(batch)
    ref = make_net()
    reference_train(ref, make_optimizer(ref.parameters()), _grouped(micro_batches(x, y, 8) * 2, 1))
    assert_same_state(model, ref)


def test_plain_optimizer_is_refused():
    model = make_net()
    accelerator = accelerate.Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="needs a friendly_sam optimizer"):
        AcceleratedSAM(accelerator, model, optimizer, loss_fn)
