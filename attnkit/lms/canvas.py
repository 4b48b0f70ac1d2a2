"""Grades out to the LMS: the CSV that Canvas's gradebook import accepts.

Canvas finds each student by ``ID`` (its own user id), else ``SIS User ID``, else
``SIS Login ID``. Students collected from a Canvas download carry their Canvas user id
(nbgrader's ``lms_user_id``); students collected from Gradescope carry their SID (the
nbgrader student id, Gradescope's copy of the SIS id) and email. An SID or email the id rule
changed (attnkit/ids.py) is kept in ``lms_user_id`` as Gradescope wrote it, and exported so.

The assignment column is ``<assignment>`` or, with ``canvas_id``, ``<assignment> (<id>)``:
Canvas reads the number in parentheses as the id of an existing Canvas assignment, so the
number is written only when given. The ``Points Possible`` row carries the maximum.

Written answers are graded by hand, later than the autograder. Two exports, so that no grade
in Canvas silently counts an answer nobody has graded yet as 0:

* the default: every point (autograded and written); a student with a written answer still to
  grade gets an empty cell, which Canvas imports as "not graded" (and leaves any grade there as it
  was); those students are returned (the CLI lists them);
* ``autograded_only``: the autograded points only, for every student, against the autograded
  maximum, in a column of its own (``<assignment> autograded``).

Every text cell is neutralised against formulas (reports.csv_text); scores stay numbers.
"""
from __future__ import annotations

import csv
from pathlib import Path

from attnkit import ids
from attnkit.course import Course
from attnkit.reports import csv_text, scores

HEADER = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]


def _fmt(x: float) -> str:
    return f"{x:g}"


def written_cells(course: Course, assignment: str) -> dict[str, set]:
    """notebook -> grade ids graded by hand (a grade cell that is also a solution cell, as in nbgrader)."""
    with course.gradebook() as gb:
        return {nb.name: {c.name for c in nb.grade_cells} & {c.name for c in nb.solution_cells}
                for nb in gb.find_assignment(assignment).notebooks}


def export_canvas(course: Course, assignment: str, path: Path, canvas_id: str | None = None,
                  autograded_only: bool = False) -> tuple[Path, list[str]]:
    """Write the import CSV; returns (path, students left blank because written answers are pending)."""
    data = scores(course, assignment)
    written = written_cells(course, assignment)
    pending = []
    with course.gradebook() as gb:
        nbs = gb.find_assignment(assignment).notebooks
        if autograded_only:
            max_total = sum(c.max_score for nb in nbs for c in nb.grade_cells if c.name not in written[nb.name])
        else:
            max_total = sum(nb.max_score for nb in nbs)
        people = {s.id: s for s in gb.students}
        rows = []
        for sid in sorted(data["students"]):
            s = people.get(sid)
            per = data["students"][sid]
            name = ", ".join(x for x in (getattr(s, "last_name", None), getattr(s, "first_name", None)) if x) or sid
            lms_id = (getattr(s, "lms_user_id", None) or "") if s else ""
            email = (getattr(s, "email", None) or "") if s else ""
            if autograded_only:
                total = _fmt(sum(score or 0 for nb, d in per.items() for gid, (score, _) in d["cells"].items()
                                 if gid not in written.get(nb, set())))
            elif any(d["manual_pending"] for d in per.values()):
                total = ""  # Canvas: not graded (a 0 here would read as a grade)
                pending.append(sid)
            else:
                total = _fmt(sum(d["score"] for d in per.values()))
            if lms_id and lms_id != sid and ids.from_lms(lms_id) == sid:
                # a Gradescope SID or email the id rule changed (collect keeps it): that is what Canvas knows
                lms_id, sis_id = "", ("" if lms_id == email else lms_id)
            else:
                # the nbgrader id is the SIS id unless it is the Canvas id or the email (Gradescope, no SID)
                sis_id = "" if sid in (lms_id, email) else sid
            rows.append([csv_text(x) for x in (name, lms_id, sis_id, email, "")] + [total])
    title = f"{assignment} autograded" if autograded_only else assignment
    column = f"{title} ({canvas_id})" if canvas_id else title
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([csv_text(h) for h in HEADER + [column]])
        w.writerow(["    Points Possible", "", "", "", "", _fmt(max_total)])
        w.writerows(rows)
    return path, pending
