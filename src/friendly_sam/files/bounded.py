"""Bounded readers of the structured files a user or a run hands us: JSON, JSON lines, TOML, YAML, torch.

Every reader enforces :data:`LIMITS`: the file's size (read through :mod:`.safe`: regular files only,
never blocking), the nesting depth of what it holds, integers of at most 64 bits, and for YAML no anchors
or aliases (an alias bomb of a few hundred bytes expands to gigabytes) and a bounded number of nodes.
A refusal is one ``error(message)`` naming the file and the limit; ``error`` is the caller's exception
class (``ConfigError``, ``CheckpointError``, ...), :class:`~.safe.FileRefused` by default. The checks
walk the parsed value iteratively: a hostile file cannot exhaust Python's stack.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .environment import MemoryNeedError, check_memory, shorten
from .safe import ErrorType, FileRefused, open_regular, read_text

__all__ = [
    "LIMITS",
    "Limits",
    "check_structure",
    "load_torch_file",
    "parse_json",
    "parse_toml",
    "parse_yaml",
    "read_json_file",
    "read_jsonl_file",
]


@dataclass(frozen=True)
class Limits:
    """What a structured file may hold. Generous for every file friendly-sam writes (a config is a flat
    table, metrics a few levels, a checkpoint's optimizer state about five)."""

    config_bytes: int = 1 << 20  # a TOML / YAML / JSON config
    json_bytes: int = 256 << 20  # config.json, metrics.jsonl, analysis.json, classes.json, ...
    torch_bytes: int = 1 << 40  # checkpoints and weights: bounded by the memory check instead
    depth: int = 100  # nesting of lists / tables
    int_bits: int = 64  # integers: |x| < 2**64 (seeds included)
    yaml_events: int = 100_000  # YAML parser events (~ nodes)


LIMITS = Limits()


def _int_refusal(source: str, bits: int, limits: Limits) -> str:
    return f"{source} holds an integer of {bits} bits; integers are limited to {limits.int_bits} bits (|x| < 2**64)"


def check_structure(value: Any, source: str, error: ErrorType = FileRefused, limits: Limits = LIMITS) -> None:
    """Refuse a value nested deeper than ``limits.depth`` or holding an integer over ``limits.int_bits``
    bits (tensors are leaves). Iterative: any depth is checked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth >= limits.depth:
                raise error(f"{source} is nested more than {limits.depth} levels deep (the limit)")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > limits.int_bits:
            raise error(_int_refusal(source, item.bit_length(), limits))


def _deep(source: str, limits: Limits) -> str:
    return f"{source} is nested more than {limits.depth} levels deep (the limit)"


def parse_json(
    text: str,
    source: str,
    error: ErrorType = FileRefused,
    limits: Limits = LIMITS,
    pairs: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """``json.loads(text)`` within ``limits`` (``pairs``: an ``object_pairs_hook``)."""

    def bounded_int(digits: str) -> int:
        if len(digits.lstrip("-")) > 20:
            raise error(
                f"{source} holds an integer of {len(digits.lstrip('-'))} digits; integers are limited to 64 bits"
            )
        return int(digits)

    try:
        value = json.loads(text, parse_int=bounded_int, object_pairs_hook=pairs)
    except RecursionError:
        raise error(_deep(source, limits)) from None
    except json.JSONDecodeError as exc:
        raise error(f"{source} is not valid JSON ({exc})") from None
    check_structure(value, source, error, limits)
    return value


def parse_toml(text: str, source: str, error: ErrorType = FileRefused, limits: Limits = LIMITS) -> Any:
    """``tomllib.loads(text)`` within ``limits`` (a key repeated in one table is a syntax error)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise error(_deep(source, limits)) from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source} is not valid TOML: {exc}") from None
    except ValueError as exc:  # an integer over Python's digit limit
        raise error(f"{source}: {shorten(str(exc))}") from None
    check_structure(value, source, error, limits)
    return value


