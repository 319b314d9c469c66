"""Property-based fuzzer (hypothesis) over every structured-file reader and over the ``fsam`` command line.

Targets and the invariant checked on every example:

* readers (``json``, ``toml``, ``yaml``, ``config_file``, ``metrics``, ``analysis``, ``checkpoint``,
  ``torch_file``): text or bytes drawn from a grammar of near-valid and hostile documents (deep nesting,
  huge integers, YAML anchors and aliases, duplicate keys, random bytes, mutated real checkpoints). Each
  call returns a value of the documented shape or raises the reader's documented error; anything else
  (RecursionError, TypeError, MemoryError, ...) is a failure.
* ``cli``: ``fsam`` in-process (``friendly_sam.cli.main``) on argument vectors drawn from every command's
  flags with hostile values, against a copy of a finished tiny run whose files are damaged, replaced by
  FIFOs, directories, links to a sentinel outside, deep or non-object JSON. Invariants: exit 0, or exit 2
  with exactly one line on stderr; never a traceback; nothing outside the sandbox's run directories
  written (the sentinel directory is byte-identical); a refused command changes no byte of the run.

Usage: ``python benchmarks/fuzz_files.py --examples 300 --json docs/results/fuzz_files.json`` (per target;
needs real Fashion-MNIST at /usr/share/datasets/fashion-mnist for the ``cli`` target).
tests/safety/test_fuzz.py runs every target with a few examples in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from friendly_sam.cli import main as fsam_main
from friendly_sam.commands.analyze import analysis_summary
from friendly_sam.files import FileRefused, load_torch_file, parse_json, parse_toml, parse_yaml
from friendly_sam.train import run_dir as rd
from friendly_sam.train import train
from friendly_sam.train.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_atomic
from friendly_sam.train.config import ConfigError, TrainConfig, read_config_file

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--data-dir", str(FASHION), "--model", "cnn_small", "--train-subset", "64", "--test-subset", "64"]
TINY += ["--batch-size", "32", "--epochs", "1", "--threads", "1", "--quiet"]


class Failure(AssertionError):
    """An invariant that did not hold."""


# --------------------------------------------------------------------------- documents
_SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def json_texts(draw: Any) -> str:
    """Valid JSON of any shape, JSON nested thousands deep, huge integers, or near-JSON garbage."""
    kind = draw(st.sampled_from(["value", "deep", "bigint", "garbage", "cut"]))
    if kind == "value":
        return json.dumps(draw(_VALUES))
    if kind == "deep":
        n = draw(st.integers(90, 120_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return opener * n + ("1" if opener != "[" else "") + closer * draw(st.sampled_from([n, n - 1, 0]))
    if kind == "bigint":
        return '{"seed": ' + draw(st.sampled_from(["-", ""])) + "9" * draw(st.integers(18, 6000)) + "}"
    if kind == "cut":
        text = json.dumps(draw(_VALUES))
        return text[: draw(st.integers(0, len(text)))]
    return draw(st.text(alphabet=st.sampled_from(list('{}[]":,0123456789.eE-nultrfa \n\\')), max_size=200))


def _scalar_items(draw: Any) -> dict[str, Any]:
    """Up to five short keys with scalar values: the body of a flat TOML table or YAML mapping."""
    return draw(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), _SCALARS, max_size=5))


def _deep_list(draw: Any, key: str) -> str:
    """``key`` followed by a list nested 90 to 100,000 levels deep (``key`` holds the separator)."""
    n = draw(st.integers(90, 100_000))
    return key + "[" * n + "]" * n + "\n"


@st.composite
def toml_texts(draw: Any) -> str:
    kind = draw(st.sampled_from(["table", "deep", "bigint", "garbage", "dup"]))
    if kind == "table":
        items = _scalar_items(draw)
        return "".join(f"{k} = {json.dumps(v) if v is not None else '1'}\n" for k, v in items.items())
    if kind == "deep":
        return _deep_list(draw, "a = ")
    if kind == "bigint":
        return "seed = " + "7" * draw(st.integers(19, 6000)) + "\n"
    if kind == "dup":
        return "lr = 0.1\nlr = 0.2\n"
    return draw(st.text(max_size=200))


@st.composite
def yaml_texts(draw: Any) -> str:
    kind = draw(
        st.sampled_from(["map", "deep", "indent", "alias", "bomb", "bigint", "tag", "garbage", "dup"])
    )
    if kind == "map":
        return "".join(f"{k}: {json.dumps(v)}\n" for k, v in _scalar_items(draw).items())
    if kind == "deep":
        return _deep_list(draw, "a: ")
    if kind == "indent":
        return "".join("  " * i + "a:\n" for i in range(draw(st.integers(90, 3000))))
    if kind == "alias":
        return "base: &b {lr: 0.1}\nrun: *b\n"
    if kind == "bomb":
        levels = draw(st.integers(2, 9))
        lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
        return "\n".join(lines) + "\n"
    if kind == "bigint":
        return "seed: " + "7" * draw(st.integers(19, 6000)) + "\n"
    if kind == "tag":
        return draw(
            st.sampled_from(
                ["a: !!python/object/apply:os.system ['true']\n", "a: !!binary aGk=\n", "? [1]\n: 2\n"]
            )
        )
    if kind == "dup":
        return "lr: 0.1\nlr: 0.2\n"
    return draw(st.text(max_size=200))


# --------------------------------------------------------------------------- reader targets
def _expect(
    call: Callable[[], Any], errors: tuple[type[BaseException], ...], check: Callable[[Any], bool]
) -> str:
    """Run ``call``: ``"ok"`` when it returns a value passing ``check``, ``"refused"`` on a documented error;
    anything else raises :class:`Failure`."""
    try:
        value = call()
    except errors as exc:
        if "\n" in str(exc).strip():
            raise Failure(f"a multi-line message: {str(exc)[:300]!r}") from exc
        return "refused"
    except Exception as exc:
        raise Failure(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    if not check(value):
        raise Failure(f"returned a value of the wrong shape: {str(value)[:200]}")
    return "ok"


def _plain(value: Any) -> bool:
    try:
        parse_json(json.dumps(value, default=str), "re-read")  # within the limits, re-readable
    except (FileRefused, ValueError, RecursionError):
        return False
    return True


def _valid_checkpoint(path: Path) -> bytes:
    save_atomic(
        make_checkpoint(
            TrainConfig().to_dict(),
            epoch=1,
            elapsed=1.0,
            model={"w": torch.ones(3)},
            optimizer={"state": {}, "param_groups": []},
            scheduler={},
            rng={"torch": torch.get_rng_state()},
        ),
        path,
    )
    return path.read_bytes()


def _file_checks(work: Path, valid: bytes) -> dict[str, Callable[[Any], str]]:
    """The checks of the readers that take a file: write the example, read it, judge the outcome."""

    def in_file(name: str, data: bytes) -> Path:
        path = work / name
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        return path

    def metrics(data: bytes) -> str:
        run = work / "run"
        run.mkdir(exist_ok=True)
        in_file("run/metrics.jsonl", data)
        ok = lambda v: all(isinstance(m, dict) and m["epoch"] == i + 1 for i, m in enumerate(v))  # noqa: E731
        return _expect(lambda: rd.read_metrics(run), (rd.RunDirectoryError,), ok)

    def config_file(example: tuple[str, str]) -> str:
        suffix, text = example
        path = in_file(f"config{suffix}", text.encode("utf-8", "surrogatepass"))
        return _expect(
            lambda: read_config_file(path), (ConfigError,), lambda v: isinstance(v, dict) and _plain(v)
        )

    def analysis(text: str) -> str:
        path = in_file("analysis.json", text.encode("utf-8", "surrogatepass"))

        def read() -> Any:
            return analysis_summary(rd.read_json_object(path, "analysis file"))

        ok = lambda v: all(x is None or isinstance(x, float) for x in v.values())  # noqa: E731
        return _expect(read, (rd.RunDirectoryError,), ok)

    def checkpoint(mutation: tuple[int, int, bytes]) -> str:
        at, cut, insert = mutation
        data = valid[: at % len(valid)] + insert + valid[at % len(valid) + cut :]
        path = in_file("checkpoint.pt", data)
        return _expect(lambda: load_checkpoint(path), (CheckpointError,), lambda v: isinstance(v, dict))

    def torch_file(data: bytes) -> str:
        path = in_file("weights.pt", data)
        return _expect(lambda: load_torch_file(path, "weights"), (FileRefused,), lambda v: True)

    return {"metrics": metrics, "config_file": config_file, "analysis": analysis, "checkpoint": checkpoint,
            "torch_file": torch_file}  # fmt: skip


def reader_targets(work: Path) -> dict[str, tuple[Any, Callable[[Any], str]]]:
    """name -> (strategy, check of one example returning "ok" / "refused")."""
    valid = _valid_checkpoint(work / "valid.pt")
    checks = _file_checks(work, valid)
    text_bytes = lambda s: s.map(lambda t: t.encode("utf-8", "surrogatepass"))  # noqa: E731
    return {
        "json": (json_texts(), lambda t: _expect(lambda: parse_json(t, "f"), (FileRefused,), _plain)),
        "toml": (toml_texts(), lambda t: _expect(lambda: parse_toml(t, "f"), (FileRefused,), _plain)),
        "yaml": (yaml_texts(), lambda t: _expect(lambda: parse_yaml(t, "f"), (FileRefused,), _plain)),
        "config_file": (
            st.one_of(
                st.tuples(st.just(".json"), json_texts()),
                st.tuples(st.just(".toml"), toml_texts()),
                st.tuples(st.sampled_from([".yaml", ".yml"]), yaml_texts()),
            ),
            checks["config_file"],
        ),
        "metrics": (
            st.one_of(
                st.lists(json_texts(), max_size=4).map(lambda ls: ("\n".join(ls) + "\n").encode()),
                st.lists(st.integers(-2, 5), max_size=5).map(
                    lambda es: "".join(
                        json.dumps({"epoch": e, "train_loss": 1.0}) + "\n" for e in es
                    ).encode()
                ),
                text_bytes(st.text(max_size=100)),
                st.binary(max_size=100),
            ),
            checks["metrics"],
        ),
        "analysis": (json_texts(), checks["analysis"]),
        "checkpoint": (
            st.tuples(st.integers(0, 10**9), st.integers(0, 64), st.binary(max_size=8)),
            checks["checkpoint"],
        ),
        "torch_file": (
            st.one_of(
                st.binary(max_size=300),
                st.just(valid),
                st.just(valid[:100]),
                st.just(b"PK\x03\x04" + bytes(60)),
            ),
            checks["torch_file"],
        ),
    }


# --------------------------------------------------------------------------- the CLI
def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif not p.is_dir():
            out[str(p)] = "special"
    return out


class Sandbox:
    """A finished tiny run, a sentinel directory outside it, and hostile files to hand the CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.finished = root / "finished"
        if not (self.finished / rd.SUMMARY_FILE).exists():
            train(
                TrainConfig.from_dict({**_flags_to_dict(TINY), "epochs": 1}),
                self.finished,
                progress=False,
                log=lambda m: None,
            )
        self.outside = root / "outside"
        self.outside.mkdir(exist_ok=True)
        (self.outside / "precious.txt").write_text("precious\n")
        self.files = root / "files"
        self.files.mkdir(exist_ok=True)
        hostile = {
            "deep.json": '{"lr": ' + "[" * 60_000 + "]" * 60_000 + "}",
            "bomb.yaml": 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n',
            "bigseed.toml": "seed = " + "9" * 5000 + "\n",
            "list.json": "[1, 2]",
            "garbage.pt": "\x00\x01 not a checkpoint",
            "ok.toml": "lr = 0.05\n",
        }
        for name, text in hostile.items():
            (self.files / name).write_text(text)
        for name in ("fifo.toml", "fifo.pt"):
            if not (self.files / name).exists():
                os.mkfifo(self.files / name)
        (self.files / "dir.toml").mkdir(exist_ok=True)

    def paths(self) -> list[str]:
        names = ["deep.json", "bomb.yaml", "bigseed.toml", "list.json", "garbage.pt", "ok.toml", "fifo.toml"]
        names += ["fifo.pt", "dir.toml", "absent.toml"]
        return [str(self.files / n) for n in names] + [str(self.outside / "precious.txt"), "/dev/zero", ""]


