"""The decomposition study during training: oracle full gradients and EMA-vs-full-gradient cosines.

:class:`DecompositionMonitor` is what the trainer (``DecompositionCallback``) calls before each step for
the ``oracle`` full gradient (``--full-gradient oracle --oracle-every N``), which it hands to the optimizer
(``set_full_gradient``: this changes the optimizer's state and so the training), and for the
``--decomposition`` cosines, and once per epoch for the numbers that go into ``metrics.jsonl``. The
measures themselves are the pure functions of :mod:`friendly_sam.analysis.decomposition`.

**Which data.** The oracle is computed over *the current epoch's own training batches*: the same
permutation, the same batch partition and the same augmentation draws as the minibatches of that epoch
(the loader is a pure function of ``(seed, epoch, batch)``). The minibatch gradient of a step is then
exactly one term of the average, and the decomposition ``g = full + noise`` holds exactly; there is no
mismatch between augmented minibatches and clean full-batch images. With a one-batch data set the oracle
equals ``g`` bit for bit, the noise component is exactly zero and F-SAM applies no perturbation. The
``--decomposition`` cosine uses a fixed subset of the training set (the first ``n`` images of a seeded
random subset, with their possibly noisy training labels) *without* augmentation: a fixed reference across
the whole run; at the same steps it also records the cosine between that full gradient and the step's own
minibatch gradient (one extra forward+backward of one batch), the baseline the EMA has to beat. With
random augmentation on, the EMA averages gradients of augmented images, so that cosine
also contains the (small) gap between the augmented and the clean objective.

**Cost.** One oracle is one forward+backward pass over the whole training set, i.e. half of a SAM
epoch; every ``N`` steps of a loader with ``S`` steps per epoch that is ``S / (2 N)`` SAM epochs per
epoch. One decomposition cosine is a forward+backward pass over the subset.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis.decomposition import cosine, full_batch_gradient

__all__ = ["DecompositionMonitor"]


class DecompositionMonitor:
    """Oracle full gradients and EMA-vs-full-gradient cosines for a :class:`~friendly_sam.FriendlySAM` run.

    Args:
        model: the model being trained (in training mode).
        optimizer: the ``FriendlySAM`` optimizer (its ``state[p]["ema"]`` is the EMA).
        loader: the training :class:`~friendly_sam.data.TensorBatchLoader`.
        oracle_every: compute the oracle full gradient over the current epoch's batches every this many
            steps and hand it to ``optimizer.set_full_gradient`` (``None``: EMA mode, no oracle).
        diagnostics: record the optimizer's ``cos(g, m)`` / noise ratio means, and every
            ``diagnostics_every`` steps the cosine between the EMA and the full gradient over
            ``subset`` and between the step's minibatch gradient and that full gradient (also, in
            oracle mode, the cosine between the EMA and each oracle, for free).
        subset: ``(images, labels)`` of the fixed diagnostics subset, already transformed (float, clean).
        batch_size: chunk size for the subset gradient (the training batch size: same BN statistics).
        autocast: as in :func:`full_batch_gradient`.
        prepare: as in :func:`full_batch_gradient`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        *,
        oracle_every: int | None = None,
        diagnostics: bool = False,
        diagnostics_every: int = 50,
        subset: tuple[Tensor, Tensor] | None = None,
        batch_size: int = 128,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        prepare: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if oracle_every is not None and oracle_every < 1:
            raise ValueError(f"oracle_every must be >= 1, got {oracle_every}")
        if diagnostics and subset is None:
            raise ValueError("diagnostics need a fixed data subset")
        if (oracle_every is not None or diagnostics) and not hasattr(optimizer, "set_full_gradient"):
            raise ValueError(
                f"oracle full gradients and diagnostics need FriendlySAM, not {type(optimizer).__name__}"
            )
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.oracle_every, self.diagnostics, self.diagnostics_every = (
            oracle_every,
            diagnostics,
            diagnostics_every,
        )
        self.subset, self.batch_size = subset, batch_size
        self.autocast, self.prepare = autocast, prepare
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self._reset()

    def _reset(self) -> None:
        self.ema_full: list[tuple[int, float]] = []
        self.batch_full: list[tuple[int, float]] = []
        self.ema_oracle: list[tuple[int, float]] = []
        self.oracle_passes = 0
        self.oracle_time = 0.0
        self.subset_time = 0.0

    def _ema(self) -> list[Tensor] | None:
        emas = [self.optimizer.state[p].get("ema") for p in self.params]
        return None if any(e is None for e in emas) else emas

    def _gradient(self, batches: Iterable[tuple[Tensor, Tensor]]) -> list[Tensor]:
        return full_batch_gradient(
            self.model, batches, params=self.params, autocast=self.autocast, prepare=self.prepare
        )

    def before_step(self, step: int, epoch: int) -> None:
        """Call before training step ``step`` (0-based, counted over the whole run) of epoch ``epoch``."""
        if self.oracle_every is not None and step % self.oracle_every == 0:
            t0 = time.perf_counter()
            full = self._gradient(self.loader.iter_from(0, epoch))
            self.optimizer.set_full_gradient(full)
            self.oracle_passes += 1
            self.oracle_time += time.perf_counter() - t0
            ema = self._ema()
            if self.diagnostics and ema is not None:
                self.ema_oracle.append((step, cosine(ema, full)))
        if self.diagnostics and step % self.diagnostics_every == 0:
            ema = self._ema()
            if ema is not None:
                t0 = time.perf_counter()
                assert self.subset is not None
                xs, ys = self.subset
                chunks = [
                    (xs[i : i + self.batch_size], ys[i : i + self.batch_size])
                    for i in range(0, len(ys), self.batch_size)
                ]
                full = self._gradient(chunks)
                self.ema_full.append((step, cosine(ema, full)))
                # the same step's minibatch gradient (the loader is a pure function of epoch and index):
                # is the EMA closer to the full gradient than one minibatch gradient is?
                batch = self.loader.batch(step % len(self.loader), epoch)
                self.batch_full.append((step, cosine(self._gradient([batch]), full)))
                self.subset_time += time.perf_counter() - t0

    def epoch_record(self) -> dict[str, Any]:
        """Numbers for this epoch's ``metrics.jsonl`` line; resets the epoch's accumulators."""
        out: dict[str, Any] = {}
        if self.oracle_every is not None:
            out["oracle_passes"] = self.oracle_passes
            out["oracle_time"] = self.oracle_time
        if self.diagnostics:
            diag = self.optimizer.read_diagnostics(reset=True)
            out["diag_cos_g_m"] = diag["cos_g_m"]
            out["diag_noise_ratio"] = diag["noise_ratio"]
            out["diag_steps"] = diag["steps"]
            cos = [c for _, c in self.ema_full]
            out["diag_ema_full_cos"] = sum(cos) / len(cos) if cos else None
            out["diag_ema_full_cos_points"] = [[s, c] for s, c in self.ema_full]
            cos = [c for _, c in self.batch_full]
            out["diag_batch_full_cos"] = sum(cos) / len(cos) if cos else None
            out["diag_batch_full_cos_points"] = [[s, c] for s, c in self.batch_full]
            out["diag_time"] = self.subset_time
            if self.oracle_every is not None:
                cos = [c for _, c in self.ema_oracle]
                out["diag_ema_oracle_cos"] = sum(cos) / len(cos) if cos else None
                out["diag_ema_oracle_cos_points"] = [[s, c] for s, c in self.ema_oracle]
        self._reset()
        return out
