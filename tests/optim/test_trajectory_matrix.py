"""Every option's trajectory on the hand loop is bit for bit the recorded one (see trajectory_matrix.py).

The fixture was recorded from the optimizer before its refactor into functions: any change of an
operation's order, dtype or rounding in any option shows here as a failed ``torch.equal``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trajectory_matrix as tm

FIXTURE = Path(__file__).parent / "data" / "trajectories.pt"
RECORDED = tm.unpack(torch.load(FIXTURE, weights_only=True))
CASES = tm.cases()


def test_the_fixture_covers_every_case() -> None:
    assert sorted(RECORDED) == sorted(tm.case_name(c) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=tm.case_name)
def test_trajectory_is_bit_identical_to_the_recorded_one(case: dict) -> None:
    want, got = RECORDED[tm.case_name(case)], tm.run_case(case)
    assert got["errors"] == want["errors"]
    assert got["steps"] == want["steps"]
    assert got["state_keys"] == want["state_keys"]
    assert torch.equal(got["params"], want["params"]), (got["params"] - want["params"]).abs().max()
    assert torch.equal(got["state"], want["state"])
    assert got.get("diagnostics") == want.get("diagnostics")
