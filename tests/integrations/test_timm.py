"""register_timm() with the real timm registry (create_optimizer_v2 and a timm scheduler), checked against
the hand-written loop. timm imports torchvision, whose PyPI wheel cannot load its native library next to
a CPU-only torch: tests/conftest.py defines the two operator schemas its import needs (test plumbing), so
these tests run (and fail, never skip, when timm breaks)."""

from __future__ import annotations

import torch
from integration_reference import assert_same_state, make_data, make_net, micro_batches, reference_train
from torch import nn

from friendly_sam import FriendlySAM, frozen_bn_stats


def _import_timm_optim():
    import timm.optim
    import timm.scheduler

    return timm.optim, timm.scheduler


def test_create_optimizer_v2_fsam_equals_reference_with_weight_decay_groups():
    optim, scheduler = _import_timm_optim()
    from friendly_sam.integrations.timm import register_timm

    assert register_timm() == ["sam", "asam", "fsam", "afsam"]
    register_timm()  # idempotent
    hp = {"rho": 0.1, "sigma": 1.0, "lmbda": 0.6}
    model = make_net()
    opt = optim.create_optimizer_v2(model, "fsam", lr=0.1, weight_decay=1e-3, momentum=0.9, **hp)
    assert isinstance(opt, FriendlySAM)
    sched = scheduler.CosineLRScheduler(opt, t_initial=6)

    ref = make_net()
    groups = optim.param_groups_weight_decay(ref, weight_decay=1e-3)  # biases and BN: no weight decay
    ref_opt = FriendlySAM(
        groups, torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0, **hp
    )
    ref_sched = scheduler.CosineLRScheduler(ref_opt, t_initial=6)

    x, y = make_data()
    for step, batch in enumerate(micro_batches(x, y, 8)):
        inputs, targets = batch
        nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.first_step()
        with frozen_bn_stats(model):
            nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.second_step()
        sched.step(step + 1)
        reference_train(ref, ref_opt, [[batch]])
        ref_sched.step(step + 1)
    assert_same_state(model, ref)
    assert [g["weight_decay"] for g in opt.param_groups] == [g["weight_decay"] for g in ref_opt.param_groups]


def test_adamw_base_and_adaptive_variant():
    optim, _ = _import_timm_optim()
    from friendly_sam.integrations.timm import register_timm

    register_timm()
    opt = optim.create_optimizer_v2(make_net(), "afsam", base_optimizer="adamw", lr=1e-3, rho=0.5)
    assert isinstance(opt.base_optimizer, torch.optim.AdamW)
    assert all(g["adaptive"] for g in opt.param_groups)
    assert (
        "momentum" not in opt.base_optimizer.defaults or opt.base_optimizer.defaults.get("momentum") is None
    )
