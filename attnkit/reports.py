"""What comes out of grading: the score table, the CSV export, per-student feedback."""
from __future__ import annotations

import csv
import html
from pathlib import Path

from attnkit import notebooks as nbu
from attnkit.course import Course
from attnkit.results import FeedbackProblem, Problem, Status, first_error, load_report


def _fmt(x: float) -> str:
    return f"{x:g}"


def scores(course: Course, assignment: str) -> dict:
    """student -> {notebook -> {"score", "max", "manual_pending", "cells": {grade_id: (score, max)}}}."""
    out = {}
    with course.gradebook() as gb:
        assignment_row = gb.find_assignment(assignment)
        for sub in gb.assignment_submissions(assignment):
            per = {}
            for nb in sub.notebooks:
                cells = {g.name: (g.score, g.max_score) for g in nb.grades}
                per[nb.name] = {"score": nb.score, "max": nb.max_score,
                                "manual_pending": nb.needs_manual_grade, "cells": cells}
            out[sub.student.id] = per
        out_order = sorted(n.name for n in assignment_row.notebooks)
    return {"notebooks": out_order, "students": out}


def table(course: Course, assignment: str, students: list[str] | None = None) -> str:
    """Per-student, per-notebook scores, with what went wrong where something did."""
    data = scores(course, assignment)
    report = load_report(course.root, assignment)
    nbs = data["notebooks"]
    short = [n.split("_")[0] for n in nbs]
    sids = [s for s in sorted(data["students"]) if students is None or s in students]
    width = max([len("student")] + [len(s) for s in sids])
    lines = ["  ".join([f"{'student':<{width}}"] + [f"{s:>11}" for s in short] + [f"{'total':>13}"])]
    notes = []
    for sid in sids:
        per = data["students"][sid]
        cells, total, total_max = [], 0.0, 0.0
        for nb in nbs:
            d = per.get(nb)
            if d is None:
                cells.append(f"{'-':>11}")
                continue
            mark = "*" if d["manual_pending"] else ""
            cells.append(f"{_fmt(d['score']) + '/' + _fmt(d['max']) + mark:>11}")
            total += d["score"]
            total_max += d["max"]
        lines.append("  ".join([f"{sid:<{width}}"] + cells + [f"{_fmt(total) + '/' + _fmt(total_max):>13}"]))
        for nbres in (report[sid].notebooks if sid in report else []):
            if nbres.status is not Status.GRADED:
                notes.append(f"  {sid} / {nbres.notebook}: {nbres.status}: {nbres.message}")
    lines.append("(* = written answers still to be graded by hand; columns: " + ", ".join(nbs) + ")")
    if notes:
        lines.append("Problems:")
        lines += notes
    return "\n".join(lines)


def export(course: Course, assignment: str, path: Path) -> Path:
    """CSV: one row per student, one column per graded part, notebook totals and the total."""
    data = scores(course, assignment)
    parts = []
    with course.gradebook() as gb:
        for nb in sorted(gb.find_assignment(assignment).notebooks, key=lambda n: n.name):
            order = {c.name: i for i, c in enumerate(nb.source_cells)}
            for cell in sorted(nb.grade_cells, key=lambda c: order.get(c.name, 0)):
                parts.append((nb.name, cell.name, cell.max_score))
    header = ["student"] + [f"{nb}:{gid} (/{_fmt(mx)})" for nb, gid, mx in parts]
    header += [f"{nb} total" for nb in data["notebooks"]] + ["total", "max", "manual grading pending"]
    rows = []
    for sid in sorted(data["students"]):
        per = data["students"][sid]
        row = [sid]
        for nb, gid, _ in parts:
            score = per.get(nb, {}).get("cells", {}).get(gid, (0, 0))[0]
            row.append(_fmt(score))
        row += [_fmt(per[nb]["score"]) if nb in per else "" for nb in data["notebooks"]]
        row += [_fmt(sum(d["score"] for d in per.values())), _fmt(sum(d["max"] for d in per.values())),
                "yes" if any(d["manual_pending"] for d in per.values()) else "no"]
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    return path


def failures(autograded_nb) -> dict:
    """grade_id -> failure message ('ename: evalue') of every test cell that raised."""
    return {nbu.grade_id(c): first_error(c) for c in autograded_nb.cells if nbu.is_test_cell(c) and first_error(c)}


def _summary_html(notebook, autograded_nb, cells, redact) -> str:
    fails = failures(autograded_nb)
    rows = []
    for cell in autograded_nb.cells:
        gid = nbu.grade_id(cell)
        if not nbu.meta(cell).get("grade") or gid not in cells:
            continue
        score, mx = cells[gid]
        if nbu.is_manual_cell(cell):
            status = "graded by hand" if score is not None else "awaiting grading"
            msg = ""
        elif gid in fails:
            status, msg = "FAILED", fails[gid]
        else:
            status, msg = ("passed" if score == mx else "partial"), ""
        for line in redact:
            msg = msg.replace(line, "[hidden test]")
        rows.append(f"<tr class='{status.split()[0].lower()}'><td>{html.escape(gid)}</td>"
                    f"<td>{_fmt(score or 0)} / {_fmt(mx)}</td><td>{status}</td><td><code>{html.escape(msg)}</code></td></tr>")
    return ("<div class='attnkit-summary' style='margin:1em;font-family:sans-serif'>"
            f"<h2>{html.escape(notebook)}: graded parts</h2>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
            "<tr><th>part</th><th>score</th><th>status</th><th>message</th></tr>"
            + "".join(rows) + "</table></div>")


def feedback(course: Course, assignment: str, students: list[str] | None = None, problems: list | None = None,
             log=None) -> list[Path]:
    """Feedback HTML per student and notebook, each checked for hidden-test and mark-scheme leaks.

    A student whose notebooks could not be graded, or a page that would show hidden text, is
    skipped and recorded in ``problems`` (FeedbackProblem); everyone else still gets their feedback.
    """
    problems = problems if problems is not None else []
    api = course.api()
    data = scores(course, assignment)
    secret = nbu.assignment_hidden_lines(sorted(course.path("source", assignment).glob("*.ipynb")))
    written = []
    for sid in students or sorted(data["students"]):
        folder = course.path("autograded", sid, assignment)
        if not folder.is_dir() or not any(folder.glob("*.ipynb")):
            problems.append(FeedbackProblem(Problem.NOT_GRADED, sid))
            continue
        result = api.generate_feedback(assignment, sid, force=True)
        if not result["success"]:
            problems.append(FeedbackProblem(Problem.NBGRADER, sid, detail=result.get("log", "")[-300:]))
            continue
        for nb_name, per in data["students"].get(sid, {}).items():
            html_path = course.path("feedback", sid, assignment, f"{nb_name}.html")
            graded = course.path("autograded", sid, assignment, f"{nb_name}.ipynb")
            if not html_path.exists() or not graded.exists():
                continue
            page = html_path.read_text()
            summary = _summary_html(nb_name, nbu.read(graded), per["cells"], secret)
            idx = page.find(">", page.find("<body")) + 1
            page = page[:idx] + summary + page[idx:]
            leaks = [line for line in secret if line in html.unescape(page)]
            if leaks:
                html_path.unlink()
                problems.append(FeedbackProblem(Problem.LEAK, sid, nb_name, f"{leaks[0][:50]!r}; not written"))
                continue
            html_path.write_text(page)
            written.append(html_path)
    if log is not None:
        for p in problems:
            log(f"feedback problem: {p}")
    return written
