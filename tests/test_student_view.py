"""What a student and a TA read: Restart & Run All shows every part in the student's JupyterLab, one message form
for every part still as released (notebook, selfcheck.py, feedback, Gradescope), parts named as the homework
names them."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.authoring.samples import partial
from attnkit.student.selfcheck import untouched

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "release" / "hw9"
SOURCE = ROOT / "source" / "hw9"
STEMS = ["q12_scaled_dot_product", "q3_multihead_attention", "q4_multiquery_attention", "q6_linear_attention"]
STATUS = re.compile(r"^(ok|FAIL|BLANK|TODO)\b")
# The one form for a part still as released: it names the part, then says what to do.
UNTOUCHED = re.compile(r"^AssertionError: \S.*(still a blank `_____`|not written yet)")


def test_untouched_names_the_part_and_says_what_to_do():
    """Does a bare NotImplementedError, a NameError on `_____` or a check that relays one become one line naming
    the part, while a check's own blank message and any other failure keep their words?"""
    assert untouched("Q1(a) code", "NotImplementedError", "") == \
        "Q1(a) code: not written yet: replace `raise NotImplementedError()` by your code"
    assert untouched("Q6 linear attention: time", "NameError", "name '_____' is not defined") == \
        "Q6 linear attention: time: still a blank `_____`: fill it in"
    assert untouched("Q4(f)", "AssertionError", "mqa_step_compute(b=2) raised NameError: name '_____' is not "
                     "defined").startswith("Q4(f): still a blank")
    assert untouched("Q3(a) blank (a)", "AssertionError", "(a) is still a blank `_____`: fill it in") is None
    assert untouched("Q3(a) blank (d)", "AssertionError", "(d): wrong values") is None


@pytest.fixture(scope="module")
def shell():
    """An IPython shell that imported the course helper as a notebook's set-up cell does (not grading)."""
    from IPython.core.interactiveshell import InteractiveShell

    saved = {k: os.environ.pop(k) for k in ("NBGRADER_EXECUTION", "ATTNKIT_CHECKS") if k in os.environ}
    sh = InteractiveShell.instance()
    spec = importlib.util.spec_from_file_location("attention_checks", RELEASE / "attention_checks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["attention_checks"] = module
    spec.loader.exec_module(module)
    yield sh
    sh.ast_transformers[:] = [t for t in sh.ast_transformers if type(t).__name__ != "_RunOn"]
    sys.modules.pop("attention_checks", None)
    os.environ.update(saved)


def test_in_jupyterlab_a_failing_check_ends_its_cell_with_one_line_and_the_run_goes_on(shell, capsys):
    """In a kernel that is not grading, does a failed check, a blank or a stub end its cell with one FAIL / BLANK /
    TODO line and a successful reply (so Run All goes on), while the student's own other errors still raise and a
    cell's last value is still shown?"""
    ran = shell.run_cell("from attention_checks import expect\nexpect(1 == 2, '(x): the shape is wrong')")
    assert ran.success and "FAIL  (x): the shape is wrong" in capsys.readouterr().err
    ran = shell.run_cell("answer_A = _____")
    assert ran.success and "BLANK this cell: still a blank `_____`: fill it in (line 1: answer_A = _____)" in \
        capsys.readouterr().err
    shell.run_cell("def f(x):\n    raise NotImplementedError()")
    ran = shell.run_cell("from attention_checks import call\ncall('Q9 f', f, 1)")
    assert ran.success and "TODO  Q9 f: not written yet" in capsys.readouterr().err
    # a check whose call of the student's code raised: the message first, then the student's own line
    shell.run_cell("def g(x):\n    return x.view(3)", store_history=True)
    ran = shell.run_cell("import torch\ncall('(g) split_heads', g, torch.zeros(2))", store_history=True)
    err = capsys.readouterr().err.splitlines()
    assert ran.success and err[0].startswith("FAIL  (g) split_heads: g raised RuntimeError: shape '[3]' is invalid")
    assert err[1].startswith("      your code: ") and err[1].endswith(", line 2: return x.view(3)"), err
    ran = shell.run_cell("1 / 0")
    assert not ran.success and isinstance(ran.error_in_exec, ZeroDivisionError)
    ran = shell.run_cell("40 + 2")
    assert ran.success and ran.result == 42


def test_when_grading_a_failing_check_still_fails_its_cell(shell, monkeypatch):
    """With NBGRADER_EXECUTION set (autograde, ./kit validate), does importing the helper install nothing, so that
    a failing check fails its cell exactly as before?"""
    shell.ast_transformers[:] = [t for t in shell.ast_transformers if type(t).__name__ != "_RunOn"]
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    sys.modules["attention_checks"]._install_run_on()
    try:
        ran = shell.run_cell("from attention_checks import expect\nexpect(1 == 2, '(x): the shape is wrong')")
        assert not ran.success and str(ran.error_in_exec) == "(x): the shape is wrong"
    finally:
        monkeypatch.delenv("NBGRADER_EXECUTION")
        sys.modules["attention_checks"]._install_run_on()


def run_all(nb, folder: Path, env=None):
    """Restart & Run All as JupyterLab does it: stop at the first cell that fails."""
    from nbclient import NotebookClient

    for f in RELEASE.iterdir():
        if f.suffix == ".py":
            shutil.copy(f, folder / f.name)
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in ("NBGRADER_EXECUTION", "ATTNKIT_CHECKS")}
    NotebookClient(nb, timeout=300, allow_errors=False, kernel_name="python3", resources={"metadata": {"path": str(folder)}},
                   extra_arguments=["--IPKernelApp.log_level=ERROR"]).execute(env=env)
    return nb


