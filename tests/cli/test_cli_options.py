"""Generated from the option declarations: every option of ``fsam train``, ``fsam analyze`` and ``fsam demo``
has its flag and help, its range or choices enforced with a clear message (from the flags and, for training
options, from a config file), and every training option's resume class is honoured on resume."""

from __future__ import annotations

import pytest

from friendly_sam.cli import build_parser, main
from friendly_sam.commands.analyze import AnalyzeOptions
from friendly_sam.commands.demo import DemoOptions
from friendly_sam.train import TrainConfig
from friendly_sam.train.checkpoint import CheckpointError, check_resume_config
from friendly_sam.train.config import ConfigError, differences
from friendly_sam.train.options import EPOCHS, IDENTITY, SAFE, declared, default_of, flag_name

COMMANDS = {"train": TrainConfig, "analyze": AnalyzeOptions, "demo": DemoOptions}
ALL = [(cmd, name) for cmd, cls in COMMANDS.items() for name in declared(cls)]


def _bad_values(cls, name):
    """Values the declaration refuses, as typed on the command line."""
    f, spec = declared(cls)[name]
    number = str if not str(f.type).startswith("int") else (lambda v: str(int(v)))
    out = ["no-such-value"] if spec.choices is not None or spec.pattern is not None else []
    if spec.low is not None:
        out.append(number(spec.low if spec.open_low else spec.low - 1))
    if spec.high is not None:
        out.append(number(spec.high + 1 if spec.closed_high else spec.high))
    return out


def _limited():
    return [(cmd, name, bad) for cmd, name in ALL for bad in _bad_values(COMMANDS[cmd], name)]


def _subparser(command):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[command]


@pytest.mark.parametrize(("command", "name"), ALL)
def test_every_option_has_its_flag_and_help(command, name):
    _, spec = declared(COMMANDS[command])[name]
    actions = {s: a for a in _subparser(command)._actions for s in a.option_strings}
    assert flag_name(name) in actions, f"fsam {command} has no {flag_name(name)}"
    assert spec.help and spec.help in actions[flag_name(name)].help.replace("%%", "%")
    assert spec.describe() in actions[flag_name(name)].help.replace("%%", "%")


def test_every_option_with_limits_is_tested():
    """The generator covers every option that has choices, a pattern or a range."""
    limited = {(c, n) for c, n, _ in _limited()}
    for cmd, cls in COMMANDS.items():
        for name, (_, spec) in declared(cls).items():
            if spec.choices is not None or spec.pattern is not None or spec.low is not None:
                assert (cmd, name) in limited
    assert len(limited) > 40


@pytest.mark.parametrize(("command", "name", "bad"), _limited())
def test_the_cli_refuses_out_of_range_values(tmp_path, capsys, command, name, bad):
    where = {"train": ["--out", str(tmp_path / "run")], "analyze": [str(tmp_path / "no-run")], "demo": []}
    where["demo"] = [] if name == "out" else ["--out", str(tmp_path / "run")]
    assert main([command, *where[command], flag_name(name), bad]) == 2
    err = capsys.readouterr().err
    assert flag_name(name) in err and ("unknown value" in err or "it must be" in err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "no-run").exists()


@pytest.mark.parametrize(("name", "bad"), [(n, b) for c, n, b in _limited() if c == "train"])
def test_a_config_file_is_checked_the_same_way(tmp_path, name, bad):
    value = bad if bad[0].isdigit() or bad[0] == "-" else f'"{bad}"'
    path = tmp_path / "c.toml"
    path.write_text(f"{name} = {value}\n")
    with pytest.raises(ConfigError, match=rf"{path}: .*{name}") as info:
        TrainConfig.from_file(path)
    assert "unknown value" in str(info.value) or "it must be" in str(info.value)


def _other_value(name):
    f, spec = declared(TrainConfig)[name]
    default, kind = default_of(f), str(f.type)
    if spec.choices is not None:
        return next(v for v in spec.allowed() if v != default)
    if kind.startswith("bool"):
        return not default
    if kind.startswith("list"):
        return [0.3]
    if spec.low is not None:
        low = spec.low if default is None else default
        if spec.high is not None:
            return (spec.low + spec.high) / 2 if default != (spec.low + spec.high) / 2 else spec.low + 0.1
        return int(low) + 2 if kind.startswith("int") else low * 2 + 1
    return {"device": "cpu"}.get(name, "x")


@pytest.mark.parametrize("name", list(declared(TrainConfig)))
def test_every_option_honours_its_resume_class(name):
    saved = TrainConfig(epochs=4).to_dict()
    now = {**saved, name: _other_value(name)}
    resume = declared(TrainConfig)[name][1].resume
    assert resume in (IDENTITY, SAFE, EPOCHS)
    assert (name in differences(saved, now)) == (resume == IDENTITY)
    if resume == IDENTITY:
        with pytest.raises(CheckpointError, match=rf"different run setting \({name}: checkpoint"):
            check_resume_config(saved, now, done_epochs=2)
    else:
        assert name in check_resume_config(saved, now, done_epochs=2).changes


@pytest.mark.parametrize(("old", "new"), [(o, n) for o, (n, _) in TrainConfig.RENAMED.items()])
def test_old_spellings_name_the_new_one(tmp_path, capsys, old, new):
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "run"), flag_name(old), "1"])
    err = capsys.readouterr().err
    assert f"{flag_name(old)} was renamed: use {flag_name(new)}" in err
    path = tmp_path / "c.toml"
    path.write_text(f"{old} = 1\n")
    with pytest.raises(ConfigError, match=rf"option '{old}' was renamed: use '{new}'"):
        TrainConfig.from_file(path)
