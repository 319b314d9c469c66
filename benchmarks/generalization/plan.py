"""The generalization suite's plan: settings, budgets, the runs and each run's trainer configuration.

See run.py for the suite as a whole (usage, selection, resumability)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from friendly_sam.train import TrainConfig
from friendly_sam.train import run_dir as rd

SETTINGS: dict[str, tuple[float, str]] = {
    "clean": (0.0, "symmetric"),
    "sym20": (0.2, "symmetric"),
    "sym40": (0.4, "symmetric"),
    "asym40": (0.4, "asymmetric"),
}
# "<setting>-long": the same setting trained `long_factor` times longer, with fixed rho/lmbda (no sweep),
# to see whether longer training (SGD memorising the noisy labels) changes the comparison.
SETTINGS.update({f"{k}-long": v for k, v in list(SETTINGS.items())})
SETTING_TITLES = {
    "clean": "clean labels",
    "sym20": "20 % symmetric noise",
    "sym40": "40 % symmetric noise",
    "asym40": "40 % asymmetric noise",
}
SETTING_TITLES.update({f"{k}-long": f"{v}, long" for k, v in list(SETTING_TITLES.items())})
METHOD_TITLES = {
    "sgd": "SGD",
    "sam": "SAM",
    "fsam": "F-SAM",
    "pto-sam": "pytorch-optimizer SAM",
    "pto-fsam": "pytorch-optimizer FriendlySAM",
}

# The full suite: 4 settings x 3 seeds x (1 SGD + 2 SAM + 4 F-SAM) + 3 seeds x 2 pytorch-optimizer runs
# + 3 seeds x 3 runs of the long cell = 99 runs, sized for about 2.5 h of two single-thread workers on
# an idle 2-core CPU (see the README).
# No augmentation and a 2,000-image training set, so that SGD starts fitting the noisy labels within
# the budget (with random crops and a larger set it does not, and the settings barely differ).
FULL: dict[str, Any] = {
    "model": "resnet8",
    "train_subset": 3000,  # 2,000 train + 1,000 validation (clean labels)
    "val_size": 1000,
    "epochs": 15,
    "batch_size": 128,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "crop": False,
    "seeds": [0, 1, 2],
    "settings": ["clean", "sym20", "sym40", "asym40"],
    "sam_rhos": [0.05, 0.2],
    "fsam_rhos": [0.05, 0.2],
    "lmbdas": [0.6, 0.9],
    "pto_settings": ["sym40"],
    "long_settings": ["sym40"],  # + 3 seeds x (SGD, SAM, F-SAM) at 2x the epochs, after the main grid
    "long_factor": 2,
    "long_rho": 0.2,
    "long_lmbda": 0.6,
    "pto_rho": 0.2,
    "pto_lmbda": 0.6,
    "test_every": 5,  # test-set evaluation at epoch 1, every 5th and the last (validation: every epoch)
    "test_subset": None,  # None: the full 10,000-image test set
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_subset": 1500,
    "val_size": 500,
    "epochs": 5,
    "seeds": [0],
    "settings": ["clean", "sym40"],
    "sam_rhos": [0.2],
    "fsam_rhos": [0.2],
    "lmbdas": [0.6],
    "pto_settings": ["sym40"],
    "long_settings": [],
}


# --------------------------------------------------------------------------- the runs
@dataclass(frozen=True)
class RunSpec:
    setting: str
    method: str  # sgd, sam, fsam, pto-sam, pto-fsam
    seed: int
    rho: float | None = None
    lmbda: float | None = None

    @property
    def config_name(self) -> str:
        """The hyperparameter configuration, without the seed (e.g. ``fsam_rho0.05_lmbda0.6``)."""
        name = self.method
        if self.rho is not None:
            name += f"_rho{self.rho:g}"
        if self.lmbda is not None:
            name += f"_lmbda{self.lmbda:g}"
        return name

    @property
    def run_id(self) -> str:
        return f"{self.setting}/{self.config_name}/seed{self.seed}"


def plan(suite: dict[str, Any]) -> list[RunSpec]:
    """All runs, seed-major (every setting and method gets seed 0 before any gets seed 1), so that a
    partial suite covers every cell; SGD first within a setting."""
    runs: list[RunSpec] = []
    for seed in suite["seeds"]:
        for setting in suite["settings"]:
            runs.append(RunSpec(setting, "sgd", seed))
            runs += [RunSpec(setting, "sam", seed, rho) for rho in suite["sam_rhos"]]
            runs += [
                RunSpec(setting, "fsam", seed, rho, lmbda)
                for rho in suite["fsam_rhos"]
                for lmbda in suite["lmbdas"]
            ]
            if setting in suite["pto_settings"]:
                runs.append(RunSpec(setting, "pto-sam", seed, suite["pto_rho"]))
                runs.append(RunSpec(setting, "pto-fsam", seed, suite["pto_rho"], suite["pto_lmbda"]))
    for seed in suite["seeds"]:
        for base in suite.get("long_settings", []):
            setting = f"{base}-long"
            runs.append(RunSpec(setting, "sgd", seed))
            runs += [RunSpec(setting, "sam", seed, rho) for rho in long_rhos(suite)]
            runs += [RunSpec(setting, "fsam", seed, rho, suite["long_lmbda"]) for rho in long_rhos(suite)]
    return runs


def long_rhos(suite: dict[str, Any]) -> list[float]:
    """The long cells' rhos: one fixed value (``long_rho``), or a sweep (``long_rhos``) selected on validation."""
    return list(suite.get("long_rhos") or [suite["long_rho"]])


def all_settings(suite: dict[str, Any]) -> list[str]:
    return list(suite["settings"]) + [f"{b}-long" for b in suite.get("long_settings", [])]


def train_config(spec: RunSpec, suite: dict[str, Any], data_dir: str | None) -> TrainConfig:
    noise, kind = SETTINGS[spec.setting]
    base = spec.method.removeprefix("pto-")
    return TrainConfig(
        dataset="fashion-mnist",
        data_dir=data_dir,
        train_subset=suite["train_subset"],
        val_size=suite["val_size"],
        label_noise=noise,
        noise_kind=kind,
        crop=suite["crop"],
        model=suite["model"],
        method={"sgd": "base"}.get(base, base),  # the suite says sgd; the trainer calls SGD alone "base"
        lr=suite["lr"],
        weight_decay=suite["weight_decay"],
        rho=spec.rho if spec.rho is not None else 0.05,
        lmbda=spec.lmbda if spec.lmbda is not None else 0.6,
        sigma=1.0,
        epochs=suite["epochs"] * (suite["long_factor"] if spec.setting.endswith("-long") else 1),
        batch_size=suite["batch_size"],
        seed=spec.seed,
        threads=1,
        device="cpu",
        eval_batch_size=250,  # faster than large batches on one CPU thread
        name=spec.config_name,
    ).validate()


def run_state(run_dir: Path, epochs: int) -> str:
    """``done``, ``partial`` (has a checkpoint: resume), ``broken`` (no checkpoint: restart) or ``todo``."""
    if rd.has_summary(run_dir):
        return "done"
    if rd.has_checkpoint(run_dir):
        return "partial"
    if run_dir.exists():
        return "broken"
    return "todo"
