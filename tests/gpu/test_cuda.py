"""The optimizers on a CUDA device: multi-tensor path, fp16 GradScaler, bf16 (run on a GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from friendly_sam import SAM, FriendlySAM, frozen_bn_stats

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)"
)
TRACE = json.loads((Path(__file__).parents[1] / "golden" / "fsam_trace.json").read_text())


@pytest.mark.parametrize("case", TRACE["cases"], ids=[c["name"] for c in TRACE["cases"]])
def test_golden_trajectories_on_cuda(case):
    problem = TRACE["problem"]
    dev = torch.device("cuda")
    x = torch.tensor(problem["X"], dtype=torch.float64, device=dev)
    y = torch.tensor(problem["y"], device=dev)
    names = problem["param_order"]
    p = {
        n: torch.tensor(problem["init"][n], dtype=torch.float64, device=dev, requires_grad=True)
        for n in names
    }
    cls = {"SAM": SAM, "FriendlySAM": FriendlySAM}[case["cls"]]
    base = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}[case["base"]]
    opt = cls(
        [p[n] for n in names], base, **case["opt"], **case["base_kw"]
    )  # foreach=None: multi-tensor on CUDA

    def loss(rows):
        return nn.functional.cross_entropy(
            torch.tanh(x[rows] @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"], y[rows]
        )

    for t, expected in enumerate(case["trajectory"]):
        rows = slice((4 * t) % 16, (4 * t) % 16 + 4)
        loss(rows).backward()
        opt.first_step()
        loss(rows).backward()
        opt.second_step()
        for n in names:
            err = (p[n].detach().cpu() - torch.tensor(expected[n], dtype=torch.float64)).abs().max().item()
            assert err < 1e-10, f"step {t} {n}: {err:.3g}"


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(256, 10),
    ).cuda()


def test_fp16_grad_scaler_training_on_cuda():
    model = _convnet()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    x, y = torch.randn(64, 3, 16, 16, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    losses, scales = [], []
    for step in range(40):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step == 5:  # an overflow in the clean pass: no perturbation, EMA untouched, step skipped
            ema = [s["ema"].clone() for s in opt.state.values()]
            before = [q.detach().clone() for q in model.parameters()]
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        opt.first_step(scaler=scaler)
        with torch.autocast("cuda", dtype=torch.float16), frozen_bn_stats(model):
            loss2 = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss2).backward()
        opt.second_step(scaler=scaler)
        scale_before = scaler.get_scale()
        scaler.update()
        if step == 5:
            assert all(torch.equal(a, s["ema"]) for a, s in zip(ema, opt.state.values()))
            assert all(torch.equal(a, q) for a, q in zip(before, model.parameters()))
            assert scaler.get_scale() == scale_before / 2
        losses.append(loss.item())
        scales.append(scaler.get_scale())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("adaptive", [False, True])
def test_foreach_matches_per_tensor_on_cuda(adaptive):
    results = []
    for foreach in (False, True):
        model = _convnet()
        opt = FriendlySAM(
            model.parameters(),
            torch.optim.SGD,
            rho=0.2,
            adaptive=adaptive,
            lr=0.05,
            momentum=0.9,
            foreach=foreach,
        )
        gen = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(5):
            x = torch.randn(32, 3, 16, 16, device="cuda", generator=gen)
            y = torch.randint(0, 10, (32,), device="cuda", generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.first_step()
            with frozen_bn_stats(model):
                nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step()
        results.append([q.detach() for q in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_on_cuda():
    model = _convnet()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 3, 16, 16, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    first = None
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.first_step()
        with torch.autocast("cuda", dtype=torch.bfloat16), frozen_bn_stats(model):
            nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
