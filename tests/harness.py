"""pytest glue for the fixture banks (banks/, graded by attnkit.fixtures): grade a bank once per module, then
one parametrised test per fixture."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnkit.fixtures.grade import (Graded, assert_fixture, cleanup, expected_scores,  # noqa: F401
                                    grade_fixtures, submission_for)

ROOT = Path(__file__).resolve().parents[1]   # the course this checkout holds (course_config.py, source/, banks/)
ASSIGNMENT = "hw9"


def kit(course_root, *args, check=False, env=None, timeout=900, cwd=None):
    """Run a kit command as a person would (python -m attnkit --root ...); ``env`` adds variables.
    With ``check``, a non-zero exit fails the test with the command's output."""
    proc = subprocess.run([sys.executable, "-m", "attnkit", "--root", str(course_root), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def bank(fixtures, notebooks, cell_timeout: str = "20"):
    """A module-scoped pytest fixture that grades a fixture bank once, in one batch.

    A short per-cell timeout keeps infinite-loop fixtures quick (worker processes inherit it).
    """
    @pytest.fixture(scope="module")
    def graded():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ATTNKIT_CELL_TIMEOUT", cell_timeout)
            g = grade_fixtures(fixtures, notebooks, root=ROOT)
        yield g
        cleanup(g)

    return graded


def bank_test(fixtures):
    """The parametrised test that every fixture of a bank is graded and scores exactly as expected."""
    @pytest.mark.parametrize("fixture", fixtures, ids=[f.student for f in fixtures])
    def test_fixture_scores_exactly(graded, fixture):
        statuses = [n.status for n in graded.results[fixture.student].notebooks if n.notebook == fixture.notebook]
        assert statuses == ["graded"], f"{fixture.student}: {graded.results[fixture.student]}"
        assert_fixture(graded, fixture)

    return test_fixture_scores_exactly


def small_assignment(gb):
    """Gradebook assignment ``hw``: notebook q1_first with two autograded tests (t_a 2 and t_b 3 points)
    and a written answer (essay, 2 points): the report and export tests' course."""
    gb.add_assignment("hw")
    gb.add_notebook("q1_first", "hw")
    for name, points, manual in [("t_a", 2, False), ("t_b", 3, False), ("essay", 2, True)]:
        gb.update_or_create_grade_cell(name, "q1_first", "hw", max_score=points,
                                       cell_type="markdown" if manual else "code")
        gb.update_or_create_source_cell(name, "q1_first", "hw", cell_type="code", locked=not manual,
                                        source="", checksum=None)
        if manual:
            gb.update_or_create_solution_cell(name, "q1_first", "hw")
