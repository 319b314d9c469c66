"""A matrix of optimizer options run on the hand loop, recorded bit for bit (tests/optim/data/trajectories.pt).

The fixture was recorded from the optimizer before its refactor into functions (main at 5b84029); the
test (test_trajectory_matrix.py) asserts that today's code gives the same trajectories with
``torch.equal``. Regenerate only when a trajectory is *meant* to change::

    python tests/optim/trajectory_matrix.py tests/optim/data/trajectories.pt

Each case: a tiny MLP (float32), 6 steps of ``first_step`` / ``second_step`` (or ``step(closure)``), the
parameters after every step, the optimizer state tensors at the end, the errors raised on the steps where
an inf is injected without a GradScaler (the step is then abandoned and the loop goes on).
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import torch
from testkit import SyncCounter
from torch import nn

from friendly_sam import SAM, FriendlySAM

STEPS = 6
METHODS = {
    "sam": (SAM, {"rho": 0.05}),
    "asam": (SAM, {"rho": 0.5, "adaptive": True}),
    "fsam": (FriendlySAM, {"rho": 0.2, "sigma": 1.0, "lmbda": 0.6}),
    "fsam-adaptive": (FriendlySAM, {"rho": 0.5, "sigma": 0.5, "lmbda": 0.9, "adaptive": True}),
}
SCHEDULES = {
    "every": {},
    "k2-base": {"perturb_every": 2},
    "k3-looksam": {"perturb_every": 3, "between": "looksam"},
}
VARIANTS = ("plain", "clip", "scaler", "keep-grad", "groups", "closure", "adamw", "inf")
EXTRA = {  # F-SAM research options, on the plain loop
    "component-full": {"component": "full"},
    "component-minibatch": {"component": "minibatch"},
    "sigma-half": {"sigma": 0.5},
    "diagnostics": {"track_diagnostics": True},
    "oracle": {},
}


def cases() -> list[dict[str, Any]]:
    out = []
    for (method, schedule, variant), foreach in itertools.product(
        itertools.product(METHODS, SCHEDULES, VARIANTS), (False, True)
    ):
        out.append(
            {"method": method, "schedule": schedule, "variant": variant, "foreach": foreach, "extra": None}
        )
    for extra, foreach in itertools.product(EXTRA, (False, True)):
        for variant in ("plain", "scaler"):
            out.append(
                {
                    "method": "fsam",
                    "schedule": "every",
                    "variant": variant,
                    "foreach": foreach,
                    "extra": extra,
                }
            )
    return out


def case_name(case: dict[str, Any]) -> str:
    parts = [case["method"], case["schedule"], case["variant"], "foreach" if case["foreach"] else "loop"]
    return "-".join(parts + ([case["extra"]] if case["extra"] else []))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(STEPS)
    ]


def _optimizer(case: dict[str, Any], model: nn.Module):
    cls, kw = METHODS[case["method"]]
    kw = {
        **kw,
        **SCHEDULES[case["schedule"]],
        **EXTRA.get(case["extra"] or "", {}),
        "foreach": case["foreach"],
    }
    base, base_kw = torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
    if case["variant"] == "adamw":
        base, base_kw = torch.optim.AdamW, {"lr": 0.01, "weight_decay": 1e-2}
    if case["variant"] == "clip":
        kw["max_grad_norm"] = 0.3
    params: Any = model.parameters()
    if case["variant"] == "groups":
        first, second = model[0], model[2]
        params = [
            {"params": first.parameters(), "rho": kw["rho"] * 2, "lr": 0.05},
            {"params": second.parameters()},
        ]
    return cls(params, base, **kw, **base_kw)


def _poison(model: nn.Module, step: int, clean: bool) -> None:
    """The "inf" and "scaler" variants: an inf in the clean gradient at step 2, in the perturbed one at 4."""
    if (step, clean) in ((2, True), (4, False)):
        next(model.parameters()).grad.view(-1)[0] = float("inf")


def run_case(case: dict[str, Any], checks_on_device: bool | None = None) -> dict[str, Any]:
    """One case; ``checks_on_device`` sets the optimizer's attribute (None: as constructed). The host syncs
    of every step (the whole step: both passes, both optimizer steps, ``scaler.update()``) are in ``syncs``."""
    model = _model()
    opt = _optimizer(case, model)
    if checks_on_device is not None:
        opt.checks_on_device = checks_on_device
    counter, syncs = SyncCounter(), []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if case["variant"] == "scaler" else None
    scale = scaler.scale if scaler is not None else (lambda v: v)
    poison = case["variant"] in ("inf", "scaler")
    params, errors = [], []
    for t, (x, y) in enumerate(_batches()):
        if case["extra"] == "oracle" and t == 2:
            opt.set_full_gradient(
                [torch.full_like(p, 0.01 * (i + 1)) for i, p in enumerate(model.parameters())]
            )
        before = counter.count
        with counter:
            try:
                if case["variant"] == "closure":
                    _closure_step(model, opt, x, y)
                else:
                    keep = case["variant"] == "keep-grad"
                    _hand_step(model, opt, x, y, t, scaler, scale, poison, keep=keep)
            except FloatingPointError as error:
                errors.append((t, type(error).__name__))
                opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
        syncs.append(counter.count - before)
        params.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
    state = opt.state_dict()["state"]
    tensors = [(f"{i}.{k}", v) for i, s in state.items() for k, v in sorted(s.items()) if torch.is_tensor(v)]
    flat = (
        torch.cat([v.detach().reshape(-1).to(torch.float32) for _, v in tensors])
        if tensors
        else torch.zeros(0)
    )
    out = {
        "params": torch.stack(params),
        "state": flat,
        "state_keys": [k for k, _ in tensors],
        "errors": errors,
        "steps": opt.steps_taken,
        "syncs": syncs,
    }
    if case["extra"] == "diagnostics":
        out["diagnostics"] = opt.read_diagnostics()
    return out


def _hand_step(model, opt, x, y, t, scaler, scale, poison, keep) -> None:
    scale(nn.functional.cross_entropy(model(x), y)).backward()
    if poison:
        _poison(model, t, clean=True)
    kw = {"scaler": scaler} if scaler is not None else {}
    opt.first_step(zero_grad=not keep, **kw)
    if opt.is_perturbed:
        scale(nn.functional.cross_entropy(model(x), y)).backward()
        if poison:
            _poison(model, t, clean=False)
    opt.second_step(zero_grad=True, **kw)


def _closure_step(model, opt, x, y) -> None:
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    opt.zero_grad()


def record() -> dict[str, Any]:
    """Every case, packed into few tensors (a small file): ``meta[name]`` holds what is not a tensor and the
    slice of ``state`` that is the case's."""
    runs = {case_name(c): run_case(c) for c in cases()}
    offsets = [0]
    for r in runs.values():
        offsets.append(offsets[-1] + r["state"].numel())
    meta = {
        name: {**{k: v for k, v in r.items() if k not in ("params", "state")}, "state_slice": (a, b)}
        for (name, r), a, b in zip(runs.items(), offsets, offsets[1:])
    }
    params = torch.stack([r["params"] for r in runs.values()])
    return {"meta": meta, "params": params, "state": torch.cat([r["state"] for r in runs.values()])}


def unpack(recorded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`record`'s packing: name -> run."""
    out = {}
    for i, (name, meta) in enumerate(recorded["meta"].items()):
        a, b = meta["state_slice"]
        out[name] = {**meta, "params": recorded["params"][i], "state": recorded["state"][a:b]}
        del out[name]["state_slice"]
    return out


if __name__ == "__main__":
    torch.save(record(), sys.argv[1])
