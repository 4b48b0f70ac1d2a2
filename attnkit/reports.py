"""What comes out of grading: the score table, the CSV export, per-student feedback."""
from __future__ import annotations

import csv
import html
import re
import shutil
from pathlib import Path

import ahocorasick_rs

from attnkit import ids
from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.batch.results import FeedbackProblem, Problem, Status, first_error, load_report
from attnkit.preprocessors.sanitise import clean_html


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


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value) -> str:
    """A text cell no spreadsheet runs (OWASP CSV injection): one starting with =, +, -, @, a tab or a
    CR gets a ' prefix. Only for text (ids, names, labels): scores are written as numbers. Spreadsheets
    skip leading spaces and read full-width signs (＝, ＋) as =, +: the first other character is tested
    in NFKC form too."""
    import unicodedata

    text = "" if value is None else str(value)
    head = unicodedata.normalize("NFKC", text.lstrip()[:1])
    return "'" + text if text.startswith(FORMULA_START) or head.startswith(FORMULA_START) else text


LABEL_ROW = "(part)"  # first cell of the CSV's second row: each column's part as the homework names it (no id has "(")


def export(course: Course, assignment: str, path: Path) -> Path:
    """CSV: one row per student, one column per graded part, notebook totals and the total. The header keeps the
    grade ids; the row below it (``LABEL_ROW``) names each part as the homework does."""
    data = scores(course, assignment)
    parts = []
    with course.gradebook() as gb:
        for nb in sorted(gb.find_assignment(assignment).notebooks, key=lambda n: n.name):
            order = {c.name: i for i, c in enumerate(nb.source_cells)}
            for cell in sorted(nb.grade_cells, key=lambda c: order.get(c.name, 0)):
                parts.append((nb.name, cell.name, cell.max_score))
    header = ["student"] + [f"{nb}:{gid} (/{_fmt(mx)})" for nb, gid, mx in parts]
    header += [f"{nb} total" for nb in data["notebooks"]] + ["total", "max", "manual grading pending"]
    names = {nb: source_labels(course, assignment, nb) for nb in {p[0] for p in parts}}
    label_row = [LABEL_ROW] + [nbu.part_label(names[nb], gid) for nb, gid, _ in parts]
    label_row += [""] * (len(header) - len(label_row))
    rows = [[csv_text(x) for x in label_row]]
    for sid in sorted(data["students"]):
        per = data["students"][sid]
        row = [csv_text(sid)]
        for nb, gid, _ in parts:
            score = per.get(nb, {}).get("cells", {}).get(gid, (0, 0))[0]
            row.append(_fmt(score))
        row += [_fmt(per[nb]["score"]) if nb in per else "" for nb in data["notebooks"]]
        row += [_fmt(sum(d["score"] for d in per.values())), _fmt(sum(d["max"] for d in per.values())),
                "yes" if any(d["manual_pending"] for d in per.values()) else "no"]
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[csv_text(h) for h in header]] + rows)
    return path


def source_labels(course: Course, assignment: str, notebook: str) -> dict:
    """grade_id -> the part's name as the homework says it, from the source notebook ({} if it has none)."""
    path = course.path("source", assignment, f"{notebook}.ipynb")
    try:
        return nbu.part_labels(nbu.read(path))
    except (OSError, ValueError):
        return {}


def failures(autograded_nb) -> dict:
    """grade_id -> failure message ('ename: evalue') of every test cell that raised."""
    return {nbu.grade_id(c): first_error(c) for c in autograded_nb.cells if nbu.is_test_cell(c) and first_error(c)}


AWAITING, NOT_ANSWERED, BY_HAND = "awaiting grading", "not answered", "graded by hand"


def _answered(text: str, release_text: str) -> bool:
    """Did the student write anything beyond the released prompt (and nbgrader's placeholder)?"""
    given = {line.strip() for line in (release_text or "").splitlines()} | {"", "YOUR ANSWER HERE"}
    return any(line.strip() not in given for line in (text or "").splitlines())


def written_states(gb, assignment: str, student: str, notebook: str, autograded_nb) -> dict:
    """grade_id -> AWAITING, NOT_ANSWERED or BY_HAND for each written (hand-graded) answer.

    nbgrader stores 0.0 and needs_manual_grade for an answer nobody has graded yet, and scores an
    unchanged answer 0 without asking anyone; an empty or untouched answer is "not answered"."""
    grades = {g.name: g for g in gb.find_submission_notebook(notebook, assignment, student).grades}
    out = {}
    for cell in autograded_nb.cells:
        gid = nbu.grade_id(cell)
        if not nbu.is_manual_cell(cell) or gid not in grades:
            continue
        g = grades[gid]
        try:
            release_text = gb.find_source_cell(gid, notebook, assignment).source
        except Exception:  # a cell the gradebook does not know: judge by the text alone
            release_text = ""
        if not _answered(cell.source, release_text):
            out[gid] = NOT_ANSWERED
        elif g.needs_manual_grade:
            out[gid] = AWAITING
        elif g.manual_score is not None:
            out[gid] = BY_HAND
        else:
            out[gid] = NOT_ANSWERED
    return out


