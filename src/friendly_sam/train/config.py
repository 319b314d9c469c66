"""The training configuration: one dataclass whose fields are the options, each declared once.

Each field says its type (annotation), default, range or choices, help and resume class
(:func:`~friendly_sam.train.options.option`); the ``fsam train`` flags, the config-file checks, validation and
the resume rules are derived from these declarations. A config file (TOML, YAML when PyYAML is installed,
or JSON) gives any subset of the fields; command-line flags override the file; :meth:`TrainConfig.validate`
checks everything before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..data import DATASET_NAMES, IMAGE_FOLDER, NOISE_KINDS, STORAGE_CHOICES
from ..distributed import PERTURBATION_MODES as DDP_MODES  # under torchrun; see docs/distributed.md
from ..files import parse_json, parse_toml, parse_yaml, read_text
from ..models import EXTERNAL_PREFIXES, available_models
from ..optim import BETWEEN_MODES
from ..optim.fsam import COMPONENTS
from .options import EPOCHS, IDENTITY, SAFE, ConfigError, build, check_fields, declared, default_of, option

__all__ = [
    "EPOCHS_KEY",
    "IDENTITY_KEYS",
    "SAFE_KEYS",
    "ConfigError",
    "TrainConfig",
    "differences",
    "label_of",
    "read_config_file",
    "run_setting",
    "upgrade_saved",
]

# The method: the base optimizer alone, or a sharpness-aware method around it (--base names the base).
METHODS = ("base", "sam", "asam", "fsam", "afsam")
BASE_OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
FULL_GRADIENTS = ("ema", "oracle")
DATASETS = (*DATASET_NAMES, IMAGE_FOLDER)  # the built-in data sets, and your own image folder
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse anything huge before reading


def _external_model(name: Any) -> bool:
    return isinstance(name, str) and name.partition(":")[0].strip().lower() in EXTERNAL_PREFIXES


# Resume classes (friendly_sam.train.options): IDENTITY options change the training trajectory (data and
# its order, augmentation, model, algorithm and its hyper-parameters, schedule shape, numerics, evaluation
# subsets, extra passes): resuming with another value is refused. SAFE options (where the MD5-checked data
# is, hardware and speed settings whose results are equal up to float rounding, evaluation batch size,
# bookkeeping, the label) may change; each change is reported. EPOCHS may grow or shrink, never below the
# epochs done.
_I, _S = {"resume": IDENTITY}, {"resume": SAFE}


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults: a small, quick F-SAM run on Fashion-MNIST."""

    # Old spellings (flags, config keys; saved run configs are upgraded): old -> (new, {old value: new}).
    RENAMED: ClassVar[dict[str, tuple[str, dict[str, str]]]] = {
        "optimizer": ("method", {"sgd": "base"}),
        "perturbation": ("ddp_mode", {}),
        "diagnostics": ("decomposition", {}),
        "diagnostics_every": ("decomposition_every", {}),
        "diagnostics_subset": ("decomposition_subset", {}),
    }

    # One declaration per option: type, default, help, range or choices, resume class.
    # fmt: off
    # data
    dataset: str = option("fashion-mnist", "data set (imagefolder: your own, with --data-dir)", choices=DATASETS, **_I)
    data_dir: str | None = option(None, "directory holding the data set files (else FSAM_DATA_DIR, the cache, ...)", **_S)
    download: bool = option(False, "download the data set (MD5-checked) when it is not found locally", **_S)
    train_subset: int | None = option(None, "train on a random subset of this many images", range=">= 1", **_I)
    val_size: int = option(0, "hold out this many training images as a validation split (0: none)", range=">= 0", **_I)
    test_subset: int | None = option(None, "evaluate on a fixed random subset of this many test images", range=">= 1", **_I)
    label_noise: float = option(0.0, "fraction of training labels to corrupt", range="[0.0, 1.0]", **_I)
    noise_kind: str = option("symmetric", "label noise kind", choices=NOISE_KINDS, **_I)
    crop: bool = option(True, "random crop with padding (4 pixels at 32x32, 3 at 28x28)", **_I)
    flip: bool | None = option(None, "random horizontal flip (default: on for CIFAR, off for digits/clothes)", **_I)
    cutout: bool = option(False, "Cutout 16x16 with p=0.5 (the paper's CIFAR recipe; 8x8 at 28x28)", **_I)
    # your own images: --dataset imagefolder --data-dir DIR (docs/own_data.md)
    image_size: int | None = option(None, "imagefolder: side of the images the model sees (default: the images' median "
                                    "shorter side, at most 224)", range=">= 1", **_I)
    resize_size: int | None = option(None, "imagefolder: shorter side resized to this, centre square kept (default: "
                                     "--image-size)", range=">= 1", **_I)
    skip_bad_images: bool = option(False, "imagefolder: leave unreadable image files out (listed), not stop", **_I)
    data_storage: str = option("auto", "imagefolder: auto (in memory if it fits --memory-budget), memory or "
                               "streaming", choices=STORAGE_CHOICES, **_S)
    memory_budget: float | None = option(None, "imagefolder: GiB of decoded images to hold in memory, per machine "
                                         "(default: half the free memory)", range="> 0.0", **_S)
    num_workers: int | None = option(None, "imagefolder: decoding processes (default: the CPUs, at most 8)", range=">= 0", **_S)
    accept_data_change: bool = option(False, "--resume: go on although the data differs from the checkpoint's (each "
                                      "change is logged)", **_S)
    # model
    model: str = option("resnet8", "network (`fsam models` lists them), or torchvision:<name>, timm:<name>",
                        choices=available_models, also=_external_model, **_I)
    pretrained: str | None = option(None, "initial weights: a state dict file (torch.save(model.state_dict()))", **_I)
    new_head: bool = option(False, "with --pretrained: a new classifier for this data's classes (fine-tuning)", **_I)
    # optimizer
    method: str = option("fsam", "base (the --base optimizer alone), sam, asam (adaptive SAM), fsam, afsam "
                         "(adaptive F-SAM)", choices=METHODS, **_I)
    base: str = option("sgd", "base optimizer: the step every method takes", choices=BASE_OPTIMIZERS, **_I)
    lr: float = option(0.05, "peak learning rate", range="> 0.0", **_I)
    momentum: float = option(0.9, "SGD momentum", range="[0.0, 1.0)", **_I)
    nesterov: bool = option(False, "Nesterov momentum (SGD)", **_I)
    weight_decay: float = option(5e-4, "weight decay (coupled for SGD, decoupled for AdamW)", range=">= 0.0", **_I)
    rho: float = option(0.05, "SAM / F-SAM neighbourhood radius", range=">= 0.0", **_I)
    sigma: float = option(1.0, "F-SAM: fraction of the estimated full gradient removed", range=">= 0.0", **_I)
    lmbda: float = option(0.6, "F-SAM: EMA decay of the full-gradient estimate; 0.6 is the official training "
                          "recipe (FriendlySAM's own default, 0.9, is the official class's)", range="[0.0, 1.0)", **_I)
    max_grad_norm: float | None = option(None, "clip the (perturbed) gradient to this norm before the base step",
                                         range="> 0.0", **_I)
    component: str = option("noise", "F-SAM perturbation component: noise (g - sigma*m, F-SAM), full (m only), "
                            "minibatch (g, as SAM)", choices=COMPONENTS, **_I)
    full_gradient: str = option("ema", "F-SAM full-gradient estimate m: ema, or oracle (true full-batch gradient "
                                "every N steps)", choices=FULL_GRADIENTS, **_I)
    oracle_every: int = option(10, "--full-gradient oracle: recompute it every N steps (1 full F+B pass)", range=">= 1", **_I)
    perturb_every: int = option(1, "perturb every N-th step only (1: every step); docs/efficient.md", range=">= 1", **_I)
    between: str = option("base", "--perturb-every > 1: what the unperturbed steps do: a base step on the clean "
                          "gradient (base) or LookSAM's reuse (looksam)", choices=BETWEEN_MODES, **_I)
    looksam_alpha: float = option(0.7, "--between looksam: weight of the reused sharpness component", range=">= 0.0", **_I)
    ascent_fraction: float = option(1.0, "the clean (ascent) pass uses this fraction of each batch", range="(0.0, 1.0]", **_I)
    decomposition: bool = option(False, "the decomposition study: log cos(g, m), ||g - sigma m||/||sigma m|| and "
                                 "the EMA-vs-full-gradient cosine per epoch", **_I)
    decomposition_every: int = option(50, "--decomposition: EMA-vs-full-gradient cosine every N steps", range=">= 1", **_I)
    decomposition_subset: int = option(2048, "--decomposition: training images for that full gradient", range=">= 1", **_I)
    # schedule
    epochs: int = option(5, "number of epochs", range=">= 1", resume=EPOCHS)
    batch_size: int = option(128, "training batch size", range=">= 1", **_I)
    schedule: str = option("cosine", "learning-rate schedule: cosine (per iteration, to 0), step, constant",
                           choices=SCHEDULES, **_I)
    milestones: list[float] = option((0.5, 0.75), "step schedule: fractions of training where lr drops", nargs="+", **_I)
    gamma: float = option(0.1, "step schedule: factor at each milestone", range="(0.0, 1.0]", **_I)
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs", range=">= 0.0", **_I)
    # speed and reproducibility
    seed: int = option(0, "seed of everything (initialisation, data order, augmentation, label noise)", range=">= 0", **_I)
    bf16: bool = option(False, "bfloat16 autocast for forward/backward (fast on recent CPUs and GPUs)", **_I)
    channels_last: bool = option(False, "channels_last memory format (faster convolutions on CPU)", **_S)
    device: str = option("auto", "use cpu, cuda, cuda:N or auto", pattern=r"auto|cpu|cuda(:\d+)?", **_S)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", range=">= 1", **_S)
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (GPU runs become reproducible)", **_S)
    eval_batch_size: int = option(256, "batch size for evaluation", range=">= 1", **_S)
    # several processes (torchrun; docs/distributed.md)
    ddp_mode: str = option("per-replica", "under torchrun: per-replica (each replica perturbs with its local "
                           "gradient and keeps its own F-SAM EMA) or synchronized (all-reduced first gradient, as one "
                           "process over the global batch)", choices=DDP_MODES, **_I)
    sync_bn: bool = option(False, "under torchrun: SyncBatchNorm (batch statistics over all replicas; CUDA)", **_I)
    dist_timeout: float = option(600.0, "under torchrun: seconds a process waits for the others in one collective "
                                 "before the run ends with an error (a process stopped, hung or lost); raise it when "
                                 "one rank's data preparation or checkpoint write takes longer", range="> 0", **_S)
    # run bookkeeping
    checkpoint_every: int = option(1, "write a checkpoint every N epochs (the last epoch always)", range=">= 1", **_S)
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)", **_S)
    name: str | None = option(None, "a label for comparisons (default: the method, or the base optimizer alone)", **_S)
    # fmt: on

    @property
    def label(self) -> str:
        return label_of(self.to_dict())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from a flat dict (a file's options, flags): unknown, renamed, mistyped and out-of-range
        options are refused. ``-`` in keys reads as ``_``; a key given both ways is refused. Errors are
        :class:`ConfigError` (a ``ValueError``) naming the key and ``source`` (``"flags"``: as flags)."""
        return build(cls, values, source)

    @classmethod
    def from_saved(cls, values: Mapping[str, Any], source: str) -> TrainConfig:
        """A run's own saved configuration (``config.json``, a checkpoint's), old spellings upgraded."""
        return cls.from_dict(upgrade_saved(values), source)

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
        check_fields(self)  # Python callers and replace() bypass from_dict's checks
        uses_fsam = self.component != "noise" or self.full_gradient == "oracle" or self.decomposition
        if uses_fsam and self.method not in ("fsam", "afsam"):
            raise ValueError(
                f"--component/--full-gradient/--decomposition need --method fsam or afsam, not "
                f"{self.method!r} (SAM is --method fsam --component minibatch)"
            )
        if self.method == "base" and (self.perturb_every != 1 or self.ascent_fraction != 1.0):
            raise ValueError(
                "--perturb-every and --ascent-fraction apply to sam, asam, fsam and afsam, not to "
                "--method base (which never perturbs); remove them or choose a sharpness-aware method"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"--warmup-epochs: {self.warmup_epochs} must be shorter than --epochs {self.epochs}"
            )
        if any(not (0 < m < 1) for m in self.milestones):
            raise ValueError(f"--milestones: {list(self.milestones)} must be fractions of training in (0, 1)")
        self._check_image_folder()
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
        if self.resize_size is not None and self.image_size is not None and self.resize_size < self.image_size:
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


_DEFAULTS = {name: default_of(f) for name, (f, _) in declared(TrainConfig).items()}


def upgrade_saved(values: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration saved by an older version, in today's spellings (``optimizer: sgd`` ->
    ``method: base``, ``perturbation`` -> ``ddp_mode``, ...). Today's configurations pass unchanged."""
    out = dict(values)
    for old, (new, renamed_values) in TrainConfig.RENAMED.items():
        if old in out and new not in out:
            value = out.pop(old)
            out[new] = renamed_values.get(value, value) if isinstance(value, str) else value
    return out


