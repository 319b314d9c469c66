"""The efficient-F-SAM benchmark's plan: cells, variants, runs and each run's trainer configuration.

Cells are those of the generalization suite (benchmarks/generalization/plan.py, its FULL budget):
``sym40-long`` (40 % symmetric label noise, 30 epochs) and ``clean`` (15 epochs). The baselines (SGD,
SAM, F-SAM) come from that suite's runs; this benchmark trains only the variants."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from benchmarks.generalization.plan import FULL, RunSpec, train_config
from friendly_sam.train import TrainConfig

# name -> (perturb_every, between, ascent_fraction): options of FriendlySAM / TrainConfig
VARIANTS: dict[str, tuple[int, str, float]] = {
    "fsam-p4": (4, "base", 1.0),  # perturb every 4th step, plain SGD steps between
    "fsam-ls4": (4, "looksam", 1.0),  # perturb every 4th step, LookSAM reuse between
    "fsam-sb25": (1, "base", 0.25),  # every step, clean pass on 25 % of the batch
    "fsam-sb12": (1, "base", 0.125),  # every step, clean pass on 12.5 % of the batch (16 of 128)
    "fsam-sb06": (1, "base", 0.0625),  # every step, clean pass on 8 of 128 samples
}
VARIANT_TITLES = {
    "fsam-p4": "F-SAM, perturb every 4th step",
    "fsam-ls4": "F-SAM + LookSAM reuse, k=4",
    "fsam-sb25": "F-SAM, sub-batch ascent f=0.25",
    "fsam-sb12": "F-SAM, sub-batch ascent f=0.125",
    "fsam-sb06": "F-SAM, sub-batch ascent f=0.0625",
}
LMBDA = 0.6
# rho grid per cell, selected on validation; rho 0.4 first in the noisy cell (where F-SAM selected it)
CELL_RHOS: dict[str, list[float]] = {"sym40-long": [0.4, 0.2], "clean": [0.05]}
CELLS = ("sym40-long", "clean")
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class VariantSpec:
    cell: str
    variant: str
    seed: int
    rho: float

    @property
    def config_name(self) -> str:
        return f"{self.variant}_rho{self.rho:g}_lmbda{LMBDA:g}"

    @property
    def run_id(self) -> str:
        return f"{self.cell}/{self.config_name}/seed{self.seed}"


def plan(
    cells: tuple[str, ...] = CELLS,
    variants: tuple[str, ...] = tuple(VARIANTS),
    seeds: tuple[int, ...] = SEEDS,
    rhos: dict[str, list[float]] | None = None,
) -> list[VariantSpec]:
    """Rho-major, then seed-major: the first rho of every cell for all seeds before the second rho, so
    that a partial benchmark has complete cells; within a seed the noisy cell first, then the clean."""
    rhos = rhos or CELL_RHOS
    runs: list[VariantSpec] = []
    for r in range(max(len(v) for v in rhos.values())):
        for seed in seeds:
            for cell in cells:
                if r < len(rhos[cell]):
                    runs += [VariantSpec(cell, v, seed, rhos[cell][r]) for v in variants]
    return runs


def variant_config(
    spec: VariantSpec, suite: dict[str, Any] | None = None, data_dir: str | None = None
) -> TrainConfig:
    """The generalization suite's F-SAM configuration of this cell, rho and seed, plus the variant's options."""
    suite = suite or FULL
    base = train_config(RunSpec(spec.cell, "fsam", spec.seed, spec.rho, LMBDA), suite, data_dir)
    every, between, fraction = VARIANTS[spec.variant]
    return dataclasses.replace(
        base, perturb_every=every, between=between, ascent_fraction=fraction, name=spec.config_name
    ).validate()
