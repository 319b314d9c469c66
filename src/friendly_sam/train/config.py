"""The training configuration: one dataclass that is the single source of flags, file keys and help.

A config file (TOML, or YAML when PyYAML is installed) gives any subset of the fields; command-line
flags override the file; :meth:`TrainConfig.validate` checks everything before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data import DATASET_NAMES, IMAGE_FOLDER, NOISE_KINDS, STORAGE_CHOICES
from ..distributed import PERTURBATION_MODES as PERTURBATIONS  # under torchrun; see docs/distributed.md
from ..files import parse_json, parse_toml, parse_yaml, read_text
from ..models import EXTERNAL_PREFIXES, available_models
from ..optim import BETWEEN_MODES
from ..optim.fsam import COMPONENTS

OPTIMIZERS = ("sgd", "sam", "asam", "fsam", "afsam")
BASE_OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
FULL_GRADIENTS = ("ema", "oracle")
DATASETS = (*DATASET_NAMES, IMAGE_FOLDER)  # the built-in data sets, and your own image folder


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse anything huge before reading

# Resume rules (applied by friendly_sam.train.checkpoint.check_resume_config). Every TrainConfig field is
# in exactly one of IDENTITY_KEYS, SAFE_KEYS or EPOCHS_KEY; tests/safety fails on an unclassified field.
# Identity: a change alters the training trajectory (data and its order, augmentation, model, algorithm
# and its hyper-parameters, schedule shape, numerics, evaluation subsets, extra diagnostic passes), so
# resuming with it is refused.
IDENTITY_KEYS = (
    "dataset",
    "train_subset",
    "val_size",
    "test_subset",
    "label_noise",
    "noise_kind",
    "crop",
    "flip",
    "cutout",
    "model",
    "optimizer",
    "base",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "rho",
    "sigma",
    "lmbda",
    "max_grad_norm",
    "component",
    "full_gradient",
    "oracle_every",
    "diagnostics",
    "diagnostics_every",
    "diagnostics_subset",
    "batch_size",
    "schedule",
    "milestones",
    "gamma",
    "warmup_epochs",
    "seed",
    "bf16",
    "perturbation",
    "sync_bn",
    "image_size",
    "resize_size",
    "skip_bad_images",
    "pretrained",
    "new_head",
    "perturb_every",
    "between",
    "looksam_alpha",
    "ascent_fraction",
)
# Safe: where the (MD5-checked) data files are, hardware and speed settings (results equal up to float
# rounding, as on another machine), evaluation batch size, bookkeeping and the label. Changes are reported.
SAFE_KEYS = (
    "data_dir",
    "download",
    "device",
    "threads",
    "channels_last",
    "deterministic",
    "eval_batch_size",
    "checkpoint_every",
    "tensorboard",
    "name",
    "data_storage",
    "memory_budget",
    "num_workers",
    "dist_timeout",
)
# May change on resume, but never below the epochs already done; the schedule then spans the new length.
EPOCHS_KEY = "epochs"


class ConfigError(ValueError):
    """A configuration file or option that cannot be used; the message names the file and the key."""


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults: a small, quick F-SAM run on Fashion-MNIST."""

    # data
    dataset: str = _opt(
        "fashion-mnist", "data set: fashion-mnist, mnist, cifar10, cifar100, or imagefolder (--data-dir)"
    )
    data_dir: str | None = _opt(
        None, "directory holding the data set files (else FSAM_DATA_DIR, the cache, ...)"
    )
    download: bool = _opt(False, "download the data set (MD5-checked) when it is not found locally")
    train_subset: int | None = _opt(None, "train on a random subset of this many images")
    val_size: int = _opt(0, "hold out this many training images as a validation split (0: none)")
    test_subset: int | None = _opt(
        None, "evaluate on a fixed random subset of this many test images (quick checks)"
    )
    label_noise: float = _opt(0.0, "fraction of training labels to corrupt, in [0, 1]")
    noise_kind: str = _opt("symmetric", "label noise kind: symmetric or asymmetric")
    crop: bool = _opt(True, "random crop with padding (4 pixels at 32x32, 3 at 28x28)")
    flip: bool | None = _opt(None, "random horizontal flip (default: on for CIFAR, off for digits/clothes)")
    cutout: bool = _opt(False, "Cutout 16x16 with p=0.5 (the paper's CIFAR recipe; 8x8 at 28x28)")
    # your own images: --dataset imagefolder --data-dir DIR (docs/own_data.md)
    image_size: int = _opt(224, "imagefolder: side of the images the model sees")
    resize_size: int | None = _opt(
        None, "imagefolder: shorter side resized to this, centre square kept (default: --image-size)"
    )
    skip_bad_images: bool = _opt(
        False, "imagefolder: leave unreadable image files out (listed) instead of stopping"
    )
    data_storage: str = _opt(
        "auto", "imagefolder: auto (in memory if it fits --memory-budget), memory or streaming"
    )
    memory_budget: float | None = _opt(
        None,
        "imagefolder: GiB of decoded images to hold in memory, per machine (default: half the free memory)",
    )
    num_workers: int | None = _opt(None, "imagefolder: decoding processes (default: the CPUs, at most 8)")
    # model
    model: str = _opt("resnet8", "network; `fsam models` lists them; or torchvision:<name>, timm:<name>")
    pretrained: str | None = _opt(None, "initial weights: a state dict file (torch.save(model.state_dict()))")
    new_head: bool = _opt(False, "with --pretrained: a new classifier for this data's classes (fine-tuning)")
    # optimizer
    optimizer: str = _opt("fsam", "sgd, sam, asam (adaptive SAM), fsam, afsam (adaptive F-SAM)")
    base: str = _opt("sgd", "base optimizer: sgd or adamw")
    lr: float = _opt(0.05, "peak learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = _opt(5e-4, "weight decay (coupled for SGD, decoupled for AdamW)")
    rho: float = _opt(0.05, "SAM / F-SAM neighbourhood radius")
    sigma: float = _opt(1.0, "F-SAM: fraction of the estimated full gradient removed")
    lmbda: float = _opt(0.6, "F-SAM: EMA decay of the full-gradient estimate, in [0, 1)")
    max_grad_norm: float | None = _opt(
        None, "clip the (perturbed) gradient to this norm before the base step"
    )
    component: str = _opt(
        "noise",
        "F-SAM perturbation component: noise (g - sigma*m, F-SAM), full (m only), minibatch (g, as SAM)",
    )
    full_gradient: str = _opt(
        "ema", "F-SAM full-gradient estimate m: ema, or oracle (true full-batch gradient every N steps)"
    )
    oracle_every: int = _opt(10, "--full-gradient oracle: recompute it every N steps (1 full F+B pass)")
    perturb_every: int = _opt(1, "SAM/F-SAM: perturb every N-th step only (1: every step); docs/efficient.md")
    between: str = _opt(
        "base",
        "--perturb-every > 1: the other steps use the clean gradient (base) or LookSAM's reuse (looksam)",
    )
    looksam_alpha: float = _opt(0.7, "--between looksam: weight of the reused sharpness component")
    ascent_fraction: float = _opt(
        1.0, "SAM/F-SAM: the clean (ascent) pass uses this fraction of each batch, in (0, 1]"
    )
    diagnostics: bool = _opt(
        False, "log cos(g, m), ||g - sigma m||/||sigma m|| and the EMA-vs-full-gradient cosine per epoch"
    )
    diagnostics_every: int = _opt(50, "--diagnostics: EMA-vs-full-gradient cosine every N steps")
    diagnostics_subset: int = _opt(2048, "--diagnostics: training images for that full gradient")
    # schedule
    epochs: int = _opt(5, "number of epochs")
    batch_size: int = _opt(128, "training batch size")
    schedule: str = _opt("cosine", "learning-rate schedule: cosine (per iteration, to 0), step, constant")
    milestones: list[float] = _opt(
        (0.5, 0.75), "step schedule: fractions of training where lr drops", nargs="+"
    )
    gamma: float = _opt(0.1, "step schedule: factor at each milestone")
    warmup_epochs: float = _opt(0.0, "linear warm-up length in epochs")
    # speed and reproducibility
    seed: int = _opt(0, "seed of everything (initialisation, data order, augmentation, label noise)")
    bf16: bool = _opt(False, "bfloat16 autocast for forward/backward (fast on recent CPUs and GPUs)")
    channels_last: bool = _opt(False, "channels_last memory format (faster convolutions on CPU)")
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto")
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice)")
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms (GPU runs become reproducible)")
    eval_batch_size: int = _opt(256, "batch size for evaluation")
    # several processes (torchrun; docs/distributed.md)
    perturbation: str = _opt(
        "per-replica",
        "under torchrun: per-replica (each replica perturbs with its local gradient and keeps its own "
        "F-SAM EMA) or synchronized (all-reduced first gradient, as one process over the global batch)",
    )
    sync_bn: bool = _opt(False, "under torchrun: SyncBatchNorm (batch statistics over all replicas; CUDA)")
    dist_timeout: float = _opt(
        600.0,
        "under torchrun: seconds a process waits for the others in one collective before the run ends "
        "with an error (a process stopped, hung or lost); raise it when one rank's data preparation or "
        "checkpoint write takes longer",
    )
    # run bookkeeping
    checkpoint_every: int = _opt(1, "write a checkpoint every N epochs (the last epoch always)")
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)")
    name: str | None = _opt(None, "a label for comparisons (default: the optimizer name)")

    @property
    def label(self) -> str:
        return self.name or self.optimizer

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a flat dict (a file's options, flags): unknown keys and wrong types are refused.

        ``-`` in keys reads as ``_``; a key given both ways is refused. Errors are :class:`ConfigError`
        (a ``ValueError``) naming the key and ``source``."""
        known = {f.name: f for f in fields(cls)}
        normalized: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name in normalized:
                raise ConfigError(f"{source}: option {name!r} is given twice (as {key!r} and once more)")
            normalized[name] = value
        unknown = sorted(set(normalized) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(known)}"
            )
        return cls(**{k: check_option_type(k, v, source) for k, v in normalized.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_config_file(path), source=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the option and the fix for any invalid value; return self."""

        def choice(name: str, options: tuple[str, ...] | list[str]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ValueError(
                    f"--{name.replace('_', '-')}: unknown value {value!r}; choose one of: {', '.join(options)}"
                )

        def number(
            name: str, low: float, high: float | None = None, *, open_low=False, open_high=False
        ) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if open_low else v >= low)
            ok = ok and (high is None or (v < high if open_high else v <= high))
            if not ok:
                lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
                rng = f"{lo}{low}, {high}{hi}" if high is not None else f"{'>' if open_low else '>='} {low}"
                raise ValueError(
                    f"--{name.replace('_', '-')}: invalid value {v!r}; it must be a number in {rng}"
                )

        def integer(name: str, low: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v < 2**63:
                shown = f"of {v.bit_length()} bits" if isinstance(v, int) and v.bit_length() > 64 else repr(v)
                raise ValueError(f"--{name.replace('_', '-')}: invalid value {shown}; use an integer >= {low}, < 2**63")

        for f in fields(self):  # Python callers and replace() bypass from_dict's checks
            check_option_type(f.name, getattr(self, f.name), "config")
        choice("dataset", list(DATASETS))
        if self.model.partition(":")[0].strip().lower() not in EXTERNAL_PREFIXES:  # torchvision:/timm:
            choice("model", list(available_models()))
        choice("data_storage", STORAGE_CHOICES)
        integer("image_size", 1)
        integer("resize_size", 1, optional=True)
        integer("num_workers", 0, optional=True)
        if self.memory_budget is not None:
            number("memory_budget", 0.0, open_low=True)
        choice("optimizer", OPTIMIZERS)
        choice("base", BASE_OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("noise_kind", NOISE_KINDS)
        choice("perturbation", PERTURBATIONS)
        number("label_noise", 0.0, 1.0)
        number("lr", 0.0, open_low=True)
        number("momentum", 0.0, 1.0, open_high=True)
        number("weight_decay", 0.0)
        number("rho", 0.0)
        number("sigma", 0.0)
        number("lmbda", 0.0, 1.0, open_high=True)
        number("gamma", 0.0, 1.0, open_low=True)
        number("warmup_epochs", 0.0)
        number("dist_timeout", 0.0, open_low=True)
        integer("epochs", 1)
        integer("batch_size", 1)
        integer("eval_batch_size", 1)
        integer("val_size", 0)
        integer("train_subset", 1, optional=True)
        integer("test_subset", 1, optional=True)
        integer("threads", 1, optional=True)
        integer("checkpoint_every", 1)
        integer("seed", 0)
        choice("component", COMPONENTS)
        choice("between", BETWEEN_MODES)
        integer("perturb_every", 1)
        number("looksam_alpha", 0.0)
        number("ascent_fraction", 0.0, 1.0, open_low=True)
        choice("full_gradient", FULL_GRADIENTS)
        integer("oracle_every", 1)
        integer("diagnostics_every", 1)
        integer("diagnostics_subset", 1)
        if self.max_grad_norm is not None:
            number("max_grad_norm", 0.0, open_low=True)
        return self._check_combinations()

    def _check_combinations(self) -> TrainConfig:
        """The checks that involve several options (after each has its type and range)."""
        uses_fsam = self.component != "noise" or self.full_gradient == "oracle" or self.diagnostics
        if uses_fsam and self.optimizer not in ("fsam", "afsam"):
            raise ValueError(
                f"--component/--full-gradient/--diagnostics need --optimizer fsam or afsam, not "
                f"{self.optimizer!r} (SAM is --optimizer fsam --component minibatch)"
            )
        if self.optimizer == "sgd" and (self.perturb_every != 1 or self.ascent_fraction != 1.0):
            raise ValueError(
                "--perturb-every and --ascent-fraction apply to sam, asam, fsam and afsam, not to "
                "--optimizer sgd (which never perturbs); remove them or choose a sharpness-aware optimizer"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"--warmup-epochs: {self.warmup_epochs} must be shorter than --epochs {self.epochs}"
            )
        if any(not (0 < m < 1) for m in self.milestones):
            raise ValueError(f"--milestones: {list(self.milestones)} must be fractions of training in (0, 1)")
        self._check_image_folder()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"--device: unknown value {self.device!r}; use cpu, cuda, cuda:N or auto")
        return self

    def _check_image_folder(self) -> None:
        if self.new_head and self.pretrained is None:
            raise ValueError(
                "--new-head replaces the classifier of --pretrained weights; give --pretrained PATH"
            )
        if self.dataset != IMAGE_FOLDER:
            return
        if self.data_dir is None:
            raise ValueError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/<image>)")
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(
                f"--resize-size {self.resize_size} is smaller than --image-size {self.image_size}; "
                "the evaluation crop must fit in the resized image"
            )
        if self.cutout:
            raise ValueError("--cutout is for the built-in data sets; drop it with --dataset imagefolder")
        if self.label_noise > 0 and self.noise_kind != "symmetric":
            raise ValueError(
                "--noise-kind asymmetric maps the classes of the built-in data sets; use symmetric "
                "with --dataset imagefolder"
            )


# --------------------------------------------------------------------------- strict option types
_TYPE_NAMES = {
    "str": "a string",
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "list[float]": "a list of numbers",
}


def check_option_type(name: str, value: Any, source: str = "config") -> Any:
    """Return ``value`` if it has the type of option ``name`` (ints become floats where floats are due).

    Strict: booleans are booleans (``"false"`` is refused), integers are integers (``True`` is not one),
    floats accept integers, lists are lists of numbers, strings are strings; ``None`` only where the
    option is optional. :class:`ConfigError` names the option and ``source`` otherwise."""
    spec = {f.name: str(f.type) for f in fields(TrainConfig)}.get(name)
    if spec is None:
        return value
    kind, optional = spec.removesuffix(" | None"), spec.endswith(" | None")
    if value is None and optional:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and number and isinstance(value, int):
        return value
    if kind == "float" and number:
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "list[float]" and isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
    if kind not in _TYPE_NAMES:  # a new annotation must get a rule here (tests/safety checks all fields)
        raise TypeError(f"TrainConfig.{name}: no type rule for annotation {spec!r}")
    wanted = _TYPE_NAMES[kind] + (" (or null / omitted)" if optional else "")
    raise ConfigError(f"{source}: option {name!r} must be {wanted}, not {value!r} ({type(value).__name__})")


# --------------------------------------------------------------------------- config files
def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON file into a flat dict of options.

    JSON reads a run's ``config.json`` (``fsam train --config RUN/config.json --out RUN`` starts a run
    stopped before its first checkpoint anew).
    Sections (``[data]``, ``[optimizer]``, ...) are flattened; a key given twice (in one table, in two
    sections, or as ``a-b`` and ``a_b``) is refused. A missing file, a directory, a FIFO or device, an
    empty, huge (> ``MAX_CONFIG_BYTES``) or non-UTF-8 file and a syntax error all raise
    :class:`ConfigError` (a ``ValueError``) naming the file; nothing blocks (FIFOs are never opened)."""
    path = Path(path)
    parsers = {".toml": _parse_toml, ".yaml": _parse_yaml, ".yml": _parse_yaml, ".json": _parse_json}
    if path.suffix not in parsers:
        raise ConfigError(
            f"config file {path}: unknown format {path.suffix!r}; use .toml, .yaml, .yml or .json"
        )
    data = parsers[path.suffix](path, _read_config_text(path))
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of options at the top level")
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        section = f"section [{key}]" if isinstance(value, dict) else "the top level"
        for name, item in items:
            if isinstance(item, dict):
                raise ConfigError(
                    f"config file {path}: {section} holds a table {name!r}; only options go there"
                )
            norm = str(name).replace("-", "_")
            if norm in flat:
                raise ConfigError(
                    f"config file {path}: option {norm!r} is given twice ({where[norm]} and {section})"
                )
            flat[norm], where[norm] = item, section
    return flat


def _read_config_text(path: Path) -> str:
    """The config file's text through the file layer: regular files only (a FIFO never blocks), at most
    ``MAX_CONFIG_BYTES``, UTF-8, not empty."""
    text = read_text(path, "config file", MAX_CONFIG_BYTES, ConfigError)
    if not text.strip():
        raise ConfigError(f"config file {path} is empty; give at least one option (or no --config)")
    return text


def _parse_toml(path: Path, text: str) -> Any:
    return parse_toml(text, f"config file {path}", ConfigError)


def _parse_json(path: Path, text: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"config file {path}: option {twice[0]!r} is given twice")
        return dict(items)

    return parse_json(text, f"config file {path}", ConfigError, pairs=pairs)


def _parse_yaml(path: Path, text: str) -> Any:
    return parse_yaml(text, f"config file {path}", ConfigError)
