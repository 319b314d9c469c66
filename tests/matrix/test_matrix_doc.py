"""The matrix table in docs/integrations.md is the one the matrix generates (it cannot drift)."""

from __future__ import annotations

from matrix_table import BEGIN, DOC, END, rewrite


def test_the_docs_matrix_table_is_generated_from_the_matrix() -> None:
    doc = DOC.read_text()
    assert BEGIN in doc and END in doc, "docs/integrations.md lost its matrix markers"
    assert rewrite(doc) == doc, "the matrix changed: run `python tests/matrix/matrix_table.py` and commit the doc"
