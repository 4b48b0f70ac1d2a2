"""Score table, CSV export and the report store, built from a small gradebook made here (fast tier)."""
from __future__ import annotations

import csv

import pytest

import warnings

from attnkit.course import Course
from attnkit.reports import export, table
from attnkit.results import NotebookResult, Status, StudentResult, load_report, save_report

CONFIG = 'c = get_config()\nc.CourseDirectory.course_id = "test-course"\n'


@pytest.fixture
def course(tmp_path):
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own autoflush notices
    (tmp_path / "course_config.py").write_text(CONFIG)
    c = Course(tmp_path)
    with c.gradebook() as gb:
        gb.add_assignment("hw")
        gb.add_notebook("q1_first", "hw")
        for i, (name, points, manual) in enumerate([("t_a", 2, False), ("t_b", 3, False), ("essay", 2, True)]):
            gb.update_or_create_grade_cell(name, "q1_first", "hw", max_score=points,
                                           cell_type="markdown" if manual else "code")
            gb.update_or_create_source_cell(name, "q1_first", "hw", cell_type="code", locked=not manual,
                                            source="", checksum=None)
            if manual:
                gb.update_or_create_solution_cell(name, "q1_first", "hw")
        for sid, scores in (("alice", {"t_a": 2, "t_b": 3}), ("bob", {"t_a": 0, "t_b": 3})):
            gb.update_or_create_student(sid)
            gb.add_submission("hw", sid)
            for gid, score in scores.items():
                grade = gb.find_grade(gid, "q1_first", "hw", sid)
                grade.auto_score, grade.needs_manual_grade = score, False
            essay = gb.find_grade("essay", "q1_first", "hw", sid)
            essay.needs_manual_grade = sid == "bob"   # alice's essay is graded by hand, bob's is pending
            essay.manual_score = 1.5 if sid == "alice" else None
            gb.db.commit()
    return c


def test_table_shows_scores_pending_manual_grades_and_problems(course):
    """Does the table give each student's notebook score, mark pending hand grading, and list problems?"""
    save_report(course.root, "hw", [StudentResult("bob", "hw", [NotebookResult("q1_first", Status.FAILED,
                                                                                 "could not be graded: boom")])])
    text = table(course, "hw")
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:3]}
    assert rows["alice"] == ["6.5/7", "6.5/7"] and rows["bob"] == ["3/7*", "3/7"]
    assert "bob / q1_first: failed: could not be graded: boom" in text


def test_export_has_a_column_per_part_and_totals(course, tmp_path):
    out = export(course, "hw", tmp_path / "grades.csv")
    rows = {r["student"]: r for r in csv.DictReader(open(out))}
    assert rows["alice"]["q1_first:t_b (/3)"] == "3" and rows["bob"]["q1_first:t_a (/2)"] == "0"
    assert rows["alice"]["total"] == "6.5" and rows["alice"]["max"] == "7"
    assert rows["bob"]["manual grading pending"] == "yes" and rows["alice"]["manual grading pending"] == "no"


def test_report_store_merges_students_and_keeps_types(course):
    """Does a later batch replace only its own students' entries, and read back as typed results?"""
    save_report(course.root, "hw", [StudentResult("alice", "hw", [NotebookResult("q1_first", Status.GRADED)]),
                                    StudentResult("bob", "hw", [NotebookResult("q1_first", Status.MALFORMED, "bad")])])
    save_report(course.root, "hw", [StudentResult("bob", "hw", [NotebookResult("q1_first", Status.GRADED)])])
    report = load_report(course.root, "hw")
    assert sorted(report) == ["alice", "bob"]
    assert report["bob"].notebooks[0].status is Status.GRADED and report["bob"].ok
    assert Status.MISSING.ok and not Status.FAILED.ok and Status.GRADED == "graded"