_SUMMARY_CSS = """
.attnkit-summary{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:60em;margin:1.5em auto;
  padding:1.2em 1.5em;border:1px solid #d0d7de;border-radius:10px;background:#f8fafc;color:#1f2328}
.attnkit-summary h1{font-size:1.5em;margin:0 0 .2em}
.attnkit-summary .total{font-size:2.4em;font-weight:700;margin:.1em 0}
.attnkit-summary .total small{font-size:.45em;font-weight:400;color:#57606a;margin-left:.5em}
.attnkit-summary table{border-collapse:collapse;width:100%;margin-top:.8em;background:#fff}
.attnkit-summary th,.attnkit-summary td{border-bottom:1px solid #d0d7de;padding:.45em .6em;text-align:left;vertical-align:top}
.attnkit-summary th{background:#eef2f6;font-weight:600}
.attnkit-summary td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.attnkit-summary .badge{display:inline-block;padding:.1em .55em;border-radius:1em;font-size:.85em;font-weight:600;white-space:nowrap}
.attnkit-summary .passed .badge{background:#dafbe1;color:#116329}
.attnkit-summary .failed .badge,.attnkit-summary .partial .badge{background:#ffebe9;color:#a40e26}
.attnkit-summary .awaiting .badge{background:#fff8c5;color:#7d4e00}
.attnkit-summary .not .badge{background:#eaeef2;color:#424a53}
.attnkit-summary .graded .badge{background:#ddf4ff;color:#0550ae}
.attnkit-summary .lost{color:#a40e26;font-weight:600}
.attnkit-summary code{white-space:pre-wrap;font-size:.9em}
.attnkit-summary a{color:#0969da}
body > div.container > div.panel > div.panel-heading{display:none}  /* nbgrader's score list: the summary replaces it */
.attnkit-summary a.badge{text-decoration:none}
.attnkit-summary a.badge:hover{text-decoration:underline}
"""


def _summary_html(notebook, autograded_nb, cells, redact, written=None, labels=None) -> str:
    """The page's head: the notebook's total, then one row per graded part (score, points lost, status,
    message), each part named as the homework names it (``labels``, from the source notebook) and linked to
    its cell; hidden-test lines in messages are redacted."""
    fails = failures(autograded_nb)
    written = written or {}
    labels = labels or {}
    rows, total, total_max, pending = [], 0.0, 0.0, 0.0
    for cell in autograded_nb.cells:
        gid = nbu.grade_id(cell)
        if not nbu.meta(cell).get("grade") or gid not in cells:
            continue
        score, mx = cells[gid]
        score, mx = float(score or 0), float(mx or 0)
        msg, lost = "", 0.0
        if nbu.is_manual_cell(cell):
            status = written.get(gid, AWAITING)
            if status == AWAITING:
                pending += mx
            else:
                lost = mx - score
            shown = f"&ndash; / {_fmt(mx)}" if status == AWAITING else f"{_fmt(score)} / {_fmt(mx)}"
        else:
            if gid in fails:
                status, msg = "FAILED", fails[gid]
            else:
                status = "passed" if score == mx else "partial"
            lost = mx - score
            shown = f"{_fmt(score)} / {_fmt(mx)}"
        total, total_max = total + score, total_max + mx
        for line in redact:
            msg = msg.replace(line, "[hidden test]")
        anchor = html.escape(gid, quote=True)
        lost_txt = f"<span class='lost'>&minus;{_fmt(lost)}</span>" if lost > 0 else ""
        # the badge links to the part's cell (nbgrader's feedback template anchors each grade cell by its id)
        rows.append(f"<tr class='{status.split()[0].lower()}'><td title='{anchor}'>{html.escape(nbu.part_label(labels, gid))}</td>"
                    f"<td class='num'>{shown}</td><td class='num'>{lost_txt}</td>"
                    f"<td><a class='badge' href='#{anchor}' title='go to the cell'>{status}</a></td>"
                    f"<td>{f'<code>{html.escape(msg)}</code>' if msg else ''}</td></tr>")
    note = f"<small>{_fmt(pending)} points of written answers awaiting grading</small>" if pending else ""
    return ("<div class='attnkit-summary' id='summary'>"
            f"<h1>{html.escape(notebook)}</h1>"
            f"<div class='total'>{_fmt(total)} / {_fmt(total_max)}{note}</div>"
            "<table><tr><th>part</th><th>score</th><th>lost</th><th>status</th><th>message</th></tr>"
            + "".join(rows) + "</table></div>")


