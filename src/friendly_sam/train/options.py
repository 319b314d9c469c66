"""Options declared once: each field of an options dataclass says its type, default, range or choices, help
and resume class in one :func:`option` declaration.

Everything else is derived from these declarations: the ``fsam`` flags (``cli.py``), the checks of a config
file and of flags (:func:`build`: unknown, renamed, mistyped and out-of-range options), the validation of an
object built in Python (:func:`check_fields`) and, for :class:`~friendly_sam.train.config.TrainConfig`, the
resume rules (which options define a run; :func:`differences`). Ranges use the one checker of
:mod:`friendly_sam.optim.validation` (``[low, high)`` unless ``open_low`` / ``closed_high`` say otherwise).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..optim.validation import check_number, describe_range

__all__ = [
    "EPOCHS",
    "IDENTITY",
    "SAFE",
    "ConfigError",
    "OptionSpec",
    "build",
    "check_fields",
    "check_type",
    "declared",
    "flag_name",
    "option",
]

# Resume classes: what a change of the option on `fsam train --resume` means.
IDENTITY = "identity"  # the training trajectory changes: resuming with another value is refused
SAFE = "safe"  # where the data is, hardware, speed, bookkeeping: the change is applied and recorded
EPOCHS = "epochs"  # may change, never below the epochs done (the schedule then spans the new length)
RESUME_CLASSES = (IDENTITY, SAFE, EPOCHS)


class ConfigError(ValueError):
    """A configuration file or option that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts, besides its type (the field's annotation)."""

    help: str
    resume: str | None = None  # one of RESUME_CLASSES (TrainConfig), None for command options
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    closed_high: bool = False
    pattern: str | None = None  # a regular expression the whole string must match
    also: Callable[[Any], bool] | None = None  # accepts values outside ``choices`` (torchvision:<name>)
    nargs: str | None = None

    def allowed(self) -> list[str]:
        choices = self.choices() if callable(self.choices) else self.choices
        return list(choices or ())

    def describe(self) -> str:
        """The accepted values in words (for the help text)."""
        if self.choices is not None:
            return "one of: " + ", ".join(self.allowed())
        if self.low is not None:
            return describe_range(self.low, self.high, closed_high=self.closed_high, open_low=self.open_low)
        return ""


def parse_range(text: str) -> dict[str, Any]:
    """``"[0, 1)"``, ``"(0, 1]"``, ``">= 1"`` or ``"> 0"`` as :class:`OptionSpec` keywords."""
    def number(v: str) -> float:  # "1" stays an integer (ints' messages), "1.0" a float
        return float(v) if any(c in v for c in ".e") else int(v)

    if text.startswith(">"):
        return {"low": number(text.lstrip(">= ")), "open_low": not text.startswith(">=")}
    low, high = (number(v.strip()) for v in text[1:-1].split(","))
    return {"low": low, "high": high, "open_low": text[0] == "(", "closed_high": text[-1] == "]"}


def option(default: Any, help: str, *, range: str | None = None, **spec: Any) -> Any:
    """A dataclass field declared with its :class:`OptionSpec`: ``resume=``, ``choices=``, ``range=``
    (``"[0, 1)"``, ``"> 0"``, ...; the convention of :func:`~friendly_sam.optim.validation.check_number`)."""
    assert spec.get("resume") in (None, *RESUME_CLASSES), spec
    spec.update(parse_range(range) if range else {})
    meta = {"option": OptionSpec(help=help, **spec)}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: Any) -> dict[str, tuple[dataclasses.Field, OptionSpec]]:
    """Every option of the dataclass ``cls`` (a class or instance): name -> (field, spec)."""
    return {f.name: (f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# --------------------------------------------------------------------------- type and value checks
_TYPE_NAMES = {
    "str": "a string",
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "list[float]": "a list of numbers",
}


def check_type(f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` if it has the type of option field ``f`` (ints become floats where floats are due).

    Strict: booleans are booleans (``"false"`` is refused), integers are integers (``True`` is not one),
    floats accept integers, lists are lists of numbers, strings are strings; ``None`` only where the
    option is optional. :class:`ConfigError` naming the option (``where``) otherwise."""
    spec = str(f.type)
    kind, optional = spec.removesuffix(" | None"), spec.endswith(" | None")
    if value is None and optional:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and number and isinstance(value, int):
        if value.bit_length() > 63:  # also a seed: torch and the data order take 64-bit integers
            raise ConfigError(f"{where} must be an integer below 2**63, not one of {value.bit_length()} bits")
        return value
    if kind == "float" and number:
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "list[float]" and isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
    if kind not in _TYPE_NAMES:  # a new annotation needs a rule here (the generated option tests check all)
        raise TypeError(f"option {f.name}: no type rule for annotation {spec!r}")
    wanted = _TYPE_NAMES[kind] + (" (or null / omitted)" if optional else "")
    raise ConfigError(f"{where} must be {wanted}, not {value!r} ({type(value).__name__})")


def check_value(name: str, value: Any, spec: OptionSpec, source: str, hint: str = "") -> None:
    """Refuse a value outside the option's choices, pattern or range (``None`` means "not set")."""
    if value is None:
        return
    where = _where(name, source)
    if spec.choices is not None and value not in spec.allowed() and not (spec.also and spec.also(value)):
        raise ConfigError(
            f"{where}: unknown value {value!r}; choose one of: {', '.join(spec.allowed())}{hint}"
        )
    if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
        raise ConfigError(f"{where}: unknown value {value!r}; {spec.help}")
    if spec.low is not None:
        try:
            check_number(
                flag_name(name) if source == "flags" else name,
                value,
                low=spec.low,
                high=spec.high,
                closed_high=spec.closed_high,
                open_low=spec.open_low,
            )
        except ValueError as exc:
            text = str(exc).replace("a finite number", "an integer") if isinstance(value, int) else str(exc)
            raise ConfigError(text if source == "flags" else f"{source}: {text}") from None


def _where(name: str, source: str) -> str:
    """How a message names the option: ``--lr`` (flags), ``config.toml: option 'lr'`` (a file)."""
    return flag_name(name) if source == "flags" else f"{source}: option {name!r}"


def _typed_where(name: str, source: str) -> str:
    """How a type error names the option (a flag has its type from argparse: only Python gets here)."""
    return f"option {name!r}" if source == "flags" else f"{source}: option {name!r}"


def _renamed_hint(cls: Any, name: str, value: Any) -> str:
    for old, (new, values) in getattr(cls, "RENAMED", {}).items():
        if new == name and value in values:
            return f" ({flag_name(old)} {value} is now {flag_name(new)} {values[value]})"
    return ""


def check_fields(obj: Any, source: str = "flags") -> None:
    """Type, choices and range of every option of the dataclass instance ``obj`` (named as flags)."""
    for name, (f, spec) in declared(obj).items():
        value = check_type(f, getattr(obj, name), _typed_where(name, source))
        check_value(name, value, spec, source, _renamed_hint(obj, name, value))


def build(cls: Any, values: Mapping[str, Any], source: str) -> Any:
    """``cls(**values)`` from a flat dict (a config file's options, flags): refuses unknown keys, renamed
    keys (naming the new one), a key given twice (``a-b`` and ``a_b``), a wrong type or value.

    Errors are :class:`ConfigError` naming the key and ``source`` (``"flags"``: named as flags)."""
    options = declared(cls)
    normalized: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in normalized:
            raise ConfigError(f"{source}: option {name!r} is given twice (as {key!r} and once more)")
        normalized[name] = value
    renamed = getattr(cls, "RENAMED", {})
    for old in sorted(set(normalized) & set(renamed)):
        new, values_map = renamed[old]
        extra = "".join(f"; {old} {v!r} is now {new} {n!r}" for v, n in values_map.items())
        raise ConfigError(
            f"{_where(old, source)} was renamed: use {flag_name(new) if source == 'flags' else repr(new)}"
            f" instead{extra}"
        )
    unknown = sorted(set(normalized) - set(options))
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(options)}"
        )
    checked = {}
    for name, value in normalized.items():
        f, spec = options[name]
        checked[name] = check_type(f, value, _typed_where(name, source))
        check_value(name, checked[name], spec, source, _renamed_hint(cls, name, checked[name]))
    return cls(**checked)
