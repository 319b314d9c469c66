"""The ``fsam`` command: train, compare, demo, models, analyze."""

from __future__ import annotations

import argparse
import linecache
import os
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from .commands.analyze import AnalyzeOptions, analyze_run
from .commands.compare import compare_runs
from .commands.demo import SUMMARY_NAME, DemoOptions, run_demo
from .commands.demo_report import demo_sentence, demo_table
from .data import DatasetFormatError, DatasetNotFoundError
from .distributed import ProcessGroupError, process_group_failure
from .files import FileRefused, MemoryNeedError, WriteError, protect_console, shorten
from .files.environment import shorten_words
from .models import describe_models
from .models.pretrained import PretrainedWeightsError
from .reporting import INSTALL_HINT
from .train import CheckpointError, RunDirectoryError, load_run_config, train
from .train.config import ConfigError, TrainConfig, differences, read_config_file
from .train.lock import check_run_name
from .train.options import build, declared, default_of, flag_name
from .train.run_dir import CHECKPOINT_FILE


# --------------------------------------------------------------------------- flags from declarations
def add_option_flags(parser: Any, cls: Any, *, skip: tuple[str, ...] = (), defaults: bool = False) -> None:
    """One flag per declared option of the dataclass ``cls`` (:mod:`friendly_sam.train.options`), with its
    help, accepted values and default. Without ``defaults`` an absent flag is absent from the namespace
    (only given flags override a config file). Old spellings (``cls.RENAMED``) stop with the new name."""
    for name, (f, spec) in declared(cls).items():
        if name in skip:
            continue
        default = default_of(f)
        accepted = spec.describe()
        shown = "" if default is None else f" (default: {default})"  # None: the help says what happens
        text = f"{spec.help}{f'; {accepted}' if accepted else ''}{shown}".replace("%", "%%")
        kind = str(f.type).removesuffix(" | None")
        kwargs: dict[str, Any] = {"default": default if defaults else argparse.SUPPRESS, "help": text}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "list[float]":
            kwargs.update(type=float, nargs=spec.nargs or "+")
        else:
            kwargs.update(type={"int": _int_option, "float": float}.get(kind, str), metavar=name.upper())
        parser.add_argument(flag_name(name), **kwargs)
    for old, (new, values) in getattr(cls, "RENAMED", {}).items():
        parser.add_argument(
            flag_name(old), action=_Renamed, new=new, values_map=values, help=argparse.SUPPRESS
        )


