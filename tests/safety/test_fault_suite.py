"""The fault-injection suite: every bad input ends in a clear error or is survived, one test per case.

The cases live in fault_cases.py (what each one feeds to ``fsam`` and how its outcome is classified). The
in-process cases run through ``cli.main`` on copies of one finished tiny run built once per module; five
cases need real processes (kills, concurrent writers, a full disk, a directory deleted mid-run).
"""

from __future__ import annotations

from pathlib import Path

import fault_cases as fc
import pytest
from testkit import needs_fashion_mnist

pytestmark = needs_fashion_mnist

CASES = fc.cases()
REFUSED = [case for case in CASES if case.expect == "error"]
SURVIVED = [case for case in CASES if case.expect == "ok"]

# the message a user reads, spot-checked where it matters most
MESSAGES = {
    "resume: planted pickle": "holds Python objects",
    "resume: one flipped bit": "does not match its checksum",
    "train --lr 1e12 (loss explodes)": "diverged",
    "train --name ../../../../x": "cannot be a run name",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fc.make_template(tmp_path_factory.mktemp("fault_template") / "template")


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> fc.Workspace:
    return fc.Workspace(tmp_path, template)


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_refused_with_a_clear_error(case: fc.Case, ws: fc.Workspace):
    outcome = fc.run_case(case, ws)
    assert outcome.handled, outcome.detail
    assert outcome.kind == "clear error"
    if case.name in MESSAGES:
        assert MESSAGES[case.name] in outcome.extra["message"], outcome.extra["message"]


@pytest.mark.slow  # each trains or resumes a run
@pytest.mark.parametrize("case", SURVIVED, ids=[case.name for case in SURVIVED])
def test_survived_with_a_correct_result(case: fc.Case, ws: fc.Workspace):
    outcome = fc.run_case(case, ws)
    assert outcome.handled, outcome.detail
    assert outcome.kind == "survived"


@pytest.fixture(scope="module")
def writers_outcomes(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, fc.Outcome]:
    """One long run disturbed three ways (its own module-scoped run: the three tests read its outcomes)."""
    ws = fc.Workspace(tmp_path_factory.mktemp("fault_writers"), template)
    return {outcome.name: outcome for outcome in fc.writers_and_kill(ws)}


@pytest.mark.slow
@pytest.mark.xdist_group("fault_writers")
@pytest.mark.parametrize("name", [n for n, kind in fc.SUBPROCESS_CASES.items() if kind == "writers"])
def test_concurrent_writers_and_kill(name: str, writers_outcomes: dict[str, fc.Outcome]):
    outcome = writers_outcomes[name]
    assert outcome.handled, outcome.detail


@pytest.mark.slow
def test_full_disk_during_the_checkpoint_write(ws: fc.Workspace):
    outcome = fc.full_disk(ws)
    assert outcome.handled, outcome.detail


@pytest.mark.slow
def test_run_directory_deleted_mid_run(ws: fc.Workspace):
    outcome = fc.deleted_mid_run(ws)
    assert outcome.handled, outcome.detail
