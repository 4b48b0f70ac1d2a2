"""Grading integrity: the tamper bank in one batch, feedback leaks, regrades.

The tamper cases (tests/fixtures_tamper.py) are graded together, through the real pipeline,
with a 20 s cell timeout; each must get exactly the score it deserves and none may stop the
batch. The feedback generated for that batch is then read page by page; regrades, a
resubmission and a manual grade are tried on the same course at the end.
"""
from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import nbformat
import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.batch.driver import autograde
from attnkit.reports import failures, feedback, scores
from attnkit.batch.results import Problem
from banks.attacks.tamper import NOTEBOOKS, Q3, Q3_TESTS, TAMPER
from harness import ASSIGNMENT, assert_fixture, cleanup, grade_fixtures

pytestmark = pytest.mark.slow
Q3_AUTO = sum(Q3_TESTS.values())  # the autograded maximum of Q3
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"

# tamper-gradebook-write, -gradebook-hunt and -source-hunt need the grading sandbox
# (attnkit/sandbox/): they are ordinary cases, and fail where grading is not sandboxed.


@pytest.fixture(scope="module")
def graded():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNKIT_CELL_TIMEOUT", "20")
        t0 = time.perf_counter()
        g = grade_fixtures(TAMPER, NOTEBOOKS, workers=2)
        g.seconds = time.perf_counter() - t0
    yield g
    cleanup(g)


def _status(graded, fx):
    return graded.results[fx.student].notebook(fx.notebook)


@pytest.mark.parametrize("fx", TAMPER, ids=[f.student for f in TAMPER])
def test_tamper_case_scored_as_deserved(graded, fx):
    assert _status(graded, fx).status == fx.status, _status(graded, fx)
    assert_fixture(graded, fx)


def test_no_case_stops_the_batch(graded):
    """Every submission has a result for every notebook of the assignment; the batch finished."""
    assert set(graded.results) == {fx.student for fx in TAMPER}
    for fx in TAMPER:
        assert {n.notebook for n in graded.results[fx.student].notebooks} == set(NOTEBOOKS)
    print(f"tamper batch of {len(TAMPER)} graded in {graded.seconds:.0f}s")


def test_total_is_never_inflated(graded):
    """Duplicated cells are not counted twice: no notebook scores above its maximum."""
    for sid, per in graded.scores.items():
        for nb, d in per.items():
            assert d["score"] <= d["max"], (sid, nb, d["score"], d["max"])
    dup = graded.scores["tamper-duplicated-tests"][Q3]
    full = nbu.points(nbu.read(SOURCE / f"{Q3}.ipynb"))
    auto = sum(p for gid, p in full.items() if gid in Q3_TESTS)
    assert dup["score"] == auto and dup["max"] == sum(full.values()) and len(dup["cells"]) == len(full)


# ---------------------------------------------------------------------------- feedback
@pytest.fixture(scope="module")
def pages(graded):
    t0 = time.perf_counter()
    problems = []
    written = feedback(graded.course, ASSIGNMENT, sorted(graded.results), problems)  # one batch for all
    refused = {p.student: str(p) for p in problems if p.kind is Problem.LEAK}
    print(f"feedback: {len(written)} pages in {time.perf_counter() - t0:.0f}s; refused: {sorted(refused)}")
    out = {(p.parents[1].name, p.stem): p for p in written}
    out["refused"] = refused
    return out


def test_feedback_has_no_hidden_tests_or_solutions(graded, pages):
    """Every page: no hidden-test or mark-scheme line, no solution line the student did not write."""
    by_student = {fx.student: fx for fx in TAMPER}
    assert pages
    for key, path in pages.items():
        if key == "refused":
            continue
        sid, nb = key
        text = html.unescape(path.read_text())
        src = nbu.read(SOURCE / f"{nb}.ipynb")
        leaked = [line for line in nbu.hidden_lines(src) if line in text]
        assert not leaked, f"{sid}/{nb}: hidden test text in feedback: {leaked[:2]}"
        submitted = graded.course.path("submitted", sid, ASSIGNMENT, f"{nb}.ipynb")
        own = submitted.read_text(errors="replace") if submitted.exists() else ""
        try:
            own = json.loads(own)
        except ValueError:
            own = {}
        own_text = "\n".join("".join(c.get("source", "")) for c in own.get("cells", []))
        sol = [line for line in nbu.solution_lines(src) if line in text and line not in own_text]
        assert not sol, f"{sid}/{nb}: solution text the student did not write: {sol[:2]}"
        assert sid in by_student


def test_feedback_refuses_a_page_that_would_show_hidden_tests(graded, pages):
    """The sandbox keeps hidden tests out of every notebook of the batch, so no page is refused;
    and a page that would show one (here: a hidden-test line planted in a graded notebook's
    output) is not written, while the student's other pages are."""
    assert pages["refused"] == {}, pages["refused"]
    sid = "Zoë_Müller-Łukasz.3"
    secret = nbu.assignment_hidden_lines(sorted(SOURCE.glob("*.ipynb")))[0]
    path = graded.course.path("autograded", sid, ASSIGNMENT, f"{Q3}.ipynb")
    original = path.read_bytes()
    nb = nbu.read(path)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=secret + "\n"))
    nbu.write(nb, path)
    try:
        problems = []
        feedback(graded.course, ASSIGNMENT, [sid], problems)
        assert [(p.kind, p.student, p.notebook) for p in problems] == [(Problem.LEAK, sid, Q3)]
        assert not graded.course.path("feedback", sid, ASSIGNMENT, f"{Q3}.html").exists()
    finally:  # the later tests read this student's page
        path.write_bytes(original)
        feedback(graded.course, ASSIGNMENT, [sid], [])