def label_of(values: Mapping[str, Any]) -> str:
    """A run's label: its ``name``, else what trained it: the method (``fsam``; ``fsam-adamw`` on an AdamW
    base), or the base optimizer alone (``sgd``, ``adamw``)."""
    values = upgrade_saved(values)
    if values.get("name"):
        return str(values["name"])
    method, base = values.get("method", _DEFAULTS["method"]), values.get("base", _DEFAULTS["base"])
    if method == "base":
        return str(base)
    return str(method) if base == _DEFAULTS["base"] else f"{method}-{base}"


# --------------------------------------------------------------------------- the one "same run?" comparison
def keys_of(resume: str) -> tuple[str, ...]:
    """The options of one resume class (IDENTITY, SAFE or EPOCHS), in declaration order."""
    return tuple(name for name, (_, spec) in declared(TrainConfig).items() if spec.resume == resume)


IDENTITY_KEYS, SAFE_KEYS = keys_of(IDENTITY), keys_of(SAFE)
(EPOCHS_KEY,) = keys_of(EPOCHS)


def run_setting(values: Mapping[str, Any], keys: Iterable[str] = IDENTITY_KEYS) -> dict[str, Any]:
    """The values of ``keys`` in a (saved) configuration: old spellings upgraded, an absent key (a config
    of an older version) counted as its default, tuples as lists."""
    values = upgrade_saved(values)

    def value(key: str) -> Any:
        v = values.get(key, _DEFAULTS.get(key))
        return list(v) if isinstance(v, tuple) else v

    return {key: value(key) for key in keys}


def differences(
    a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str] = IDENTITY_KEYS
) -> dict[str, tuple[Any, Any]]:
    """The one "same run?" comparison: each of ``keys`` (default: the options that define a run) whose
    value differs between configurations ``a`` and ``b`` -> (a's value, b's value)."""
    keys = list(keys)
    left, right = run_setting(a, keys), run_setting(b, keys)
    return {k: (left[k], right[k]) for k in keys if left[k] != right[k]}


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