def part_lines(nb) -> dict:
    """grade_id -> the status lines (ok / FAIL / BLANK / TODO) each graded test cell printed."""
    out = {}
    for cell in nb.cells:
        if nbu.is_test_cell(cell):
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            out[nbu.grade_id(cell)] = [line for line in text.splitlines() if STATUS.match(line)]
    return out


def assert_every_cell_ran(nb):
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {i} did not run"
            assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {i}: {cell.outputs}"


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_run_all_on_the_untouched_release_shows_every_part(stem, tmp_path):
    """Does Run All on the untouched release run every cell, and end every graded test cell with its part's one
    line, BLANK or TODO (never a FAIL, never a bare exception)?"""
    nb = run_all(nbu.read(RELEASE / f"{stem}.ipynb"), tmp_path)
    assert_every_cell_ran(nb)
    for gid, lines in part_lines(nb).items():
        assert lines and lines[-1].startswith(("BLANK ", "TODO  ")), (gid, lines)
        assert "NameError" not in lines[-1] and not lines[-1].rstrip().endswith("NotImplementedError:"), (gid, lines)


@pytest.mark.slow
def test_run_all_on_a_partly_filled_q3_shows_ok_and_blank(tmp_path):
    """With the first half of Q3's blanks filled ((a) to (f), the demo's sample-partial), does Run All reach the end,
    saying ok for each filled blank and BLANK for each blank left, each under its own part?"""
    stem = "q3_multihead_attention"
    nb = partial(nbu.read(SOURCE / f"{stem}.ipynb"))
    nb = run_all(nb, tmp_path)
    assert_every_cell_ran(nb)
    lines = part_lines(nb)
    filled = ("q3a_W_k", "q3b_W_v", "q3c_W_o", "q3d_scores", "q3e_softmax", "q3f_weighted_values")
    assert all(lines[g] and lines[g][-1].startswith("ok  (") for g in filled), lines
    assert lines["q3g_split_heads"] == ["BLANK (g) is still a blank `_____`: fill it in"], lines
    assert lines["q3h_output_projection"] == ["BLANK (h) is still a blank `_____`: fill it in"], lines
    assert lines["q3_whole_layer_check"] == ["BLANK whole layer: (g) is still a blank `_____`: fill it in"], lines
    assert lines["q3b_wide_value_test"][-1].startswith("TODO  Q3(b)"), lines["q3b_wide_value_test"]


