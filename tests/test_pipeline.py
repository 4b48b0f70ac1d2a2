"""The course commands end to end, run as a person would run them (python -m attnkit ...)."""
from __future__ import annotations

import csv
import html
import shutil
from pathlib import Path

import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.authoring.release import differences, generate, problems
from harness import kit

ROOT = Path(__file__).resolve().parents[1]
NB = "q3_multihead_attention"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def course():
    """A scratch course with the Q3 notebook and a class of sample and broken submissions, autograded once."""
    c = Course(ROOT).scratch_copy(notebooks=[NB])
    out = kit(c.root, "release", check=True)
    assert "clean" in out.stdout
    from attnkit.authoring.samples import place
    place(c, "hw9")
    # Broken submissions: malformed JSON, nothing at all, an id with non-ASCII letters (no space: the id rule).
    (c.path("submitted", "broken-json", "hw9")).mkdir(parents=True)
    (c.path("submitted", "broken-json", "hw9", f"{NB}.ipynb")).write_text('{"cells": [')
    (c.path("submitted", "no-notebook", "hw9")).mkdir(parents=True)
    odd = c.path("submitted", "Zoë_Müller", "hw9")
    odd.mkdir(parents=True)
    shutil.copy2(c.path("submitted", "sample-solution", "hw9", f"{NB}.ipynb"), odd / f"{NB}.ipynb")
    c.autograde_output = kit(c.root, "autograde", "hw9", "--workers", "2")
    yield c
    shutil.rmtree(c.root, ignore_errors=True)


def test_committed_release_is_a_fresh_generation():
    """Is release/ exactly what source/ generates today (no stale student versions)?"""
    scratch = Course(ROOT).scratch_copy()
    try:
        generate(scratch, "hw9")
        assert differences(ROOT / "release" / "hw9", scratch.path("release", "hw9")) == []
        assert problems(scratch, "hw9") == []
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)


def test_release_hides_solutions_and_hidden_tests(course):
    """Does the student version keep the labelled blanks but no solution, hidden test or mark scheme?"""
    rel = nbu.read(course.path("release", "hw9", f"{NB}.ipynb"))
    text = "\n".join(c.source for c in rel.cells)
    assert "self.W_k = nn.Linear(d_model, _____)  # (a)" in text
    assert "attn_probs = torch._____(attn_scores, dim=-1)  # (e)" in text
    assert "torch.softmax(attn_scores, dim=-1)" not in text
    assert "BEGIN HIDDEN TESTS" not in text and "_ref_sdpa" not in text and "MARK SCHEME" not in text
    assert (course.path("release", "hw9", "attention_checks.py")).exists()


def test_autograde_scores_and_reports_broken_submissions(course):
    """Does one batch grade the good, score the broken as 0 with a reason, and exit non-zero?"""
    out = course.autograde_output
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not a valid notebook" in out.stdout and "broken-json" in out.stdout
    assert "not submitted" in out.stdout
    from attnkit.reports import scores
    data = scores(course, "hw9")["students"]
    auto_max = 17.0  # with the whole-layer part (2)
    assert data["sample-solution"][NB]["score"] == auto_max
    assert data["Zoë_Müller"][NB]["score"] == auto_max
    assert data["sample-untouched"][NB]["score"] == 0
    assert 0 < data["sample-partial"][NB]["score"] < auto_max
    assert data["broken-json"][NB]["score"] == 0 and not data["broken-json"][NB]["manual_pending"]
    assert data["no-notebook"][NB]["score"] == 0
    assert "[" in out.stderr and "/6" in out.stderr  # the progress bar


def test_feedback_shows_failures_but_no_hidden_tests(course):
    """Does each student's feedback name the failed parts and hide every hidden test and mark scheme line?"""
    kit(course.root, "feedback", "hw9", check=True)
    secret = nbu.hidden_lines(nbu.read(course.path("source", "hw9", f"{NB}.ipynb")))
    assert len(secret) > 50
    pages = list(course.path("feedback").rglob("*.html"))
    assert len(pages) >= 4
    for page in pages:
        text = html.unescape(page.read_text())
        leaked = [line for line in secret if line in text]
        assert not leaked, f"{page}: {leaked[:3]}"
    partial = html.unescape(course.path("feedback", "sample-partial", "hw9", f"{NB}.html").read_text())
    assert "FAILED" in partial and "q3g_split_heads" in partial and "passed" in partial


def test_export_has_a_column_per_part(course):
    """Does the CSV have one row per student and one column per graded part, plus totals?"""
    out = course.path("grades.csv")
    kit(course.root, "export", "hw9", "-o", str(out), check=True)
    rows = list(csv.DictReader(open(out)))
    assert {r["student"] for r in rows} >= {"sample-solution", "sample-untouched", "sample-partial", "Zoë_Müller"}
    cols = rows[0].keys()
    assert f"{NB}:q3e_softmax (/2)" in cols and "total" in cols and f"{NB} total" in cols
    sol = next(r for r in rows if r["student"] == "sample-solution")
    assert sol[f"{NB}:q3e_softmax (/2)"] == "2" and sol["total"] == "17" and sol["max"] == "19"


def test_validate_exit_codes(course, tmp_path):
    """Does the student self-check exit non-zero on the untouched release and 0 on a finished notebook?"""
    for name in ("release", "done"):
        (tmp_path / name).mkdir()
        shutil.copy2(course.path("release", "hw9", "attention_checks.py"), tmp_path / name)
    shutil.copy2(course.path("release", "hw9", f"{NB}.ipynb"), tmp_path / "release")
    shutil.copy2(course.path("submitted", "sample-solution", "hw9", f"{NB}.ipynb"), tmp_path / "done")
    bad = kit(course.root, "validate", str(tmp_path / "release" / f"{NB}.ipynb"))
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "BLANK" in bad.stdout
    good = kit(course.root, "validate", str(tmp_path / "done" / f"{NB}.ipynb"))
    assert good.returncode == 0, good.stdout
    assert "Success" in good.stdout


def test_regrade_single_student_is_identical(course):
    """Does autograding one student again (--student) give the same score?"""
    from attnkit.reports import scores
    before = scores(course, "hw9")["students"]["sample-partial"][NB]["cells"]
    kit(course.root, "autograde", "hw9", "--student", "sample-partial", "--workers", "1", check=True)
    after = scores(course, "hw9")["students"]["sample-partial"][NB]["cells"]
    assert before == after


def test_bare_expression_test_cell_is_refused(tmp_path):
    """Would release refuse a test cell that ends in a bare expression (nbgrader would score its value)?"""
    from attnkit.authoring.release import bare_expression_cells
    nb = nbu.read(ROOT / "source" / "hw9" / f"{NB}.ipynb")
    cell = next(c for c in nb.cells if nbu.is_test_cell(c))
    cell.source += "\n1 == 2"
    assert bare_expression_cells(nb) == [nbu.grade_id(cell)]

