"""``kit new``: an assignment scaffolded in a scratch course goes through release, check, autograde of its own
fixture bank, feedback, export and the Gradescope zip, with no change to the kit. Slow (about a minute: one check
and one batch of three submissions)."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import shutil
import zipfile
from pathlib import Path

import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.fixtures.grade import expected_scores, submission_for
from attnkit.grader.hidden import GRADER_LINE
from attnkit.reports import scores
from harness import ROOT, kit

KIT = ROOT / "attnkit"


def digest(folder: Path) -> str:
    """One digest of every file under ``folder`` (names and contents; caches left out)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def bank_of(course: Course, a: str):
    spec = importlib.util.spec_from_file_location(f"scaffold_bank_{a}", course.path("banks", a, "q1_mean.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_new_assignment_goes_through_every_command_with_no_change_to_the_kit(tmp_path):
    """Does `kit new hw1` in a course of its own give an assignment that releases clean, passes the self-check,
    grades its fixture bank exactly as the bank says, and yields feedback, an export and a Gradescope zip that
    carries its grader helper, while nothing under attnkit/ changes?"""
    before = digest(KIT)
    (tmp_path / "source").mkdir()
    shutil.copy2(ROOT / "course_config.py", tmp_path / "course_config.py")
    course = Course(tmp_path)

    made = kit(tmp_path, "new", "hw1", check=True).stdout
    for rel in ("source/hw1/q1_mean.ipynb", "source/hw1/hw1_checks.py", "graders/hw1.py", "banks/hw1/q1_mean.py"):
        assert f"wrote {rel}" in made and course.path(rel).is_file()
    assert course.grader_file("hw1") == course.path("graders", "hw1.py")
    listed = {}
    exec(course.path("banks", "__init__.py").read_text(), listed)
    assert listed["BANKS"] == ("hw1.q1_mean",)
    again = kit(tmp_path, "new", "hw1")
    assert again.returncode == 1 and "exists already" in again.stderr

    kit(tmp_path, "release", "hw1", check=True)
    released = sorted(p.name for p in course.path("release", "hw1").iterdir())
    assert released == ["hw1_checks.py", "q1_mean.ipynb"]
    checked = kit(tmp_path, "check", "hw1", check=True).stdout
    assert "autograded 3/3" in checked and "autograded 0/3" in checked and "check passed" in checked

    bank = bank_of(course, "hw1")
    for fx in bank.FIXTURES:
        dest = course.path("submitted", fx.student, "hw1")
        dest.mkdir(parents=True)
        nbu.write(submission_for(fx, course), dest / "q1_mean.ipynb")
    kit(tmp_path, "autograde", "hw1", "--workers", "2", "--quiet", check=True)
    got = scores(course, "hw1")["students"]
    for fx in bank.FIXTURES:
        cells = got[fx.student]["q1_mean"]["cells"]
        assert {gid: float(cells[gid][0] or 0) for gid in expected_scores(fx, course)} == expected_scores(fx, course)
    assert expected_scores(bank.FIXTURES[2], course) == {"q1b_visible": 1.0, "q1b_hidden": 0.0}

    kit(tmp_path, "feedback", "hw1", check=True)
    page = course.path("feedback", "hw1-wrong-len", "hw1", "q1_mean.html").read_text()
    assert "has the wrong value" in page and GRADER_LINE not in page and "check_mean(" not in page

    kit(tmp_path, "export", "hw1", "-o", str(tmp_path / "grades.csv"), check=True)
    table = list(csv.reader((tmp_path / "grades.csv").open()))
    rows = {r[0]: dict(zip(table[0], r)) for r in table if r and r[0].startswith("hw1-")}
    assert set(rows) == {fx.student for fx in bank.FIXTURES}
    wrong = rows["hw1-wrong-len"]
    assert float(wrong["q1_mean:q1b_visible (/1)"]) == 1 and float(wrong["q1_mean:q1b_hidden (/2)"]) == 0

    kit(tmp_path, "gradescope", "hw1", check=True)
    names = zipfile.ZipFile(course.path("dist", "hw1-gradescope.zip")).namelist()
    assert {"graders/hw1.py", "source/hw1/q1_mean.ipynb", "source/hw1/hw1_checks.py"} <= set(names)

    assert digest(KIT) == before
