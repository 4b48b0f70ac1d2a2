"""`kit integrity`'s classification and counting, on a fake gradebook (fast tier)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.fixtures.grade import expected_scores
from banks.attacks.tamper import Q3, TAMPER
from attnkit.batch.results import NotebookResult, Status, StudentResult

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"


def test_integrity_report_classifies_and_counts():
    """`kit integrity` sorts the banks into right / wrong / tamper and counts a fooled grader as such."""
    from attnkit.cli import build_parser
    from attnkit.integrity import evaluate, load_cases

    args = build_parser().parse_args(["integrity", "--banks", "q3,tamper", "--workers", "1"])
    assert args.func.__name__ == "cmd_integrity"
    cases = {c.fixture.student: c for c in load_cases(ROOT)}
    assert len(cases) >= len(TAMPER) + 40
    assert cases["q3-solution"].kind == "right" and cases["q3-right-einsum"].kind == "right"
    assert cases["q3-wrong-a"].kind == "wrong" and cases["q3-untouched"].kind == "wrong"
    assert all(cases[fx.student].kind == "tamper" for fx in TAMPER)
    # A fake gradebook: the right answer loses a point, wrong (a) is graded right, wrong (d) wrong.
    pick = [cases[s] for s in ("q3-solution", "q3-wrong-a", "q3-wrong-d", "tamper-missing")]
    course = Course(ROOT)
    full = {gid: (float(p), float(p)) for gid, p in nbu.points(nbu.read(SOURCE / f"{Q3}.ipynb")).items()}
    sol = dict(full, q3e_softmax=(1.0, 2.0))
    fake = SimpleNamespace(course=course, messages={}, scores={
        "q3-solution": {Q3: {"cells": sol}}, "q3-wrong-a": {Q3: {"cells": full}},
        "q3-wrong-d": {Q3: {"cells": dict(full, q3d_scores=(0.0, 2.0))}},
        "tamper-missing": {Q3: {"cells": {g: (0.0, m) for g, (_, m) in full.items()}}}},
        results={s: StudentResult(s, "hw9", [NotebookResult(Q3, Status.MISSING if s == "tamper-missing" else Status.GRADED)])
                 for s in ("q3-solution", "q3-wrong-a", "q3-wrong-d", "tamper-missing")})
    rep = evaluate(pick, fake, expected_scores)
    assert (rep.right_ok, rep.right_bad) == (0, 1)
    # wrong (a): its two lowered parts ((a), whole layer) kept full marks; wrong (d): (d) lost, whole layer kept
    assert (rep.wrong_parts_ok, rep.wrong_parts_bad) == (1, 3)
    assert (rep.tamper_ok, rep.tamper_total) == (1, 1)
    assert "tamper cases scored as intended: 1/1" in rep.text() and not rep.ok
