"""Trainers that only call optimizer.step(closure): PyTorch Lightning's automatic optimisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from friendly_sam import FriendlySAM

pl = pytest.importorskip(
    "pytorch_lightning", reason="pytorch-lightning not installed (pip install '.[test]')"
)


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        self.closure_calls = 0

    def training_step(self, batch, batch_idx):
        self.closure_calls += 1
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return FriendlySAM(self.parameters(), torch.optim.SGD, rho=0.1, lmbda=0.6, lr=0.1, momentum=0.9)


def test_lightning_automatic_optimisation_runs_both_passes():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = Classifier()
    before = nn.functional.cross_entropy(model.net(x), y).item()
    trainer = pl.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    steps = 5 * len(loader)
    assert model.closure_calls == 2 * steps  # the closure ran once per pass
    optimizer = trainer.optimizers[0]
    assert all("ema" in s for s in optimizer.state.values())
    assert nn.functional.cross_entropy(model.net(x), y).item() < before
