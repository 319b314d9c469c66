import json
import sys

import pytest
import torch
from analysis_testutils import (
    BNNet,
    TinyMLP,
    assert_unchanged,
    classification_batches,
    mse,
    regression_batches,
    snapshot,
)
from torch import nn

from friendly_sam.analysis import (
    Landscape1D,
    filter_normalized_direction,
    loss_landscape_1d,
    loss_landscape_2d,
    plot_landscape_1d,
    plot_landscape_2d,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def eval_loss(model, loss_fn, batches):
    """Same arithmetic as the library: sum_b float(loss_b) * n_b / N, eval mode, no grad."""
    n = sum(len(y) for _, y in batches)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = sum(float(loss_fn(model(x), y)) * (len(y) / n) for x, y in batches)
    model.train(was)
    return out


def test_filter_normalisation():
    model = BNNet()
    d = filter_normalized_direction(model, seed=3)
    params = list(model.parameters())
    assert [t.shape for t in d] == [p.shape for p in params]
    for p, t in zip(params, d, strict=True):
        if p.dim() <= 1:
            assert torch.count_nonzero(t) == 0  # biases and BN affine parameters ignored
        else:
            dims = tuple(range(1, p.dim()))
            norm = torch.linalg.vector_norm
            torch.testing.assert_close(norm(t, dim=dims), norm(p.detach(), dim=dims), rtol=1e-5, atol=1e-7)
    d_all = filter_normalized_direction(model, seed=3, ignore_bias_bn=False)
    for p, t in zip(params, d_all, strict=True):
        if p.dim() <= 1:
            torch.testing.assert_close(t.norm(), p.detach().norm(), rtol=1e-5, atol=1e-7)
    # reproducible, and different seeds differ
    assert all(torch.equal(a, b) for a, b in zip(d, filter_normalized_direction(model, 3), strict=True))
    assert not torch.equal(d[0], filter_normalized_direction(model, 4)[0])


def test_landscape_1d_shapes_origin_restore():
    model = BNNet()
    model.train()
    batches = classification_batches()
    loss_fn = nn.CrossEntropyLoss()
    snap = snapshot(model)
    calls = []
    res = loss_landscape_1d(model, loss_fn, batches, span=0.5, points=11, progress=lambda *a: calls.append(a))
    assert_unchanged(model, snap)
    assert model.training and all(m.training for m in model.modules())
    assert len(res.alphas) == len(res.losses) == len(res.accuracies) == 11
    assert res.alphas[0] == -0.5 and res.alphas[-1] == 0.5 and res.alphas[5] == 0.0
    assert res.losses[5] == eval_loss(model, loss_fn, batches)  # bit for bit
    assert all(0.0 <= a <= 1.0 for a in res.accuracies)
    assert res.forward_passes == 11
    assert [(d, t) for d, t, _ in calls] == [(i, 11) for i in range(1, 12)]
    assert json.loads(json.dumps(res.to_dict())) == res.to_dict()


def test_landscape_1d_regression_has_no_accuracy():
    model = TinyMLP(seed=0)
    batches, _, _ = regression_batches()
    res = loss_landscape_1d(model, mse, batches, points=5)
    assert res.accuracies is None
    assert res.losses[2] == eval_loss(model, mse, batches)


def test_landscape_2d_shapes_origin_restore_and_axis_matches_1d():
    model = BNNet()
    batches = classification_batches()
    loss_fn = nn.CrossEntropyLoss()
    snap = snapshot(model)
    res2 = loss_landscape_2d(model, loss_fn, batches, span=0.4, points=5, seed=1)
    assert_unchanged(model, snap)
    assert len(res2.alphas) == len(res2.betas) == 5
    assert len(res2.losses) == 5 and all(len(row) == 5 for row in res2.losses)
    assert len(res2.accuracies) == 5 and all(len(row) == 5 for row in res2.accuracies)
    assert res2.forward_passes == 25
    assert res2.losses[2][2] == eval_loss(model, loss_fn, batches)
    # direction 1 of the 2-D plot is the 1-D direction of the same seed: the beta = 0 column
    # reproduces the 1-D landscape exactly
    res1 = loss_landscape_1d(model, loss_fn, batches, span=0.4, points=5, seed=1)
    assert [row[2] for row in res2.losses] == res1.losses
    # the surface is not flat (the directions do move the weights)
    assert max(max(r) for r in res2.losses) > res2.losses[2][2]


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    model = BNNet()
    batches = classification_batches()
    loss_fn = nn.CrossEntropyLoss()
    r1 = loss_landscape_1d(model, loss_fn, batches, points=5)
    r2 = loss_landscape_2d(model, loss_fn, batches, points=3)
    p1 = plot_landscape_1d(r1, tmp_path / "l1.png", title="1d")
    p2 = plot_landscape_2d(r2, tmp_path / "l2.png")
    # from the JSON form, as the CLI would reload it, and with NaNs / log scale
    d1 = json.loads(json.dumps(r1.to_dict()))
    d1["losses"][0] = float("nan")
    p3 = plot_landscape_1d(d1, tmp_path / "l3.png")
    d2 = json.loads(json.dumps(r2.to_dict()))
    d2["losses"][0][0] = float("inf")
    p4 = plot_landscape_2d(d2, str(tmp_path / "l4.png"), log_scale=True)
    for p in (p1, p2, p3, p4):
        assert p.read_bytes()[:8] == PNG_MAGIC
    # no regression output: 1-D plot without the accuracy axis
    mlp = TinyMLP()
    rb, _, _ = regression_batches()
    assert plot_landscape_1d(loss_landscape_1d(mlp, mse, rb, points=3), tmp_path / "l5.png").exists()
    assert isinstance(r1, Landscape1D)


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    res = Landscape1D(alphas=[-1.0, 0.0, 1.0], losses=[1.0, 0.5, 1.0])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="matplotlib"):
        plot_landscape_1d(res, tmp_path / "x.png")


def test_bad_points():
    model = TinyMLP()
    batches, _, _ = regression_batches()
    with pytest.raises(ValueError):
        loss_landscape_1d(model, mse, batches, points=0)
    one = loss_landscape_1d(model, mse, batches, points=1)
    assert one.alphas == [0.0]


def test_channels_last_layout_preserved():
    model = BNNet().to(memory_format=torch.channels_last)
    conv = model.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    snap = snapshot(model)
    loss_landscape_1d(model, nn.CrossEntropyLoss(), classification_batches(), points=3)
    assert_unchanged(model, snap)
    assert model.conv.weight is conv and conv.is_contiguous(memory_format=torch.channels_last)
