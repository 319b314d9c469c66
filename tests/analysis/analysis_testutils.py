"""Small models with exactly known Hessians, shared by the analysis tests."""

from __future__ import annotations

import torch
from torch import nn


def quadratic_matrix(eigs: list[float], seed: int = 0) -> torch.Tensor:
    """Symmetric A = Q diag(eigs) Q^T with a random orthogonal Q (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


class Quadratic(nn.Module):
    """Model whose output is its own weight vector; with ``quadratic_loss(A)`` L(w) = w^T A w / 2."""

    def __init__(self, w0: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def quadratic_loss(a: torch.Tensor):
    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * out @ a @ out

    return loss_fn


QUAD_BATCHES = [(torch.zeros(1), torch.zeros(1))]


class TinyMLP(nn.Module):
    """3 -> 8 -> 2 tanh MLP: 3*8 + 8 + 8*2 + 2 = 50 parameters."""

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc1 = nn.Linear(3, 8, dtype=dtype)
            self.fc2 = nn.Linear(8, 2, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def regression_batches(sizes=(5, 11, 16), seed: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 3, generator=gen, dtype=dtype)
    y = torch.randn(n, 2, generator=gen, dtype=dtype)
    return list(zip(x.split(list(sizes)), y.split(list(sizes)), strict=True)), x, y


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def mlp_loss_of_flat(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Same function as TinyMLP + mse, of the flattened parameters (nn.Linear layout)."""
    shapes = [(8, 3), (8,), (2, 8), (2,)]
    parts, i = [], 0
    for s in shapes:
        n = int(torch.tensor(s).prod())
        parts.append(theta[i : i + n].reshape(s))
        i += n
    w1, b1, w2, b2 = parts
    out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    return ((out - y) ** 2).mean()


def full_hessian(model: TinyMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    theta = flat_params(model)
    return torch.autograd.functional.hessian(lambda t: mlp_loss_of_flat(t, x, y), theta)


def snapshot(model: nn.Module) -> list[tuple[int, torch.Tensor]]:
    """(data_ptr, bitwise copy) of every parameter and buffer."""
    return [(t.data_ptr(), t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]


def assert_unchanged(model: nn.Module, snap: list[tuple[int, torch.Tensor]]) -> None:
    tensors = [*model.parameters(), *model.buffers()]
    assert len(tensors) == len(snap)
    for t, (ptr, copy) in zip(tensors, snap, strict=True):
        assert t.data_ptr() == ptr, "storage was swapped (p.data = ...)"
        # bitwise, NaN-safe: compare the raw bytes
        assert torch.equal(t.detach().reshape(-1).view(torch.uint8), copy.reshape(-1).view(torch.uint8))


class BNNet(nn.Module):
    """Conv + BatchNorm + dropout + linear head (for mode handling tests)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(4 * 6 * 6, 3)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.copy_(torch.rand(4, generator=gen) - 0.5)
            self.bn.running_var.copy_(torch.rand(4, generator=gen) * 1.5 + 0.5)
            self.bn.num_batches_tracked.fill_(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(self.drop(h.flatten(1)))


def classification_batches(sizes=(6, 10), seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        out.append((torch.randn(n, 1, 6, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)))
    return out
