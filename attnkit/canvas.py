"""Grades out to the LMS: the CSV that Canvas's gradebook import accepts.

Canvas finds each student by ``ID`` (its own user id), else ``SIS User ID``, else
``SIS Login ID``. Students collected from a Canvas download carry their Canvas user id
(nbgrader's ``lms_user_id``); students collected from Gradescope carry their SID (the
nbgrader student id, Gradescope's copy of the SIS id) and email.

The assignment column is ``<assignment>`` or, with ``canvas_id``, ``<assignment> (<id>)``:
Canvas reads the number in parentheses as the id of an existing Canvas assignment, so the
number is written only when given. The ``Points Possible`` row carries the maximum.
"""
from __future__ import annotations

import csv
from pathlib import Path

from attnkit.course import Course
from attnkit.reports import scores

HEADER = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]


def _fmt(x: float) -> str:
    return f"{x:g}"


def export_canvas(course: Course, assignment: str, path: Path, canvas_id: str | None = None) -> Path:
    data = scores(course, assignment)
    with course.gradebook() as gb:
        max_total = sum(nb.max_score for nb in gb.find_assignment(assignment).notebooks)
        people = {s.id: s for s in gb.students}
        rows = []
        for sid in sorted(data["students"]):
            s = people.get(sid)
            name = ", ".join(x for x in (getattr(s, "last_name", None), getattr(s, "first_name", None)) if x) or sid
            lms_id = (getattr(s, "lms_user_id", None) or "") if s else ""
            total = sum(d["score"] for d in data["students"][sid].values())
            email = (getattr(s, "email", None) or "") if s else ""
            # the nbgrader id is the SIS id unless it is the Canvas id or the email (Gradescope, no SID)
            sis_id = "" if sid in (lms_id, email) else sid
            rows.append([name, lms_id, sis_id, email, "", _fmt(total)])
    column = f"{assignment} ({canvas_id})" if canvas_id else assignment
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER + [column])
        w.writerow(["    Points Possible", "", "", "", "", _fmt(max_total)])
        w.writerows(rows)
    return path