def _flags_to_dict(args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    it = iter(args)
    for flag in it:
        if flag == "--quiet":
            continue
        value = next(it)
        key = flag[2:].replace("-", "_")
        out[key] = int(value) if value.isdigit() else value
    return out


_INTS = ["0", "-1", "1", "2", str(2**63), str(2**64), "9" * 5000, "1e3", "x", "", " 3"]
_FLOATS = ["0", "-0.5", "nan", "inf", "-inf", "1e308", "1e-320", "0.05", "x", "", "1" * 400]
_STRINGS = [
    "",
    "n" * 100_000,
    "../../x",
    "a\x00b",
    "auto",
    "cpu",
    "cuda:7",
    "fsam",
    "sgd",
    "cnn_small",
    "\u202e",
]
# flags that would leave the sandbox or take long: never fuzzed (download: network; tensorboard: slow import)
_SKIPPED = {
    "download",
    "tensorboard",
    "deterministic",
    "threads",
    "num_workers",
    "data_dir",
    "epochs",
    "name",
}


def _train_flags() -> list[tuple[str, list[str]]]:
    from dataclasses import fields

    out = []
    for f in fields(TrainConfig):
        if f.name in _SKIPPED:
            continue
        kind = str(f.type)
        pool = (
            _INTS if kind.startswith("int") else _FLOATS if kind.startswith(("float", "list")) else _STRINGS
        )
        out.append(("--" + f.name.replace("_", "-"), [] if kind.startswith("bool") else pool))
    return out


_RUN_FILES = [*rd.RUN_ENTRIES, rd.DATA_RECORD_FILE, "absent"]
_DAMAGE = ["delete", "truncate", "fifo", "dir", "link_out", "deep", "list", "garbage", "epochs_back"]


@st.composite
def cli_examples(draw: Any, sandbox: Sandbox) -> dict[str, Any]:
    """A damage to a copy of the finished run and one command line."""
    damage = (draw(st.sampled_from(_RUN_FILES)), draw(st.sampled_from(_DAMAGE)))
    command = draw(st.sampled_from(["resume", "compare", "analyze", "fresh", "config", "models"]))
    flags: list[str] = []
    for flag, pool in draw(st.lists(st.sampled_from(_train_flags()), max_size=2, unique_by=lambda f: f[0])):
        flags += [flag] if not pool else [flag, draw(st.sampled_from(pool + sandbox.paths()))]
    extra = {
        "metric": draw(st.sampled_from(["test_acc", "train_loss", "nope", "epoch", "n" * 5000])),
        "plot": draw(st.sampled_from([None, "p.png", "p", ".", "outside", "/dev/null/x.png"])),
        "parts": draw(st.sampled_from(["trace", "sharpness", "all", "nope", "", "trace,trace"])),
        "config": draw(st.sampled_from(sandbox.paths())),
        "twice": draw(st.booleans()),
        "count": draw(st.sampled_from(["10", "3", "0", "-1", "x", "9" * 5000, "1" * 20])),
    }
    return {"damage": damage, "command": command, "flags": flags, **extra}


def _damage(run: Path, name: str, how: str, outside: Path) -> None:
    path = run / name
    if how == "epochs_back" and name == rd.METRICS_FILE:
        lines = path.read_text().splitlines()
        path.write_text("\n".join([*lines, lines[0]]) + "\n")
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        if how == "truncate" and path.is_file():
            path.write_bytes(path.read_bytes()[: max(0, path.stat().st_size // 2)])
            return
        path.unlink()
    actions = {
        "fifo": lambda: os.mkfifo(path),
        "dir": lambda: path.mkdir(),
        "link_out": lambda: path.symlink_to(outside / "precious.txt"),
        "deep": lambda: path.write_text("[" * 60_000 + "]" * 60_000),
        "list": lambda: path.write_text("[1, 2]\n"),
        "garbage": lambda: path.write_bytes(os.urandom(64)),
    }
    if how in actions:
        actions[how]()


def _argv(ex: dict[str, Any], run: Path, sandbox: Sandbox, fresh: Path) -> list[str]:
    if ex["command"] == "resume":
        return ["train", "--resume", str(run), *ex["flags"], "--quiet"]
    if ex["command"] == "compare":
        plot = (
            None
            if ex["plot"] is None
            else str(sandbox.outside if ex["plot"] == "outside" else fresh.parent / ex["plot"])
        )
        runs = [str(run)] * (2 if ex["twice"] else 1)
        return ["compare", *runs, "--metric", ex["metric"], *(["--plot", plot] if plot else [])]
    if ex["command"] == "analyze":
        small = ["--subset", "16", "--batch-size", "16", "--trace-samples", "1", "--sharpness-steps", "1"]
        return ["analyze", str(run), "--parts", ex["parts"], *small, "--points-1d", "2", "--quiet"]
    if ex["command"] == "models":
        return ["models", "--num-classes", ex["count"], "--in-channels", ex["count"]]
    if ex["command"] == "config":
        return ["train", "--config", ex["config"], *TINY, "--out", str(fresh), *ex["flags"]]
    return ["train", *TINY, "--out", str(fresh), *ex["flags"]]


def run_cli_example(ex: dict[str, Any], sandbox: Sandbox) -> str:
    """One command line against a damaged copy of the run; the invariants, or :class:`Failure`."""
    case = Path(tempfile.mkdtemp(dir=sandbox.root, prefix="case"))
    run, fresh = case / "run", case / "fresh"
    shutil.copytree(sandbox.finished, run, symlinks=True)
    _damage(run, *ex["damage"], sandbox.outside)
    argv = _argv(ex, run, sandbox, fresh)
    before_run, before_outside = snapshot(run), snapshot(sandbox.outside)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(case)  # a run without --out goes to ./runs: inside the case
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = fsam_main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException as exc:  # a traceback: the failure the fuzzer is looking for
                raise Failure(f"{type(exc).__name__}: {str(exc)[:300]} for {_shown(argv)}") from exc
    finally:
        os.chdir(cwd)
    try:
        _check(code, err.getvalue(), argv)
        if snapshot(sandbox.outside) != before_outside:
            raise Failure(f"wrote outside the run directory: {_shown(argv)}")
        if code != 0 and snapshot(run) != before_run:
            raise Failure(f"a refused command changed the run: {_shown(argv)}")
    finally:
        shutil.rmtree(case, ignore_errors=True)
    return "ok" if code == 0 else "refused"


def _shown(argv: list[str]) -> str:
    return " ".join(a if len(a) < 80 else a[:40] + f"...({len(a)})" for a in argv)


def _check(code: int, err: str, argv: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err:
        raise Failure(f"a traceback for {_shown(argv)}: {err[-600:]}")
    if code not in (0, 2):
        raise Failure(f"exit {code} for {_shown(argv)}: {err[-300:]}")
    if code == 2 and (len(lines) != 1 or not lines[0].startswith("fsam")):
        raise Failure(f"not one line for {_shown(argv)}: {err[-600:]!r}")
    if code == 2 and len(lines[0]) > 1500:
        raise Failure(f"a message of {len(lines[0])} characters for {_shown(argv)}")


# --------------------------------------------------------------------------- running
def fuzz(name: str, strategy: Any, check: Callable[[Any], str], examples: int, seed: int) -> dict[str, Any]:
    """Run one target for ``examples`` examples; returns counts and the first failure (shrunk) if any."""
    counts = {"ok": 0, "refused": 0}
    failure: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def target(example: Any) -> None:
        counts[check(example)] += 1

    t0 = time.perf_counter()
    try:
        target()
    except Failure as exc:
        failure.append(str(exc)[:1000])
    return {"target": name, "examples": sum(counts.values()), **counts, "failure": failure[0] if failure else None,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def run_all(
    work: Path, examples: int, cli_examples_n: int, seed: int = 0, only: str | None = None
) -> list[dict[str, Any]]:
    results = []
    for name, (strategy, check) in reader_targets(work).items():
        if only in (None, name):
            results.append(fuzz(name, strategy, check, examples, seed))
    if only in (None, "cli") and cli_examples_n:
        sandbox = Sandbox(work / "sandbox")
        results.append(
            fuzz("cli", cli_examples(sandbox), lambda ex: run_cli_example(ex, sandbox), cli_examples_n, seed)
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300, help="examples per reader target")
    parser.add_argument("--cli-examples", type=int, default=200, help="examples of the cli target")
    parser.add_argument(
        "--only",
        help="one target (json, toml, yaml, config_file, metrics, analysis, checkpoint, torch_file, cli)",
    )
    parser.add_argument("--json", type=Path, help="write the counts here (e.g. docs/results/fuzz_files.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        results = run_all(Path(tmp), args.examples, args.cli_examples, only=args.only)
        total = time.perf_counter() - t0
    for r in results:
        print(f"{r['target']:>12}: {r['examples']:5d} examples ({r['ok']} ok, {r['refused']} refused), "
              f"{r['seconds']:.0f} s, failure: {r['failure'] or 'none'}")  # fmt: skip
    if args.json:
        report = {"command": "python benchmarks/fuzz_files.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "seconds": round(total), "targets": results}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(r["failure"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
