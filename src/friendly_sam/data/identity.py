"""Data identity: a fingerprint of what a model trains on, and what changed between two fingerprints.

Every checkpoint keeps the fingerprint of its data; ``fsam train --resume`` compares it with the data
found now and refuses a change (unless ``--accept-data-change``) with a message naming it. Two kinds:

- a built-in set: its name, the size of each split and a hash of the content (images and labels);
- an image folder: the class names in label order and, per split, every image file (its path under the
  split folder, ``<class>/<name>``) with its size in bytes. Renamed, added or removed classes and added,
  removed or changed (resized) files are told apart. The folder's location is not part of it: a copy of
  the same images elsewhere is the same data.

A fingerprint is a plain dict of strings, ints and lists (what a checkpoint may hold); a folder's file
list is one string per split (``path\\tsize`` lines) so that a large folder stays cheap to store and hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "DataChangedError",
    "builtin_fingerprint",
    "check_same_data",
    "data_changes",
    "folder_fingerprint",
]

_SHOWN = 3  # example file names per kind of change


class DataChangedError(ValueError):
    """The data differs from the data a checkpoint was trained on; the message says what changed."""


def builtin_fingerprint(name: str, splits: Mapping[str, Any]) -> dict[str, Any]:
    """Name, split sizes and a BLAKE2 hash of every split's images and labels (in-memory ``splits``)."""
    h = hashlib.blake2b(digest_size=16)
    for split in sorted(splits):
        for t in (splits[split].images, splits[split].labels):
            h.update(f"{split}{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return {
        "kind": "builtin",
        "name": name,
        "sizes": {split: len(splits[split]) for split in sorted(splits)},
        "content": h.hexdigest(),
    }


def folder_fingerprint(classes: Sequence[str], files: Mapping[str, Sequence[tuple[str, int]]]) -> dict[str, Any]:
    """Class names in label order and, per split, ``(path under the split folder, size)`` of every file."""
    return {
        "kind": "imagefolder",
        "classes": list(classes),
        "files": {split: "".join(f"{p}\t{n}\n" for p, n in entries) for split, entries in sorted(files.items())},
    }


def _entries(listing: str) -> dict[str, int]:
    pairs = (line.rsplit("\t", 1) for line in listing.splitlines() if line)
    return {path: int(size) for path, size in pairs}


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _class_of(path: str) -> str:
    return path.split("/", 1)[0]


def _class_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """Messages on renamed / added / removed classes or a new label order, and the classes they cover."""
    before, after = list(old["classes"]), list(new["classes"])
    gone, came = [c for c in before if c not in after], [c for c in after if c not in before]

    def content(fp: Mapping[str, Any], cls: str) -> list[tuple[str, str, int]]:
        return sorted(
            (split, p.split("/", 1)[-1], n)
            for split, listing in fp["files"].items()
            for p, n in _entries(listing).items()
            if _class_of(p) == cls
        )

    messages: list[str] = []
    for c in list(gone):
        twin = next((d for d in came if content(old, c) == content(new, d)), None)
        if twin is not None:
            messages.append(f"class {c!r} renamed to {twin!r}")
            gone.remove(c)
            came.remove(twin)
    if gone:
        messages.append(f"class(es) removed: {', '.join(map(repr, gone))}")
    if came:
        messages.append(f"class(es) added: {', '.join(map(repr, came))}")
    if not messages and before != after:
        messages.append(f"class order changed: {before} -> {after}")
    if messages:
        messages.append(f"the labels of the checkpoint's model follow {before}, the folder now gives {after}")
    return messages, set(before) ^ set(after)


def _file_changes(old: Mapping[str, Any], new: Mapping[str, Any], skip: set[str]) -> list[str]:
    messages = []
    for split in sorted(set(old["files"]) | set(new["files"])):
        if split not in new["files"] or split not in old["files"]:
            messages.append(f"split {split}/ {'removed' if split not in new['files'] else 'added'}")
            continue
        a, b = _entries(old["files"][split]), _entries(new["files"][split])
        a = {p: n for p, n in a.items() if _class_of(p) not in skip}
        b = {p: n for p, n in b.items() if _class_of(p) not in skip}
        parts = []
        for what, names in (
            ("added", [p for p in b if p not in a]),
            ("removed", [p for p in a if p not in b]),
            ("changed (other size)", [p for p in a if p in b and a[p] != b[p]]),
        ):
            if names:
                parts.append(f"{len(names)} file(s) {what}: {_examples(names)}")
        if parts:
            messages.append(f"{split}/: " + "; ".join(parts))
    return messages


def data_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one message per change; empty when the data is the same."""
    if saved.get("kind") != now.get("kind"):
        return [f"the data set changed from {saved.get('name', saved.get('kind'))} to {now.get('name', now.get('kind'))}"]
    if now["kind"] == "builtin":
        return [
            f"{key}: {saved.get(key)!r} -> {now.get(key)!r}"
            for key in ("name", "sizes", "content")
            if saved.get(key) != now.get(key)
        ]
    class_messages, moved = _class_changes(saved, now)
    return class_messages + _file_changes(saved, now, moved)


_RESUME_HINT = "Resume on the original data, or pass --accept-data-change to continue on this data deliberately."


def check_same_data(
    saved: Mapping[str, Any] | None, now: Mapping[str, Any], *, accept: bool, where: str, hint: str = _RESUME_HINT
) -> list[str]:
    """Refuse (:class:`DataChangedError`) data that differs from the ``saved`` fingerprint of ``where`` (a
    checkpoint), unless ``accept``; returns the changes accepted. ``saved`` ``None`` (a checkpoint written
    before fingerprints existed): nothing to compare, nothing refused."""
    if saved is None:
        return []
    changes = data_changes(saved, now)
    if changes and not accept:
        raise DataChangedError(f"the data differs from the data {where} was trained on: {'; '.join(changes)}. {hint}")
    return changes