def _yaml_prescan(yaml: Any, text: str, source: str, error: ErrorType, limits: Limits) -> None:
    """Walk the parser's events (iterative, nothing built): refuse anchors, aliases, deep nesting and
    too many nodes before anything is constructed."""
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader)):
        if count > limits.yaml_events:
            raise error(f"{source} holds more than {limits.yaml_events} YAML nodes (the limit)")
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent) or anchor is not None:
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise error(
                f"{source} line {line} uses a YAML anchor or alias ({shorten(str(anchor), 40)}); they are not "
                "accepted (a few bytes of aliases can expand to gigabytes): write the values out"
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > limits.depth:
                raise error(_deep(source, limits))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def parse_yaml(text: str, source: str, error: ErrorType = FileRefused, limits: Limits = LIMITS) -> Any:
    """A safe YAML load of ``text`` within ``limits``: plain data only, no anchors or aliases, and a key
    repeated in one mapping refused (PyYAML would keep the last silently)."""
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"reading {source} needs PyYAML: pip install pyyaml (or use TOML)") from exc

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key repeated in one mapping."""

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise error(f"{source}: option {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        _yaml_prescan(yaml, text, source, error, limits)
        value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML: {shorten(' '.join(str(exc).split()), 400)}") from None
    except RecursionError:
        raise error(_deep(source, limits)) from None
    except (TypeError, ValueError) as exc:  # an unhashable (list) key; an integer over the digit limit
        if isinstance(exc, FileRefused) or (isinstance(error, type) and isinstance(exc, error)):
            raise
        raise error(f"{source}: unusable YAML ({shorten(str(exc))})") from None
    check_structure(value, source, error, limits)
    return value


def read_json_file(
    path: str | Path, what: str, error: ErrorType = FileRefused, limits: Limits = LIMITS
) -> Any:
    """The JSON value in the regular file ``path`` (bounded; see :func:`parse_json`)."""
    text = read_text(path, what, limits.json_bytes, error)
    return parse_json(text, f"{what} {shorten(str(path))}", error, limits)


def read_jsonl_file(
    path: str | Path, what: str, error: ErrorType = FileRefused, limits: Limits = LIMITS
) -> tuple[list[tuple[int, Any]], bool]:
    """The lines of a JSON-lines file as ``(line number, value or None if not JSON)``, blank lines left
    out, and whether the file ends with a newline (a torn last line is the caller's to judge). Depth and
    integer limits apply per line (a refusal names the line)."""
    text = read_text(path, what, limits.json_bytes, error)
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = parse_json(line, f"{what} {shorten(str(path))} line {number}", FileRefused, limits)
        except FileRefused as exc:
            if "not valid JSON" not in str(exc):
                raise error(str(exc)) from None
            value = None
        out.append((number, value))
    return out, text.endswith("\n")


def load_torch_file(
    path: str | Path, what: str, error: ErrorType = FileRefused, limits: Limits = LIMITS
) -> Any:
    """``torch.load(path, weights_only=True)`` of a regular file, on the CPU; never runs code.

    A file holding Python objects other than plain data (a planted ``os.system``) is refused saying so
    ("holds Python objects ... nothing was run"); a damaged one as corrupt; deep nesting as nested."""
    fd, size = open_regular(path, what, error, limits.torch_bytes)
    name = shorten(str(path))
    try:  # the tensors need about the file's size in memory: refused with the numbers, not a MemoryError
        check_memory(size, f"loading {what} {name}", "free memory (or raise the memory limit) and try again")
    except MemoryNeedError:
        os.close(fd)
        raise
    try:
        with os.fdopen(fd, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's warnings would only precede our message
            value = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused something
        text = " ".join(str(exc).split())
        detail = text.split("WeightsUnpickler error:", 1)[-1]
        lower = text.lower()
        if "unsupported global" in lower or "unsupported class" in lower:
            start = lower.find("unsupported")
            detail = text[start:].split(". ", 1)[0].split(" Check the", 1)[0]
            raise error(
                f"{what} {name} holds Python objects, not plain data ({shorten(detail, 160)}); nothing in it was run "
                "(read with weights_only=True): refused, it may be malicious"
            ) from None
        detail = detail.split(" Check the documentation", 1)[0].strip()
        raise error(
            f"{what} {name} is corrupt or unreadable (it does not load with weights_only=True: {shorten(detail)})"
        ) from None
    except RecursionError:
        raise error(_deep(f"{what} {name}", limits)) from None
    except Exception as exc:  # truncated zip, garbage, ...: the unpickler may raise anything
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise error(
            f"{what} {name} is corrupt or unreadable (it does not load with weights_only=True: "
            f"{type(exc).__name__}: {shorten(first)})"
        ) from None
    check_structure(value, f"{what} {name}", error, limits)
    return value