def leaks(page: str, secret) -> list[str]:
    """The secret lines that occur in the page's text, in ``secret``'s order: one pass over the page
    for all lines (Aho-Corasick, overlapping matches: exactly the lines ``line in text`` finds)."""
    secret = [line for line in secret if line]
    if not secret:
        return []
    found = set(ahocorasick_rs.AhoCorasick(secret).find_matches_as_strings(html.unescape(page), overlapping=True))
    return [line for line in secret if line in found]


MATHJAX_BLOCK = re.compile(r"<!-- attnkit mathjax -->.*?<!-- /attnkit mathjax -->", re.S)
MATHJAX_DIR = "_mathjax"   # feedback/_mathjax/: one copy shared by every page
_MATHJAX3 = ("<script>window.MathJax={loader:{load:['ui/safe']},tex:{inlineMath:[['$','$'],['\\\\(','\\\\)']],"
             "processEscapes:true,tags:'ams'},svg:{fontCache:'global'},"
             "options:{enableMenu:false,safeOptions:{allow:{URLs:'none',classes:'none',cssIDs:'none'}}}};</script>"
             "<script id='MathJax-script' src='{src}'></script>")


def install_mathjax(feedback_root: Path) -> Path:
    """feedback/_mathjax/: MathJax 3's self-contained SVG build (and its safe-links module), copied
    once from the pinned django-static-mathjax package, so pages typeset math offline."""
    import mathjax
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    dest = feedback_root / MATHJAX_DIR
    for rel in ("tex-svg-full.js", "ui/safe.js"):
        target = dest / rel
        if not target.exists() or target.stat().st_size != (es5 / rel).stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(es5 / rel, target)
    return dest


def feedback_page(page: str, summary: str, mathjax_src: str) -> str:
    """The page nbgrader wrote, made the kit's: its body cleaned again (nh3), the summary on top, and
    MathJax from ``mathjax_src`` (relative: works from file:// without a network)."""
    head_end = page.find("<body")
    head, body = page[:head_end], page[head_end:]
    head = MATHJAX_BLOCK.sub(lambda _: _MATHJAX3.replace("{src}", html.escape(mathjax_src, quote=True)), head)
    head = head.replace("</head>", f"<style>{_SUMMARY_CSS}</style>\n</head>")
    inner = body[body.find(">") + 1:]
    inner = inner[:inner.rfind("</body>")] if "</body>" in inner else inner
    return head + "<body>\n" + summary + "\n" + clean_html(inner) + "\n</body>\n</html>\n"


def feedback(course: Course, assignment: str, students: list[str] | None = None, problems: list | None = None,
             log=None) -> list[Path]:
    """Feedback HTML per student and notebook, each checked for hidden-test and mark-scheme leaks.

    A student whose notebooks could not be graded, or a page that would show hidden text, is
    skipped and recorded in ``problems`` (FeedbackProblem); everyone else still gets their feedback.
    Student content on the page is sanitised twice: when nbconvert renders it (course_config.py) and
    the whole body again here.
    """
    problems = problems if problems is not None else []
    api = course.api()
    data = scores(course, assignment)
    secret = nbu.assignment_hidden_lines(sorted(course.path("source", assignment).glob("*.ipynb")))
    written = []
    mathjax_ready = False
    for sid in students or sorted(data["students"]):
        if not ids.is_valid(sid):  # nbgrader would read the id as a pattern (other students' pages)
            problems.append(FeedbackProblem(Problem.NBGRADER, sid, detail=f"not asked: {ids.refusal(sid)}"))
            continue
        folder = course.path("autograded", sid, assignment)
        if not folder.is_dir() or not any(folder.glob("*.ipynb")):
            problems.append(FeedbackProblem(Problem.NOT_GRADED, sid))
            continue
        result = api.generate_feedback(assignment, sid, force=True)
        if not result["success"]:
            problems.append(FeedbackProblem(Problem.NBGRADER, sid, detail=result.get("log", "")[-300:]))
            continue
        if not mathjax_ready:
            install_mathjax(course.path("feedback"))
            mathjax_ready = True
        for nb_name, per in data["students"].get(sid, {}).items():
            html_path = course.path("feedback", sid, assignment, f"{nb_name}.html")
            graded = course.path("autograded", sid, assignment, f"{nb_name}.ipynb")
            if not html_path.exists() or not graded.exists():
                continue
            autograded_nb = nbu.read(graded)
            with course.gradebook() as gb:
                states = written_states(gb, assignment, sid, nb_name, autograded_nb)
            labels = source_labels(course, assignment, nb_name)
            summary = _summary_html(nb_name, autograded_nb, per["cells"], secret, states, labels)
            page = feedback_page(html_path.read_text(), summary, f"../../{MATHJAX_DIR}/tex-svg-full.js")
            found = leaks(page, secret)
            if found:
                html_path.unlink()
                problems.append(FeedbackProblem(Problem.LEAK, sid, nb_name, f"{found[0][:50]!r}; not written"))
                continue
            html_path.write_text(page)
            written.append(html_path)
    if log is not None:
        for p in problems:
            log(f"feedback problem: {p}")
    return written