@pytest.mark.slow
def test_selfcheck_names_each_untouched_part_in_the_one_form(tmp_path):
    """Does selfcheck.py (its kernel raises as grading does) list each untouched Q1/Q2 part as "<part>: not written
    yet" or "still a blank", never a bare NotImplementedError or a NameError on `_____`?"""
    from attnkit.student.selfcheck import main

    stem = "q12_scaled_dot_product"
    for f in RELEASE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    lines = []
    assert main([str(tmp_path / f"{stem}.ipynb")], log=lines.append) == 1
    fails = {line.split()[1].rstrip(":"): line for line in lines if line.startswith("FAIL")}
    labels = nbu.part_labels(nbu.read(SOURCE / f"{stem}.ipynb"))
    assert fails["q1a_test"] == f"FAIL     q1a_test: AssertionError: {labels['q1a_test']}: not written yet: replace " \
                                "`raise NotImplementedError()` by your code"
    assert "still a blank `_____`" in fails["q1_mc_test"]
    for gid, line in fails.items():
        assert UNTOUCHED.match(line.split(": ", 1)[1]), line


@pytest.mark.slow
def test_every_untouched_part_is_graded_with_the_one_form_and_named_as_the_homework_does():
    """Graded through the real pipeline, does every part of the untouched release fail with "<part>: still a
    blank `_____`: fill it in" or "<part>: not written yet", and do the feedback page and the CSV name the parts
    as the homework does (the grade ids stay in the CSV header)?"""
    import csv

    from attnkit.fixtures import Fixture
    from attnkit.fixtures.grade import cleanup, grade_fixtures
    from attnkit.reports import export, feedback

    fixtures = [Fixture(f"untouched-{stem[:3].strip('_')}", stem, default="release") for stem in STEMS]
    graded = grade_fixtures(fixtures, STEMS)
    try:
        walked = 0
        for fx in fixtures:
            src = nbu.read(SOURCE / f"{fx.notebook}.ipynb")
            for cell in src.cells:
                if nbu.is_test_cell(cell):
                    msg = graded.messages[fx.student].get(nbu.grade_id(cell), "")
                    assert UNTOUCHED.match(msg), (fx.notebook, nbu.grade_id(cell), msg)
                    assert "NameError" not in msg and not msg.rstrip().endswith("NotImplementedError:"), msg
                    walked += 1
        assert walked == 47
        course = graded.course
        feedback(course, "hw9", ["untouched-q3"])
        page = course.path("feedback", "untouched-q3", "hw9", "q3_multihead_attention.html").read_text()
        assert "Q3(a) blank (b): size of W_v" in page and "Q3(b) code" in page
        rows = list(csv.reader(open(export(course, "hw9", course.root / "grades.csv"), encoding="utf-8")))
        col = rows[0].index("q3_multihead_attention:q3b_W_v (/1)")
        assert rows[1][0] == "(part)" and rows[1][col] == "Q3(a) blank (b): size of W_v"
    finally:
        cleanup(graded)


def test_every_graded_part_has_a_name_declared_once_in_its_source_notebook():
    """Does each source notebook's metadata name every graded part (and nothing else), the one place the
    names are declared?"""
    for stem in STEMS:
        nb = nbu.read(SOURCE / f"{stem}.ipynb")
        graded = {nbu.grade_id(c) for c in nb.cells if nbu.meta(c).get("grade")}
        labels = nbu.part_labels(nb)
        assert set(labels) == graded, (stem, set(labels) ^ graded)
        assert len(set(labels.values())) == len(labels), stem
