"""Config files and options: strict types, no duplicate or unknown keys, clear errors for bad files."""

from __future__ import annotations

import os
import signal

import pytest
from testkit import fsam

from friendly_sam.train import TrainConfig
from friendly_sam.train.config import MAX_CONFIG_BYTES, ConfigError, read_config_file
from friendly_sam.train.options import check_type, declared


def _toml(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('cutout = "false"', "option 'cutout' must be true or false, not 'false'"),
        ('bf16 = "no"', "option 'bf16' must be true or false, not 'no'"),
        ('milestones = "abc"', "option 'milestones' must be a list of numbers, not 'abc'"),
        ('milestones = [0.5, "x"]', "option 'milestones' must be a list of numbers"),
        ("data_dir = 5", r"option 'data_dir' must be a string \(or null / omitted\), not 5"),
        ("epochs = true", "option 'epochs' must be an integer, not True"),
        ("epochs = 2.0", "option 'epochs' must be an integer, not 2.0"),
        ('lr = "0.1"', "option 'lr' must be a number, not '0.1'"),
        ("model = 8", "option 'model' must be a string"),
        ("train_subset = 1.5", "option 'train_subset' must be an integer"),
    ],
)
def test_wrong_types_name_the_key_and_the_file(tmp_path, line, message):
    path = _toml(tmp_path, line + "\n")
    with pytest.raises(ConfigError, match=rf"{path}: {message}"):
        TrainConfig.from_file(path)


def test_ints_are_accepted_for_floats_and_validate_rechecks_types(tmp_path):
    cfg = TrainConfig.from_file(_toml(tmp_path, "lr = 1\nmilestones = [0.5, 0.75]\ncutout = true\n"))
    assert (
        cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.milestones == [0.5, 0.75] and cfg.cutout is True
    )
    with pytest.raises(ValueError, match="option 'cutout' must be true or false"):
        TrainConfig(cutout="false").validate()  # Python callers are checked too
    with pytest.raises(ValueError, match="option 'flip' must be true or false"):
        TrainConfig().replace(flip="yes").validate()


def test_every_field_has_a_type_rule():
    defaults = TrainConfig()
    for name, (f, _) in declared(TrainConfig).items():  # a new annotation without a rule raises TypeError
        check_type(f, getattr(defaults, name), name)
    with pytest.raises(ConfigError, match="'rho' must be a number"):
        check_type(declared(TrainConfig)["rho"][0], None, "option 'rho'")  # None only where optional


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr = 0.1\nlr = 0.2\n", "not valid TOML"),  # TOML itself refuses a key twice in one table
        (
            "[optimizer]\nlr = 0.1\n[schedule]\nlr = 0.2\n",
            r"option 'lr' is given twice \(section \[optimizer\] and section \[schedule\]\)",
        ),
        (
            "lr = 0.1\n[optimizer]\nlr = 0.2\n",
            r"option 'lr' is given twice \(the top level and section \[optimizer\]\)",
        ),
        ("train-subset = 10\ntrain_subset = 20\n", "option 'train_subset' is given twice"),
        ("[a]\n[a.b]\nlr = 1\n", "holds a table 'b'"),
        ("learning_rate = 0.1\n", "unknown option"),
        ("lr = \n", "not valid TOML"),
    ],
)
def test_duplicate_unknown_and_malformed_toml(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig.from_file(path)
    assert str(path) in str(info.value)


def test_yaml_duplicates_and_syntax(tmp_path):
    pytest.importorskip("yaml")
    dup = _toml(tmp_path, "lr: 0.1\nrho: 0.2\nlr: 0.3\n", "c.yaml")
    with pytest.raises(ConfigError, match=rf"{dup}: option 'lr' is given twice \(line 3\)"):
        read_config_file(dup)
    bad = _toml(tmp_path, "lr: [0.1\n", "bad.yml")
    with pytest.raises(ConfigError, match=f"{bad} is not valid YAML"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="option 'cutout' must be true or false, not 'off'"):
        TrainConfig.from_file(_toml(tmp_path, "cutout: 'off'\n", "q.yaml"))


def test_a_run_config_json_reads_back_and_refuses_duplicates(tmp_path):
    cfg = TrainConfig(lr=0.1, milestones=[0.3], name="x")
    path = _toml(tmp_path, cfg.to_json(), "config.json")
    assert TrainConfig.from_file(path) == cfg
    dup = _toml(tmp_path, '{"lr": 0.1, "lr": 0.2}', "dup.json")
    with pytest.raises(ConfigError, match=f"{dup}: option 'lr' is given twice"):
        read_config_file(dup)
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_config_file(_toml(tmp_path, '{"lr": ', "bad.json"))


def _no_hang(seconds: int = 5):
    def boom(*_):
        raise TimeoutError("read_config_file blocked")

    signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)


def test_bad_files_are_clear_errors_and_never_block(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    null = tmp_path / "null.toml"
    null.symlink_to("/dev/null")
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "empty.toml").write_text("  \n")
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with open(tmp_path / "huge.toml", "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    cases = {
        "fifo.toml": "is not a regular file",
        "null.toml": "is not a regular file",
        "dir.toml": "is a directory",
        "missing.toml": "does not exist",
        "empty.toml": "is empty",
        "latin1.toml": r"is not UTF-8 text \(byte 11",
        "huge.toml": f"is {MAX_CONFIG_BYTES + 1} bytes",
        "c.ini": "unknown format '.ini'",
    }
    _no_hang()
    try:
        for name, message in cases.items():
            with pytest.raises(ConfigError, match=message) as info:
                read_config_file(tmp_path / name)
            assert str(tmp_path / name) in str(info.value)
            assert isinstance(info.value, ValueError)
    finally:
        signal.alarm(0)


@pytest.mark.slow
def test_the_cli_reports_a_bad_config_without_traceback(tmp_path):
    path = _toml(tmp_path, 'cutout = "false"\n')
    result = fsam("train", "--config", str(path), "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2
    assert f"{path}: option 'cutout' must be true or false, not 'false'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    missing = fsam("train", "--config", str(tmp_path / "nope.toml"), timeout=120)
    assert missing.returncode == 2 and "nope.toml does not exist" in missing.stderr
