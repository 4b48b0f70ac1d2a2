"""pytest glue for the fixture banks (banks/, graded by attnkit.fixtures): grade a bank once per session, in the
background, then one parametrised test per fixture."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import early
from attnkit.course import Course
from attnkit.fixtures.grade import (Graded, assert_fixture, cleanup, expected_scores,  # noqa: F401
                                    grade_fixtures, read_graded, submission_for)

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


def bank(ref: str, notebooks, cell_timeout: str = "20", workers: int = 2):
    """A module-scoped pytest fixture: the Graded of the fixtures ``ref`` names ("module:LIST"), graded once, in
    one batch, by a separate process (tests/bank_job.py) that the session starts early in the "banks" lane.

    A short per-cell timeout keeps infinite-loop fixtures quick (worker processes inherit it). The Graded also
    has ``seconds`` (the batch's wall time) and ``peaks`` (each grading process's peak memory, MB, after each
    student)."""
    name = f"bank {ref}"

    def grade_bank():
        tmp = Path(early.scratch("bank"))
        env = {**os.environ, "ATTNKIT_CELL_TIMEOUT": cell_timeout, "ATTNKIT_PEAK_LOG": str(tmp / "peaks.log")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("bank_job.py")), ref, str(workers),
                               *notebooks], capture_output=True, text=True, env=env, cwd=str(tmp), timeout=3000)
        seconds = time.perf_counter() - t0
        assert proc.returncode == 0, f"grading the bank {ref} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        root = proc.stdout.strip().splitlines()[-1]
        early.on_finish(lambda: shutil.rmtree(root, ignore_errors=True))
        return root, seconds, tmp / "peaks.log"

    early.job(grade_bank, name=name, lane="banks")

    @pytest.fixture(scope="module")
    def graded():
        root, seconds, log = early.result(name)
        g = read_graded(Course(root), _fixtures(ref))
        g.seconds = seconds
        g.peaks = {s: int(kb) // 1024 for s, kb in (line.split() for line in
                                                      (log.read_text().splitlines() if log.exists() else [])
                                                      if line.strip())}
        yield g
        cleanup(g)

    graded.early_job = name  # conftest.py starts it when a selected test uses this fixture
    return graded


def _fixtures(ref: str) -> list:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


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
