"""The test matrix's features, tiny data and model, and the reference loop every cell must equal.

The reference is docs/integrations.md's "two-pass update" (REFERENCE.md section 5) written out by hand with
``first_step``/``second_step``: for the micro-batches of one update, the clean backward of each (loss / k),
one ``first_step``, the perturbed backward of each under ``frozen_bn_stats`` (the RNG replayed for
``rng="replay"``), ``second_step``; clipping of the applied gradient is the optimizer's own
``max_grad_norm`` (it clips the perturbed gradient, and the clean one on unperturbed ``perturb_every``
steps); sub-batch ascent runs the clean pass on the first half of each micro-batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from friendly_sam import FriendlySAM, frozen_bn_stats

Batch = tuple[torch.Tensor, torch.Tensor]
HPARAMS = {"rho": 0.1, "sigma": 1.0, "lmbda": 0.6, "lr": 0.1, "momentum": 0.9}
BATCH, SAMPLES = 8, 32  # 4 micro-batches
CLIP = 0.05  # binds: the gradients here have norms around 1
SEED = 1000  # random ops: the RNG is seeded with SEED + t at the start of update t, by every entry point


@dataclasses.dataclass(frozen=True)
class Features:
    accumulate: int = 1  # micro-batches per update
    clip: float | None = None  # the framework's own clipping of the applied gradient
    precision: str = "32"  # "32", "16" (fp16 loss scaling with a GradScaler), "bf16" (autocast)
    perturb_every: int = 1
    ascent_fraction: float = 1.0  # an optimizer option (opt.ascent_fraction)
    random: str | None = None  # dropout + a random augmentation in the step; the entry point's rng mode
    resume: bool = False  # checkpoint after half the updates, rebuild everything, resume
    ddp: bool = False  # 2 processes on gloo


# The matrix's columns: one feature at a time, then the combinations that broke before.
COLUMNS: dict[str, Features] = {
    "fp32 + BatchNorm": Features(),
    "accumulation 2": Features(accumulate=2),
    "clipping": Features(clip=CLIP),
    "fp16 + GradScaler": Features(precision="16"),
    "bf16 autocast": Features(precision="bf16"),
    "perturb_every 2": Features(perturb_every=2),
    "perturb_every 2 + clipping": Features(perturb_every=2, clip=CLIP),
    "ascent_fraction 0.5": Features(ascent_fraction=0.5),
    "dropout + augmentation (fresh)": Features(random="fresh"),
    "dropout + augmentation (replay)": Features(random="replay"),
    "accumulation 2 + bf16": Features(accumulate=2, precision="bf16"),
    "accumulation 2 + fp16": Features(accumulate=2, precision="16"),
    "accumulation 2 + clipping + perturb_every 2": Features(accumulate=2, clip=CLIP, perturb_every=2),
    "resume mid-epoch": Features(resume=True),
    "resume mid-epoch + perturb_every 2": Features(resume=True, perturb_every=2),
    "2-process DDP (gloo)": Features(ddp=True),
}


class RandomAugment(nn.Module):
    """A random augmentation that lives in the step (noise on the input): draws from the global RNG."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.randn_like(x) if self.training else x


def make_net(features: Features, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    if features.random:
        layers.append(RandomAugment())
    layers += [nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh()]
    if features.random:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(16, 3))
    return nn.Sequential(*layers)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 8, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 0).long()).clamp(max=2)
    return x, y


def micro_batches() -> list[Batch]:
    x, y = make_data()
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, SAMPLES, BATCH)]


def updates(features: Features) -> list[list[Batch]]:
    batches, k = micro_batches(), features.accumulate
    return [batches[i : i + k] for i in range(0, len(batches), k)]