class _Renamed(argparse.Action):
    """An old flag: stops with the new spelling (``--optimizer sgd`` -> ``--method base``)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, values_map: dict[str, str], **kw: Any):
        super().__init__(option_strings, dest, nargs="?", **kw)
        self.new, self.values_map = new, values_map

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        value = values if values is not None else ""
        value = self.values_map.get(value, value)
        parser.error(f"{option_string} was renamed: use {flag_name(self.new)} {value}".rstrip())


def _int_option(text: str) -> int:
    """An integer flag's value: at most 19 digits (64 bits), said so instead of Python's digit-limit error."""
    digits = text.strip().lstrip("+-")
    if len(digits) > 19 and digits.isdigit():
        raise argparse.ArgumentTypeError(f"an integer of {len(digits)} digits; give one below 2**63 (19 digits)")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {shorten(text, 60)!r}") from None


def _bounded_int(low: int, high: int) -> Any:
    """An argparse type: an integer from ``low`` to ``high``."""

    def convert(text: str) -> int:
        value = _int_option(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {low} to {high}")
        return value

    return convert


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options set on the command line: the config file's (checked, naming the file),
    overridden by the flags."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_config_file(args.config))
        TrainConfig.from_dict(values, source=args.config)
    names = {f.name for f in fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(_given_options(args), source="flags").validate()


def _resume_config(args: argparse.Namespace, run_dir: Path) -> TrainConfig:
    """The run's own configuration; options given with --resume apply only where that is safe.

    An option that defines the run (lr, rho, model, ...; the identity options) that differs from the
    run's is refused; the others (epochs, device, threads, ...) are applied, and the trainer reports and
    records each change."""
    if args.out and Path(args.out).resolve() != run_dir.resolve():
        raise ValueError(f"--out {args.out} and --resume {run_dir} name different run directories; give one")
    cfg = load_run_config(run_dir)
    given = _given_options(args)
    if not given:
        return cfg
    wanted = TrainConfig.from_dict({**cfg.to_dict(), **given}, source="flags").validate()
    refused = [
        f"{flag_name(k)} {new!r} (the run has {old!r})"
        for k, (old, new) in differences(cfg.to_dict(), wanted.to_dict()).items()
    ]
    if refused:
        raise ValueError(
            f"--resume continues {run_dir} with the settings it started with; these cannot change: "
            f"{'; '.join(refused)}. Start a new run (--out) for other settings"
        )
    return wanted


def _new_run_dir(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    if cfg.name:
        check_run_name(cfg.name)
    if args.out:
        return Path(args.out)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.label}-{cfg.dataset}-{cfg.model}-s{cfg.seed}"
    return Path("runs") / check_run_name(name)


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports (and writes files)
    if args.resume:
        run_dir = args.run_dir = Path(args.resume)
        cfg = _resume_config(args, run_dir)
        train(cfg, run_dir, resume=True, progress=not args.quiet)
    else:
        cfg = _config_from_args(args)
        run_dir = args.run_dir = _new_run_dir(args, cfg)
        if is_main:
            print(f"run directory: {run_dir}")
        train(cfg, run_dir, progress=not args.quiet)
    if is_main:
        print(f"done: {run_dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    table, plot = compare_runs([Path(p) for p in args.runs], plot_path=args.plot, metric=args.metric)
    print(table)
    if plot:
        print(f"plot: {plot}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = describe_models(num_classes=args.num_classes, in_channels=args.in_channels)
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'params':>11}  kind   description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['params']:>11,}  {r['kind']:<5}  {r['description']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """SGD, SAM and F-SAM on real Fashion-MNIST, everything equal but the optimizer; then the comparison."""
    opts = build(DemoOptions, _declared_values(args, DemoOptions), source="flags")
    out = Path(opts.out)
    summary = run_demo(out, opts.setting, opts.overrides(), workers=opts.workers, progress=not opts.quiet)
    print()
    print(demo_table(summary))
    print()
    print(demo_sentence(summary))
    print(f"summary: {out / SUMMARY_NAME}")
    if summary["plot"]:
        print(f"plot: {summary['plot']}")
    else:
        print(f"plot: skipped (the plot needs matplotlib: {INSTALL_HINT})")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    analyze_run(Path(args.run), _declared_values(args, AnalyzeOptions))
    return 0


def _declared_values(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The options of ``cls`` given on the command line (absent flags leave the declared default)."""
    return {k: v for k, v in vars(args).items() if k in declared(cls)}


ANALYZE_DESCRIPTION = (
    "Load RUN_DIR's checkpoint and config, rebuild the model and its training data, and on a fixed "
    "subset of training images (no augmentation, the run's labels) compute the top Hessian eigenvalue "
    "(power iteration), the Hessian trace (Hutchinson), the worst-case loss increase within rho (the "
    "run's rho) and 1-D/2-D filter-normalised loss landscapes. Writes analysis.json and "
    "landscape_1d.png / landscape_2d.png into RUN_DIR. Cost: one HVP ~ 3 forward+backward passes over "
    "the subset; eigenvalue <= --eig-iters HVPs, trace --trace-samples HVPs, sharpness "
    "--sharpness-steps F+B, landscapes --points-1d + --points-2d**2 forward passes; every part records "
    "its own time in analysis.json."
)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fsam",
        description="Friendly-SAM experiments: train SGD / SAM / F-SAM on real data, compare runs, analyse them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train one run (config file and/or flags)",
        description="Train one run. A config file (TOML, YAML or JSON) sets options; flags override it.",
    )
    p.add_argument("--config", help="TOML, YAML or JSON config file (see configs/)")
    p.add_argument(
        "--out", help="run directory to create (default: runs/<time>-<label>-<dataset>-<model>-s<seed>)"
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar, one line per epoch (for logs)")
    add_option_flags(p.add_argument_group("training options (override the config file)"), TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "compare",
        help="table (mean and spread over seeds) and plot across runs",
        description="Group runs by label (optimizer), print mean/std over seeds, plot curves.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--plot", help="write the accuracy-vs-epoch plot to this PNG (default: none)")
    p.add_argument("--metric", default="test_acc", help="metric to tabulate and plot (default: test_acc)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list the networks with parameter counts")
    p.add_argument("--num-classes", type=_bounded_int(1, 10**6), default=10, help="1 to 10**6 (default: 10)")
    p.add_argument("--in-channels", type=_bounded_int(1, 4096), default=3, help="1 to 4096 (default: 3)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "demo",
        help="SGD vs SAM vs F-SAM on real Fashion-MNIST with 40%% wrong labels (minutes on a CPU)",
        description="Train SGD, SAM and F-SAM on real Fashion-MNIST, everything equal but the optimizer, each "
        "with the rho the generalization suite chose on clean validation data, and compare them: test "
        "accuracy, how many of the wrong training labels each one fitted, training time. Default setting "
        "'noisy': 40% of the training labels replaced by wrong ones, trained long enough for SGD to "
        "memorise them; 'clean': correct labels. Rerunning reuses finished runs and resumes interrupted "
        "ones of the same settings, and refuses a directory holding runs of other settings.",
    )
    add_option_flags(p, DemoOptions)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "analyze",
        help="sharpness of a trained run: Hessian eigenvalue/trace, worst-case loss, loss landscape",
        description=ANALYZE_DESCRIPTION,
    )
    p.add_argument("run", metavar="RUN_DIR")
    add_option_flags(p, AnalyzeOptions)
    p.set_defaults(func=cmd_analyze)
    return parser