def test_feedback_names_every_failed_part_and_why(graded, pages):
    for fx in TAMPER:
        if fx.status != "graded" or fx.student in pages["refused"]:
            continue
        page = html.unescape(pages[(fx.student, fx.notebook)].read_text())
        summary = page[page.index("attnkit-summary"):page.index("</table>", page.index("attnkit-summary"))]
        for gid, score in fx.expected.items():
            row = re.search(rf"<tr class='(\w+)'><td title='{re.escape(gid)}'>[^<]*</td>(.*?)</tr>", summary, re.S)
            assert row, f"{fx.student}: {gid} missing from the feedback table"
            assert row.group(1) == "failed", f"{fx.student}: {gid} shown as {row.group(1)}"
            why = graded.messages[fx.student].get(gid, "")
            assert why and why.split(":")[0] in row.group(2), f"{fx.student}: {gid} shows no reason"
            if gid in fx.messages:
                assert fx.messages[gid] in row.group(2), f"{fx.student}: {gid} reason lacks {fx.messages[gid]!r}"


def test_feedback_skips_ungraded_students(graded, pages):
    """A student whose notebook could not be graded (an empty autograded folder, as a failed autograde
    leaves it) must not stop feedback: feedback() should skip it."""
    sid = "tamper-malformed-json"
    folder = graded.course.path("autograded", sid, ASSIGNMENT)
    folder.mkdir(parents=True, exist_ok=True)
    assert not any(folder.glob("*.ipynb"))
    problems = []
    assert feedback(graded.course, ASSIGNMENT, [sid], problems) == []
    assert [(p.kind, p.student) for p in problems] == [(Problem.NOT_GRADED, sid)]


def test_output_flood_keeps_feedback_small(graded, pages):
    flood = pages[("tamper-output-flood", Q3)].stat().st_size
    normal = pages[("Zoë_Müller-Łukasz.3", Q3)].stat().st_size
    assert flood < normal + 100_000, (flood, normal)
    graded_nb = graded.course.path("autograded", "tamper-output-flood", ASSIGNMENT, f"{Q3}.ipynb")
    assert graded_nb.stat().st_size < 2_000_000


def test_unreadable_notebooks_are_reported(graded):
    report = json.loads(graded.course.path("reports", f"{ASSIGNMENT}-autograde.json").read_text())
    reasons = {r["student"]: {n["notebook"]: n for n in r["notebooks"]} for r in report}
    assert "not a valid notebook" in reasons["tamper-malformed-json"][Q3]["message"]
    assert "not submitted" in reasons["tamper-missing"][Q3]["message"]


# ---------------------------------------------------------------------------- regrades
REGRADE = ["tamper-patch-checks", "tamper-duplicated-answer", "Zoë_Müller-Łukasz.3", "学生_王-wrong-d"]


def _cells(course, sid):
    return scores(course, ASSIGNMENT)["students"][sid]


def test_regrade_is_identical_and_keeps_manual_grades(graded, pages):
    course = graded.course
    sid = "Zoë_Müller-Łukasz.3"
    with course.gradebook() as gb:
        gb.find_grade("q3b_explanation", Q3, ASSIGNMENT, sid).manual_score = 1.5
        gb.find_grade("q3a_W_k", Q3, ASSIGNMENT, "tamper-patch-checks").manual_score = 0.5  # a hand override
        gb.db.commit()
    before = {s: _cells(course, s) for s in REGRADE}
    assert before[sid][Q3]["score"] == Q3_AUTO + 1.5
    autograde(course, ASSIGNMENT, REGRADE, workers=2, progress=False, allow_unsandboxed=True)
    after = {s: _cells(course, s) for s in REGRADE}
    for s in REGRADE:
        for nb in before[s]:
            assert after[s][nb]["cells"] == before[s][nb]["cells"], (  # what the regrade's failed parts said
                s, nb, failures(nbu.read(course.path("autograded", s, ASSIGNMENT, f"{nb}.ipynb"))))
            assert after[s][nb]["score"] == before[s][nb]["score"], (s, nb)
    assert after[sid][Q3]["cells"]["q3b_explanation"][0] == 1.5
    assert after["tamper-patch-checks"][Q3]["cells"]["q3a_W_k"][0] == 0.5


def test_resubmission_replaces_scores(graded, pages):
    course = graded.course
    sid = "学生_王-wrong-d"
    assert _cells(course, sid)[Q3]["cells"]["q3d_scores"][0] == 0
    fixed = nbu.fill(nbu.read(course.path("source", ASSIGNMENT, f"{Q3}.ipynb")))
    nbu.write(fixed, course.path("submitted", sid, ASSIGNMENT, f"{Q3}.ipynb"))
    autograde(course, ASSIGNMENT, [sid], workers=1, progress=False, allow_unsandboxed=True)
    now = _cells(course, sid)[Q3]
    assert now["cells"]["q3d_scores"][0] == 2 and now["score"] == Q3_AUTO
