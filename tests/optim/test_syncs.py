"""Host synchronisations per step (issue 22 item 1): the default mode makes at most one per step where a
read stalls a device, and behaves exactly as the path that reads each check as it arises.

On an accelerator (``checks_on_device=None`` there) first_step decides on the device, as the capturable mode
does, and second_step reads every check of the step at once. On CPU (where a read is a plain memory read and
the host path is the cheaper one) ``checks_on_device=True`` switches that path on, so that these tests run it
over every option of the trajectory matrix: the same errors on the same steps, the same steps taken, the same
trajectories and state (float tolerance: the perturbation is applied with a tensor scale), one sync per step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trajectory_matrix as tm
from testkit import SyncCounter
from torch import nn

from friendly_sam import SAM, FriendlySAM

RECORDED = tm.unpack(torch.load(Path(__file__).parent / "data" / "trajectories.pt", weights_only=True))
# The options whose decisions live on the host: they keep reading each check as it arises.
HOST_SCHEDULES = ("k2-base", "k3-looksam")
HOST_EXTRAS = ("component-full", "diagnostics", "oracle")


def _reads_on_host(case: dict) -> bool:
    return case["schedule"] in HOST_SCHEDULES or case["extra"] in HOST_EXTRAS


@pytest.mark.parametrize("case", tm.cases(), ids=tm.case_name)
def test_checks_read_once_per_step_give_the_recorded_trajectory(case: dict) -> None:
    want, got = RECORDED[tm.case_name(case)], tm.run_case(case, checks_on_device=True)
    assert got["errors"] == want["errors"]
    assert got["steps"] == want["steps"]
    assert got["state_keys"] == want["state_keys"]
    torch.testing.assert_close(got["params"], want["params"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["state"], want["state"], rtol=0, atol=1e-6)
    if not _reads_on_host(case):
        # AdamW reads its step counts, CPU tensors (not device syncs on an accelerator): one per parameter here
        own = 4 if case["variant"] == "adamw" else 0
        refused = {t for t, _ in got["errors"]}  # a refused step reads the norm again for its message
        allowed = [1 + own + (t in refused) for t in range(len(got["syncs"]))]
        assert all(n <= a for n, a in zip(got["syncs"], allowed)), got["syncs"]


@pytest.mark.parametrize(
    "name", ["sam-every-plain-loop", "fsam-every-scaler-foreach", "asam-every-clip-loop"]
)
def test_the_host_path_is_the_default_on_cpu(name: str) -> None:
    """On CPU nothing stalls: the default reads each check as it arises (no extra pass over the gradients),
    bit for bit the recorded trajectory, and at most 3 reads per step (ASAM's second norm)."""
    case = next(c for c in tm.cases() if tm.case_name(c) == name)
    got = tm.run_case(case)
    assert torch.equal(got["params"], RECORDED[name]["params"])
    assert 2 <= max(got["syncs"]) <= 3


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))


def _clean_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
    (nn.functional.cross_entropy(model(x), y) * scale).backward()


@pytest.mark.parametrize("cls", [FriendlySAM, SAM])
def test_a_refused_clean_gradient_changes_nothing_and_the_second_pass_sees_clean_weights(cls) -> None:
    """The error comes at second_step now; until then the perturbation was zero (the second pass, BatchNorm
    statistics included, ran at the unperturbed weights) and F-SAM's estimate was not updated."""
    model = _mlp()
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, rho=0.1)
    opt.checks_on_device = True
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(2):  # state exists (momentum, F-SAM's EMA)
        _clean_pass(model, x, y)
        opt.first_step(zero_grad=True)
        _clean_pass(model, x, y)
        opt.second_step(zero_grad=True)
    weights = [p.detach().clone() for p in model.parameters()]
    state = [t.clone() for s in opt.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)]
    _clean_pass(model, x, y)
    model[0].weight.grad[0, 0] = float("nan")
    with SyncCounter() as counter:
        opt.first_step(zero_grad=True)
    assert counter.count == 0
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))  # perturbed by zero
    _clean_pass(model, x, y)
    assert torch.isfinite(model[1].running_mean).all() and torch.isfinite(model[1].running_var).all()
    with pytest.raises(FloatingPointError, match="clean gradient holds inf or nan"):
        opt.second_step(zero_grad=True)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    after = [t for s in opt.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert all(torch.equal(a, b) for a, b in zip(after, state)) and len(after) == len(state)
    assert not opt.is_perturbed and opt.steps_taken == 2


def test_a_scale_a_dtype_cannot_hold_is_refused_with_its_own_message() -> None:
    for on_device in (False, True):
        model = nn.Linear(3, 1)
        opt = SAM(model.parameters(), lr=0.1, rho=1e30)
        opt.checks_on_device = on_device
        model(torch.ones(1, 3)).sum().mul(1e-12).backward()
        with pytest.raises(FloatingPointError, match="overflows torch.float32"):
            opt.first_step()
            model(torch.ones(1, 3)).sum().backward()
            opt.second_step()
        assert not opt.is_perturbed