# The error policy (docs/files.md, "Errors"): an exception is the user's to fix, printed as one line
# (`fsam CMD: error: ...`, exit 2), when
#   1. its class says so: USER_ERRORS (a bad option, config, data set, checkpoint, run directory, a file
#      refused by the file layer, a memory need over the limit, a diverging run, a missing optional
#      package, a failed write: disk full, permissions, ...), or
#   2. it is an OSError carrying an errno: the operating system refused something the user named (a path
#      too long, a permission, a directory deleted), or
#   3. it is a ValueError raised by friendly-sam's own checks: the innermost frame of its traceback is a
#      `raise` statement in friendly_sam's source (a message we wrote, `raise ValueError("--x ...")`), or
#   4. it is a failed collective under torchrun (another process ended or stopped responding).
# Anything else keeps its traceback (exit 1): a ValueError or TypeError raised inside Python, torch or
# another library and passing through our code, any other exception class: a bug of friendly-sam.
USER_ERRORS = (
    ConfigError,
    DatasetNotFoundError,
    DatasetFormatError,
    CheckpointError,
    RunDirectoryError,  # RunInUseError included
    FileRefused,
    WriteError,
    MemoryNeedError,
    PretrainedWeightsError,
    FloatingPointError,  # a diverging run
    ModuleNotFoundError,  # an optional package (matplotlib, tensorboard, ...)
    ProcessGroupError,
)
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _raised_by_us(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a ``raise`` statement of friendly-sam's source (the innermost frame of
    its traceback): a check with a message written for the user, not ``int("x")`` gone wrong."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    source = tb.tb_frame.f_code.co_filename
    ours = str(Path(source).resolve()).startswith(_PACKAGE_DIR)
    return ours and linecache.getline(source, tb.tb_lineno).lstrip().startswith("raise ")


def user_error(exc: BaseException) -> BaseException | None:
    """The exception to report as one line (rules 1-4 above), or None: a bug, keep the traceback."""
    if isinstance(exc, USER_ERRORS):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    if isinstance(exc, ValueError) and _raised_by_us(exc):
        return exc
    return process_group_failure(exc)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``fsam train: error: ...``) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {shorten_words(message)} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"  # e.g. "No space left on device: runs/x/metrics.jsonl"
    return shorten_words(text)  # a 100,000-character name is not echoed whole


def _continue_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """How to go on after Ctrl-C, for the command that was interrupted."""
    again = shorten("fsam " + shlex.join(argv), 300)
    if args.command == "train":
        run_dir = getattr(args, "run_dir", None)
        if run_dir is None:
            return f"nothing was written; run `{again}` again"
        if (Path(run_dir) / CHECKPOINT_FILE).is_file():
            return f"continue the run with `fsam train --resume {shlex.quote(str(run_dir))}`"
        return (
            f"{run_dir} has no checkpoint yet (no epoch finished): start it anew with `{again}`"
            + ("" if args.out or args.resume else f" or `fsam train --out {shlex.quote(str(run_dir))} ...`")
        )
    if args.command == "analyze":
        return f"analysis.json is unchanged (parts in progress are not saved); run `{again}` again"
    if args.command == "demo":
        return f"run `{again}` again: finished runs are reused, interrupted ones resumed"
    return f"nothing was written; run `{again}` again"


def main(argv: list[str] | None = None) -> int:
    protect_console()  # `fsam train ... | head -1`: output is dropped when the reader goes away, the run goes on
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nfsam {args.command}: interrupted; {_continue_hint(args, argv)}", file=sys.stderr)
        return 130
    except Exception as exc:
        reported = user_error(exc)
        if reported is None:
            raise  # a bug of friendly-sam: the traceback is what a bug report needs
        message = _one_line(reported)
        if getattr(args, "run_dir", None) is not None:
            message = message.replace("RUN_DIR", shlex.quote(str(args.run_dir)))
        print(f"fsam {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
