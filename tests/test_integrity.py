"""Grading integrity (issue 6): the tamper bank in one batch, feedback leaks, regrades, the guard.

The tamper cases (tests/fixtures_tamper.py) are graded together, through the real pipeline,
with a 20 s cell timeout; each must get exactly the score it deserves and none may stop the
batch. The feedback generated for that batch is then read page by page; regrades, a
resubmission and a manual grade are tried on the same course at the end.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnkit import notebooks as nbu
from attnkit.course import Course
from attnkit.grading import autograde
from nbgrader.preprocessors import DeduplicateIds
from attnkit.reports import feedback, scores
from attnkit.results import Problem
from fixtures_tamper import NOTEBOOKS, Q3, TAMPER
from harness import ASSIGNMENT, assert_fixture, cleanup, grade_fixtures

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"
from attnkit.guard import GUARD_LINE

# A hole this bank found in the kit, closed by a small change to the autograde
# pipeline (see ../scratch/issue6/course_config_fixes.py); until the change is in, the cases
# that need it are expected failures, and they become ordinary tests once it is.
_CFG = Course(ROOT).config()
# nbgrader's DeduplicateIds leaves `nbgrader: {}` on a copied cell and OverwriteCells
# (add_missing_cells) then fails on it: a duplicated or split cell scored the notebook 0.
KIT_DROPS_DUPLICATE_METADATA = DeduplicateIds not in _CFG.Autograde.sanitize_preprocessors
NEEDS_DEDUPLICATION = {"tamper-duplicated-tests", "tamper-duplicated-test-wrong", "tamper-duplicated-answer",
                       "tamper-split-answer", "tamper-split-test"}


# tamper-gradebook-write, -gradebook-hunt and -source-hunt need the grading sandbox
# (attnkit/sandbox.py): they are ordinary cases, and fail where grading is not sandboxed.


def _kit_gap(student):
    if student in NEEDS_DEDUPLICATION and not KIT_DROPS_DUPLICATE_METADATA:
        return "a duplicated/split cell fails the whole notebook (KeyError 'grade_id' in OverwriteCells)"
    return None


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
    return next(n for n in graded.results[fx.student]["notebooks"] if n["notebook"] == fx.notebook)


@pytest.mark.parametrize("fx", TAMPER, ids=[f.student for f in TAMPER])
def test_tamper_case_scored_as_deserved(graded, fx):
    if _kit_gap(fx.student):
        pytest.xfail(_kit_gap(fx.student))
    assert _status(graded, fx)["status"] == fx.status, _status(graded, fx)
    assert_fixture(graded, fx)


def test_no_case_stops_the_batch(graded):
    """Every submission has a result for every notebook of the assignment; the batch finished."""
    assert set(graded.results) == {fx.student for fx in TAMPER}
    for fx in TAMPER:
        assert {n["notebook"] for n in graded.results[fx.student]["notebooks"]} == set(NOTEBOOKS)
    print(f"tamper batch of {len(TAMPER)} graded in {graded.seconds:.0f}s")


def test_total_is_never_inflated(graded):
    """Duplicated cells are not counted twice: no notebook scores above its maximum."""
    for sid, per in graded.scores.items():
        for nb, d in per.items():
            assert d["score"] <= d["max"], (sid, nb, d["score"], d["max"])
    if not KIT_DROPS_DUPLICATE_METADATA:
        pytest.xfail(_kit_gap("tamper-duplicated-tests"))
    dup = graded.scores["tamper-duplicated-tests"][Q3]
    assert dup["score"] == 15 and dup["max"] == 17 and len(dup["cells"]) == 10


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
    """A notebook that printed the hidden tests (read from the gradebook) gets no page; everyone else does."""
    assert set(pages["refused"]) <= {"tamper-gradebook-read"}, pages["refused"]
    if "tamper-gradebook-read" in pages["refused"]:
        assert "hidden test" in pages["refused"]["tamper-gradebook-read"]
        assert not graded.course.path("feedback", "tamper-gradebook-read", ASSIGNMENT, f"{Q3}.html").exists()


def test_feedback_names_every_failed_part_and_why(graded, pages):
    for fx in TAMPER:
        if fx.status != "graded" or _kit_gap(fx.student) or fx.student in pages["refused"]:
            continue
        page = html.unescape(pages[(fx.student, fx.notebook)].read_text())
        summary = page[page.index("attnkit-summary"):page.index("</table>", page.index("attnkit-summary"))]
        for gid, score in fx.expected.items():
            row = re.search(rf"<tr class='(\w+)'><td>{re.escape(gid)}</td>(.*?)</tr>", summary, re.S)
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
    normal = pages[("Zoë Müller-Łukasz 3", Q3)].stat().st_size
    assert flood < normal + 100_000, (flood, normal)
    graded_nb = graded.course.path("autograded", "tamper-output-flood", ASSIGNMENT, f"{Q3}.ipynb")
    assert graded_nb.stat().st_size < 2_000_000


def test_unreadable_notebooks_are_reported(graded):
    report = json.loads(graded.course.path("reports", f"{ASSIGNMENT}-autograde.json").read_text())
    reasons = {r["student"]: {n["notebook"]: n for n in r["notebooks"]} for r in report}
    assert "not a valid notebook" in reasons["tamper-malformed-json"][Q3]["message"]
    assert "not submitted" in reasons["tamper-missing"][Q3]["message"]


# ---------------------------------------------------------------------------- regrades
REGRADE = ["tamper-patch-checks", "tamper-duplicated-answer", "Zoë Müller-Łukasz 3", "学生 王 wrong-d"]


def _cells(course, sid):
    return scores(course, ASSIGNMENT)["students"][sid]


def test_regrade_is_identical_and_keeps_manual_grades(graded, pages):
    course = graded.course
    sid = "Zoë Müller-Łukasz 3"
    with course.gradebook() as gb:
        gb.find_grade("q3b_explanation", Q3, ASSIGNMENT, sid).manual_score = 1.5
        gb.find_grade("q3a_W_k", Q3, ASSIGNMENT, "tamper-patch-checks").manual_score = 0.5  # a hand override
        gb.db.commit()
    before = {s: _cells(course, s) for s in REGRADE}
    assert before[sid][Q3]["score"] == 16.5
    autograde(course, ASSIGNMENT, REGRADE, workers=2, progress=False, allow_unsandboxed=True)
    after = {s: _cells(course, s) for s in REGRADE}
    for s in REGRADE:
        for nb in before[s]:
            assert after[s][nb]["cells"] == before[s][nb]["cells"], (s, nb)
            assert after[s][nb]["score"] == before[s][nb]["score"], (s, nb)
    assert after[sid][Q3]["cells"]["q3b_explanation"][0] == 1.5
    assert after["tamper-patch-checks"][Q3]["cells"]["q3a_W_k"][0] == 0.5


def test_resubmission_replaces_scores(graded, pages):
    course = graded.course
    sid = "学生 王 wrong-d"
    assert _cells(course, sid)[Q3]["cells"]["q3d_scores"][0] == 0
    fixed = nbu.fill(nbu.read(course.path("source", ASSIGNMENT, f"{Q3}.ipynb")))
    nbu.write(fixed, course.path("submitted", sid, ASSIGNMENT, f"{Q3}.ipynb"))
    autograde(course, ASSIGNMENT, [sid], workers=1, progress=False, allow_unsandboxed=True)
    now = _cells(course, sid)[Q3]
    assert now["cells"]["q3d_scores"][0] == 2 and now["score"] == 15


# ---------------------------------------------------------------------------- the guard itself
GUARD_PROBE = r'''
import os, sys, time, importlib, types
clock = time.perf_counter
os.chdir(sys.argv[1])                         # the kernel's folder, holding the grader's helper copy
sys.path.insert(0, sys.argv[1])
import attnkit.guard                          # the kernel's start-up: originals saved here
import attention_checks                       # the set-up cell's import
import torch, torch.testing, torch.utils.flop_counter as fc, builtins
real = {"allclose": torch.allclose, "isclose": torch.isclose, "equal": torch.equal,
        "assert_close": torch.testing.assert_close, "flops": fc.FlopCounterMode.get_total_flops,
        "FlopCounterMode": fc.FlopCounterMode, "isinstance": builtins.isinstance}
# --- what an answer cell might do
torch.allclose = lambda *a, **k: True
torch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
time.perf_counter = lambda: 0.0
time.perf_counter_ns = lambda: 0
time.process_time_ns = lambda: 0
fc.FlopCounterMode.get_total_flops = lambda self: 1
torch.Tensor.all = lambda self, *a, **k: torch.tensor(True)
builtins.isinstance = lambda *a: True
attention_checks.assert_close = lambda *a, **k: None
attention_checks.close = lambda *a, **k: True
class Agree(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, f, t, a=(), k=None):
        return f(*a, **(k or {}))
Agree().__enter__()
torch.set_default_dtype(torch.float64)
importlib.reload(attention_checks)
fc.FlopCounterMode = object
ns = {"assert_close": lambda *a, **k: None, "expect": lambda *a, **k: None, "torch": None,
      "isinstance": lambda *a: True, "answer_A": 1}
# --- what a hidden test does first
t0 = clock()
from attnkit.guard import guard
mod = guard(ns)["attention_checks"]
cost = clock() - t0
import torch.utils.flop_counter as fc2
ok = {
    "torch.allclose": torch.allclose is real["allclose"], "torch.isclose": torch.isclose is real["isclose"],
    "torch.equal": torch.equal is real["equal"],
    "torch.testing.assert_close": torch.testing.assert_close is real["assert_close"],
    "time.perf_counter": time.perf_counter() > 1 and isinstance(time.perf_counter, types.BuiltinFunctionType),
    "time.perf_counter_ns": time.perf_counter_ns() > 1, "time.process_time_ns": time.process_time_ns() > 0,
    "FlopCounterMode": fc2.FlopCounterMode is real["FlopCounterMode"]
                       and fc2.FlopCounterMode.get_total_flops is real["flops"],
    "Tensor.all": "all" not in vars(torch.Tensor), "builtins.isinstance": builtins.isinstance is real["isinstance"],
    "function modes": torch._C._len_torch_function_stack() == 0,
    "default dtype": torch.get_default_dtype() == torch.float32,
    "module checks": mod.assert_close.__module__ == "attention_checks" and mod.close(torch.zeros(2), torch.ones(2)) is False,
    "namespace checks": ns["assert_close"] is mod.assert_close and ns["expect"] is mod.expect,
    "namespace torch": ns["torch"] is torch and "isinstance" not in ns and ns["answer_A"] == 1,
}
try:
    ns["assert_close"](torch.zeros(3), torch.ones(3), part="probe")
    ok["assert_close fails wrong values"] = False
except AssertionError:
    ok["assert_close fails wrong values"] = True
# A fake module in sys.modules is replaced by the grader's file.
sys.modules["attention_checks"] = types.ModuleType("attention_checks")
real_mod = guard({})["attention_checks"]
ok["fake module reloaded"] = hasattr(real_mod, "assert_close") and sys.modules["attention_checks"] is real_mod
print("RESULT", {k: bool(v) for k, v in ok.items()}, round(cost, 3))
'''


def test_guard_undoes_common_patches(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(GUARD_PROBE)
    out = subprocess.run([sys.executable, str(probe), str(SOURCE)], capture_output=True, text=True, timeout=120)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line, out.stdout + out.stderr
    result = eval(line.split(" ", 1)[1].rsplit(" ", 1)[0])
    failed = [k for k, v in result.items() if not v]
    assert not failed, f"the guard did not restore: {failed}"
    assert float(line.rsplit(" ", 1)[1]) < 2.0


def test_guard_is_a_no_op_on_a_clean_kernel(tmp_path):
    code = ("import os, sys; os.chdir(sys.argv[1]); sys.path.insert(0, sys.argv[1]); import attnkit.guard as g\n"
            "import attention_checks\nprint('CHANGED', g.restore_environment())")
    out = subprocess.run([sys.executable, "-c", code, str(SOURCE)], capture_output=True, text=True, timeout=120)
    assert "CHANGED []" in out.stdout, out.stdout + out.stderr


GUARDED = ["q3_multihead_attention", "q12_scaled_dot_product", "q4_multiquery_attention", "q6_linear_attention"]


@pytest.mark.parametrize("stem", sorted(p.stem for p in SOURCE.glob("*.ipynb")))
def test_every_hidden_region_starts_with_the_guard(stem):
    nb = nbu.read(SOURCE / f"{stem}.ipynb")
    tests = [c for c in nb.cells if nbu.is_test_cell(c)]
    assert tests
    missing = []
    for cell in tests:
        lines = cell.source.split("\n")
        i = next(i for i, l in enumerate(lines) if "BEGIN HIDDEN TESTS" in l)
        if i + 1 >= len(lines) or not lines[i + 1].startswith(GUARD_LINE):
            missing.append(nbu.grade_id(cell))
    if missing and stem not in GUARDED:
        pytest.xfail(f"{stem}: its author has not added the guard line yet (issue 6): {missing}")
    assert not missing, f"{stem}: hidden regions without the guard line: {missing}"


def test_student_names_do_not_collide_with_the_checks():
    """guard() rebinds the helper module's public names in the notebook: none may be a student's answer."""
    sys.path.insert(0, str(SOURCE))
    try:
        import attention_checks
    finally:
        sys.path.remove(str(SOURCE))
    public = {n for n, v in vars(attention_checks).items()
              if not n.startswith("_") and getattr(v, "__module__", None) == "attention_checks"}
    for path in SOURCE.glob("*.ipynb"):
        nb = nbu.read(path)
        defined = set()
        for cell in nb.cells:
            if nbu.is_answer_cell(cell) and cell.cell_type == "code":
                for m in re.finditer(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", cell.source, re.M):
                    defined.add(m.group(1) or m.group(2))
        assert not (defined & public), f"{path.name}: {sorted(defined & public)}"


# ---------------------------------------------------------------------------- the report command
def test_integrity_report_classifies_and_counts():
    """`kit integrity` sorts the banks into right / wrong / tamper and counts a fooled grader as such."""
    from types import SimpleNamespace

    from attnkit.cli import build_parser
    from attnkit.integrity import evaluate, load_cases
    from harness import expected_scores

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
        results={s: {"notebooks": [{"notebook": Q3, "status": "missing" if s == "tamper-missing" else "graded"}]}
                 for s in ("q3-solution", "q3-wrong-a", "q3-wrong-d", "tamper-missing")})
    rep = evaluate(pick, fake, expected_scores)
    assert (rep.right_ok, rep.right_bad) == (0, 1)
    assert (rep.wrong_parts_ok, rep.wrong_parts_bad) == (1, 1)
    assert (rep.tamper_ok, rep.tamper_total) == (1, 1)
    assert "tamper cases scored as intended: 1/1" in rep.text() and not rep.ok
