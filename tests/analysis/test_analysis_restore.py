"""Every measure leaves the model as it found it (weights and BatchNorm statistics bit for bit, every
module's mode), also when the loss fails midway: after a perturbation was applied, or at the first pass."""

from __future__ import annotations

import pytest
from analysis_testutils import BNNet, assert_unchanged, classification_batches, snapshot
from torch import nn

from friendly_sam.analysis import (
    hessian_trace,
    loss_landscape_1d,
    loss_landscape_2d,
    top_eigenvalue,
    worst_case_loss_increase,
)

MEASURES = {
    "loss_landscape_1d": lambda model, loss_fn, batches, bn: loss_landscape_1d(
        model, loss_fn, batches, points=3, bn_mode=bn
    ),
    "loss_landscape_2d": lambda model, loss_fn, batches, bn: loss_landscape_2d(
        model, loss_fn, batches, points=3, bn_mode=bn
    ),
    "worst_case_loss_increase": lambda model, loss_fn, batches, bn: worst_case_loss_increase(
        model, loss_fn, batches, rho=0.1, bn_mode=bn
    ),
    "top_eigenvalue": lambda model, loss_fn, batches, bn: top_eigenvalue(model, loss_fn, batches, iters=3, bn_mode=bn),
    "hessian_trace": lambda model, loss_fn, batches, bn: hessian_trace(model, loss_fn, batches, samples=3, bn_mode=bn),
}


def _failing_at(call: int):
    """Cross-entropy that raises at its ``call``-th evaluation."""
    calls = {"n": 0}
    cross_entropy = nn.CrossEntropyLoss()

    def loss_fn(out, y):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("boom")
        return cross_entropy(out, y)

    return loss_fn


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_model_restored_after_success_and_failure(measure, bn_mode):
    batches = classification_batches()  # two batches: call 3 is the first of the second pass
    model = BNNet()
    model.train()
    model.drop.eval()  # a mixed mode: every module's own flag must come back
    modes = [m.training for m in model.modules()]
    snap = snapshot(model)
    MEASURES[measure](model, nn.CrossEntropyLoss(), batches, bn_mode)
    assert_unchanged(model, snap)
    assert [m.training for m in model.modules()] == modes
    for call in (1, len(batches) + 1):
        with pytest.raises(RuntimeError, match="boom"):
            MEASURES[measure](model, _failing_at(call), batches, bn_mode)
        assert_unchanged(model, snap)
        assert [m.training for m in model.modules()] == modes
