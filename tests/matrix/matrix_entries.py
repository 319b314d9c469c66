"""The matrix's rows: every entry point, used the way its docs show, on the cell's features.

Each runner builds the tiny model and optimizer of :mod:`matrix_setup`, trains through the real framework
and returns the trained ``nn.Sequential`` (parameters and BatchNorm buffers are compared with the reference
loop). Random ops: every runner seeds the RNG with ``SEED + t`` at the start of update ``t`` through the
framework's own per-update hook. Resume: after half the updates, everything is saved the framework's way,
rebuilt from scratch and resumed.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch
from matrix_setup import (
    SEED,
    Batch,
    Features,
    autocast,
    copy_state,
    make_data,
    make_net,
    make_optimizer,
    make_scaler,
    micro_batches,
    reference,
    updates,
)
from torch import nn

from friendly_sam.optim.engine import bind_model
from friendly_sam.train import training_step


@dataclasses.dataclass(frozen=True)
class Entry:
    """A row: ``run(features)`` returns the trained net; ``expected(features)`` the reference net, or the
    refusal ``(exception type, message regex)``, or ``None`` where the entry point has no such option."""

    name: str
    run: Callable[[Features], nn.Module]
    refuses: Callable[[Features], tuple[type[BaseException], str] | None] = lambda f: None
    has: Callable[[Features], str | None] = lambda f: None  # why a feature does not exist here, else None
    fp16_autocast: bool = True
    reference_steps: Callable[[Features], list[list[Batch]] | None] = lambda f: None
    expected: Callable[[Features], Any] | None = None  # the reference, where it is not matrix_setup's loop
    ddp: str | None = None  # its name in matrix_ddp.MODES: run in the 2-process DDP column
    ddp_note: str = "not run under DDP here"  # else, what the table says (which mode it runs)


def missing(entry: Entry, features: Features) -> str | None:
    """Why the matrix has no cell for ``entry`` x ``features`` (None: it has one)."""
    if features.ddp and entry.ddp is None:
        return entry.ddp_note
    return entry.has(features)


def _split(features: Features) -> tuple[list[list[Batch]], list[list[Batch]]]:
    steps = updates(features)
    half = len(steps) // 2 if features.resume else len(steps)
    return steps[:half], steps[half:]


def _seed(features: Features, t: int) -> None:
    if features.random:
        torch.manual_seed(SEED + t)


# ----------------------------------------------------------------------------- our own loops
def run_hand_loop(features: Features) -> nn.Module:
    """The reference loop itself (with its state-dict round trip for resume): the definition."""
    return reference(features)


def run_training_step(features: Features, build: Callable[[nn.Module], Any] | None = None) -> nn.Module:
    """``training_step`` over the updates; ``build(net)`` makes the optimizer (default: FriendlySAM)."""
    build = build or (lambda net: make_optimizer(net.parameters(), features))
    net = make_net(features)
    opt = build(net)
    scaler = make_scaler() if features.precision == "16" else None
    first, second = _split(features)
    for part, steps in enumerate((first, second)):
        if part == 1 and features.resume:
            fresh = make_net(features, seed=7)
            fresh_opt = build(fresh)
            copy_state((net, opt), (fresh, fresh_opt))
            net, opt = fresh, fresh_opt
        for i, micro in enumerate(steps):
            _seed(features, len(first) * part + i)
            ((x, y),) = micro
            training_step(
                net,
                opt,
                x,
                y,
                bf16=features.precision == "bf16",
                max_grad_norm=features.clip,
                scaler=scaler,
                rng=features.random or "fresh",
            )
    return net


def one_batch_per_call(features: Features) -> str | None:
    return "one batch per call (pass the larger batch)" if features.accumulate > 1 else None


def run_closure(features: Features) -> nn.Module:
    """Composer / skorch style: ``optimizer.step(closure)``, the closure zeroes and runs every micro-batch;
    the optimizer knows the model (``model=``)."""
    net = make_net(features)

    def build(model: nn.Module) -> Any:
        opt = make_optimizer(model.parameters(), features, clip_in_optimizer=True, model=model)
        return bind_model(opt, model, rng=features.random or "fresh")

    opt = build(net)
    scaler = make_scaler() if features.precision == "16" else None
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(features.precision)
    first, second = _split(features)
    for part, steps in enumerate((first, second)):
        if part == 1 and features.resume:
            fresh = make_net(features, seed=7)
            fresh_opt = build(fresh)
            copy_state((net, opt), (fresh, fresh_opt))
            net, opt = fresh, fresh_opt
        for i, micro in enumerate(steps):
            _seed(features, len(first) * part + i)

            def closure(micro: list[Batch] = micro, net: nn.Module = net, opt: Any = opt) -> torch.Tensor:
                opt.zero_grad()
                for x, y in micro:
                    with autocast(dtype):
                        loss = nn.functional.cross_entropy(net(x), y) / len(micro)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                return loss

            opt.step(closure, scaler=scaler)
            if scaler is not None:
                scaler.update()
    return net


ENTRIES: list[Entry] = []


def _register(entry: Entry) -> Entry:
    ENTRIES.append(entry)
    return entry


_register(Entry("hand loop (first_step/second_step)", run_hand_loop, ddp="hand loop"))
_register(
    Entry(
        "training_step",
        run_training_step,
        has=one_batch_per_call,
        fp16_autocast=False,
        ddp="training_step",
    )
)
_register(
    Entry(
        "step(closure) with model=",
        run_closure,
        refuses=lambda f: (ValueError, "cannot run sub-batch ascent") if f.ascent_fraction < 1 else None,
        ddp="step(closure)",
    )
)


# rows of a framework that is not installed are left out (the test extra installs them all)
FRAMEWORK_ROWS = ("matrix_timm", "matrix_lightning", "matrix_hf", "matrix_cli")


def all_entries() -> list[Entry]:
    entries = list(ENTRIES)
    for name in FRAMEWORK_ROWS:
        try:
            entries += importlib.import_module(name).ENTRIES
        except ImportError as err:
            if (err.name or "").startswith(("friendly_sam", "matrix_")) and err.name != "matrix_cli":
                raise
    return entries


def loader_of(batch_size: int = 8) -> torch.utils.data.DataLoader:
    x, y = make_data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def all_batches() -> list[Batch]:
    return micro_batches()