def make_optimizer(params, features: Features, *, clip_in_optimizer: bool = False, **extra) -> FriendlySAM:
    """The optimizer of a cell: ``perturb_every`` and ``ascent_fraction`` as optimizer options; the clip only
    where the entry point's own clipping mechanism is the optimizer's ``max_grad_norm``."""
    kw = {**HPARAMS, "perturb_every": features.perturb_every, **extra}
    if clip_in_optimizer and features.clip:
        kw["max_grad_norm"] = features.clip
    opt = FriendlySAM(params, torch.optim.SGD, **kw)
    if features.ascent_fraction != 1.0:
        opt.ascent_fraction = features.ascent_fraction
    return opt


def make_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=2)


def autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def ascent_part(batch: Batch, fraction: float) -> Batch:
    n = max(1, math.ceil(fraction * len(batch[1])))
    return batch[0][:n], batch[1][:n]


@contextlib.contextmanager
def rng_replayed(state: torch.Tensor | None) -> Iterator[None]:
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        yield


def copy_state(old: tuple, new: tuple) -> None:
    """Resume: the state dicts of ``old`` through a file (weights-only load) into the fresh ``new``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.pt"
        torch.save([o.state_dict() for o in old], path)
        states = torch.load(path, weights_only=True)
    for obj, state in zip(new, states):
        obj.load_state_dict(state)


def reference(
    features: Features, fp16_autocast: bool = True, steps: list[list[Batch]] | None = None
) -> nn.Module:
    """The hand-written loop (module docstring) over ``steps`` (default: the features' updates); with
    ``features.resume``, model, optimizer and scaler go through a state-dict round trip into fresh objects
    after half the updates. ``fp16_autocast``: whether the entry point's fp16 runs the forward under float16
    autocast (frameworks without CPU fp16 autocast only scale the loss)."""
    net = make_net(features)
    opt = make_optimizer(net.parameters(), features, clip_in_optimizer=True)
    scaler = make_scaler() if features.precision == "16" else None
    steps = updates(features) if steps is None else steps
    dtype = {"bf16": torch.bfloat16, "16": torch.float16 if fp16_autocast else None}.get(features.precision)
    net.train()

    def backward(batch: Batch, k: int) -> None:
        with autocast(dtype):
            loss = nn.functional.cross_entropy(net(batch[0]), batch[1]) / k
        (scaler.scale(loss) if scaler is not None else loss).backward()

    for t, micro in enumerate(steps):
        if features.resume and t == len(steps) // 2:
            fresh = make_net(features, seed=7)
            fresh_opt = make_optimizer(fresh.parameters(), features, clip_in_optimizer=True)
            fresh_scaler = make_scaler() if scaler is not None else None
            copy_state((net, opt, scaler) if scaler else (net, opt), (fresh, fresh_opt, fresh_scaler))
            net, opt, scaler = fresh, fresh_opt, fresh_scaler
        if features.random:
            torch.manual_seed(SEED + t)
        opt.zero_grad(set_to_none=True)
        sub = opt.next_step_perturbs and features.ascent_fraction < 1
        states = []
        for batch in micro:
            states.append(torch.get_rng_state() if features.random == "replay" else None)
            backward(ascent_part(batch, features.ascent_fraction) if sub else batch, features.accumulate)
        opt.first_step(scaler=scaler)
        if opt.is_perturbed:
            with frozen_bn_stats(net):
                for batch, state in zip(micro, states):
                    with rng_replayed(state):
                        backward(batch, features.accumulate)
        opt.second_step(scaler=scaler)
        if scaler is not None:
            scaler.update()
    return net


def assert_same_state(a: nn.Module | dict, b: nn.Module | dict, atol: float = 1e-6) -> None:
    """Parameters AND buffers (BatchNorm running statistics, num_batches_tracked) agree to ``atol``
    (modules, or their state dicts)."""
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        diff = (sa[key].double() - sb[key].double()).abs().max().item()
        assert diff <= atol, f"{key}: differs by {diff:.3g} from the reference loop"


Runner = Callable[[Features], nn.Module]
