"""Reproduce the official SAM / ASAM / F-SAM trajectories (shared/golden/fsam_trace.json) in float64."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from friendly_sam import SAM, FriendlySAM

GOLDEN = Path(
    os.environ.get("FSAM_GOLDEN", Path(__file__).parents[2] / "tests" / "golden" / "fsam_trace.json")
)
TRACE = json.loads(GOLDEN.read_text())
PROBLEM = TRACE["problem"]
CLASSES = {"SAM": SAM, "FriendlySAM": FriendlySAM}
BASES = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}


def _loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    hidden = torch.tanh(x @ params["w1"].T + params["b1"])
    return torch.nn.functional.cross_entropy(hidden @ params["w2"].T + params["b2"], y)


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
@pytest.mark.parametrize("case", TRACE["cases"], ids=[c["name"] for c in TRACE["cases"]])
def test_reproduces_official_trajectory(case: dict, foreach: bool) -> None:
    x = torch.tensor(PROBLEM["X"], dtype=torch.float64)
    y = torch.tensor(PROBLEM["y"])
    names = PROBLEM["param_order"]
    params = {n: torch.tensor(PROBLEM["init"][n], dtype=torch.float64, requires_grad=True) for n in names}
    opt = CLASSES[case["cls"]](
        [params[n] for n in names], BASES[case["base"]], foreach=foreach, **case["opt"], **case["base_kw"]
    )
    assert len(case["trajectory"]) == PROBLEM["steps"]
    for t, expected in enumerate(case["trajectory"]):
        rows = slice((4 * t) % 16, (4 * t) % 16 + 4)
        _loss(params, x[rows], y[rows]).backward()
        opt.first_step(zero_grad=True)
        _loss(params, x[rows], y[rows]).backward()
        opt.second_step(zero_grad=True)
        for n in names:
            want = torch.tensor(expected[n], dtype=torch.float64)
            err = (params[n].detach() - want).abs().max().item()
            assert err < 1e-10, f"step {t}, {n}: max abs error {err:.3g}"
