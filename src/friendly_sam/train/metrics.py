"""An epoch's running training loss and accuracy, accumulated on the device and read only at read points.

On a GPU a step is a queue of kernels; ``float(loss)`` after every step makes the host wait for the queue to
drain (a host synchronisation), which for the paper's small networks costs as much as the step. The trainer
therefore adds every step's loss and correct count to device tensors (:meth:`EpochMetrics.add`: no
synchronisation) and reads them (:meth:`EpochMetrics.read`: one synchronisation) every :data:`READ_EVERY`
steps, where it also checks for divergence and refreshes the progress bar, and at the epoch's end. The sums
are the same float32/int64 tensor sums as an eager ``+=`` loop: the values read are bit-identical to reading
after every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["READ_EVERY", "EpochMetrics"]

READ_EVERY = 20  # steps between host reads of the device sums (each read is one synchronisation)


class EpochMetrics:
    """Sum of per-sample losses and of correct predictions on ``device``; sample counts on the host (they
    come from shapes, which the host knows without asking the device)."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.scored = 0  # samples whose loss and prediction are summed (the clean pass's)
        self.seen = 0  # samples trained on

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """One step's mean ``loss`` over ``logits``' samples (a prefix of the batch ``y`` with sub-batch
        ascent); no host synchronisation."""
        self.loss_sum += loss.float() * len(logits)
        self.correct += (logits.argmax(1) == y[: len(logits)]).sum()
        self.scored += len(logits)
        self.seen += len(y)

    def read(self) -> tuple[float, int]:
        """``(loss_sum, correct)`` as Python numbers: the one host synchronisation of a read point."""
        return float(self.loss_sum), int(self.correct)

    @staticmethod
    def is_read_point(step_in_epoch: int, steps_per_epoch: int) -> bool:
        """Whether the 0-based step ``step_in_epoch`` ends with a read (every :data:`READ_EVERY` steps and the
        epoch's last)."""
        return (step_in_epoch + 1) % READ_EVERY == 0 or step_in_epoch + 1 == steps_per_epoch
