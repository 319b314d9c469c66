"""The generated matrix: every entry point (matrix_entries.ENTRIES) x every feature combination
(matrix_setup.COLUMNS). Each cell equals the reference loop to 1e-6 (parameters and BatchNorm buffers) or
raises the clear error docs/integrations.md lists; a cell whose entry point has no such option is not
generated (the table shows why)."""

from __future__ import annotations

import dataclasses

import pytest
from matrix_ddp import MODES, run_ddp, simulate
from matrix_entries import Entry, all_entries, missing
from matrix_setup import COLUMNS, Features, assert_same_state, reference

CELLS = [
    pytest.param(entry, column, id=f"{entry.name} | {column}")
    for entry in all_entries()
    for column, features in COLUMNS.items()
    if missing(entry, features) is None
]


@pytest.mark.parametrize(("entry", "column"), CELLS)
def test_cell_equals_the_reference_or_refuses_clearly(entry: Entry, column: str) -> None:
    features = COLUMNS[column]
    refusal = entry.refuses(features)
    if refusal is not None:
        kind, match = refusal
        with pytest.raises(kind, match=match):
            entry.run(features)
        return
    if features.ddp:
        assert entry.ddp is not None
        assert_same_state(run_ddp(entry.ddp), simulate(MODES[entry.ddp]))
        return
    trained = entry.run(features)
    if entry.expected is not None:
        expected = entry.expected(features)
    else:
        expected = reference(
            dataclasses.replace(features, resume=False),
            fp16_autocast=entry.fp16_autocast,
            steps=entry.reference_steps(features),
        )
    assert_same_state(trained, expected)


@pytest.mark.parametrize("column", [c for c, f in COLUMNS.items() if not (f.resume or f.ddp)])
def test_every_feature_changes_the_reference(column: str) -> None:
    """A cell's equality means something only if its feature moves the trajectory: each column's reference
    differs from the plain run's (and replay from fresh randomness) by far more than the tolerance."""
    features = COLUMNS[column]
    if features.random:  # fresh against replayed draws
        base = dataclasses.replace(features, random="replay" if features.random == "fresh" else "fresh")
    else:
        base = Features()
    if features == base:
        return
    a, b = reference(features).state_dict(), reference(base).state_dict()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) > 1e-5  # 10x the tolerance
