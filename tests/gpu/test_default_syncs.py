"""The default mode on a GPU: one host synchronisation per step (its checks decided on the device and read
once, in second_step), the same trajectory as the CPU's host-read path (float tolerance). Needs a GPU; the
same path runs on CPU in tests/optim/test_syncs.py (``checks_on_device=True``)."""

from __future__ import annotations

import pytest
import torch
from testkit import SyncCounter
from torch import nn

from friendly_sam import SAM, FriendlySAM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(device: str, cls, kw: dict) -> tuple[torch.Tensor, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).to(device)
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **kw)
    gen = torch.Generator().manual_seed(1)
    syncs = []
    for _ in range(5):
        x, y = (
            torch.randn(8, 16, generator=gen).to(device),
            torch.randint(0, 4, (8,), generator=gen).to(device),
        )
        with SyncCounter() as counter:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
        syncs.append(counter.count)
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]), syncs


@pytest.mark.parametrize(
    "cls,kw",
    [(FriendlySAM, {"rho": 0.2, "lmbda": 0.6}), (SAM, {"rho": 0.05}), (SAM, {"rho": 0.5, "adaptive": True})],
    ids=["fsam", "sam", "asam"],
)
def test_one_sync_per_default_step_on_a_gpu(cls, kw) -> None:
    want, host_syncs = _run("cpu", cls, kw)
    got, syncs = _run("cuda", cls, kw)
    assert syncs == [1] * 5 and min(host_syncs) >= 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
