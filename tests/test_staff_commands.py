"""The staff and student commands around grading: ``./kit check``'s failure lines, ``./kit validate``
and the student's ``selfcheck.py`` on source and release notebooks, and the formgrader's exchange.

Most tests read notebooks in memory (``selfcheck.report`` on unexecuted or hand-made outputs); the
slow ones run the real commands once.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.student import selfcheck
from attnkit.authoring.check import why
from harness import kit

ROOT = Path(__file__).resolve().parents[1]
SOURCE, RELEASE = ROOT / "source" / "hw9", ROOT / "release" / "hw9"
Q3, Q6, Q12 = "q3_multihead_attention", "q6_linear_attention", "q12_scaled_dot_product"


def report(nb) -> tuple[int, list[str]]:
    lines = []
    return selfcheck.report(nb, "nb", lines.append), lines


def cell(nb, gid):
    return next(c for c in nb.cells if nbu.grade_id(c) == gid)


def stubbed(stem):
    """The notebook as students get it, made from source/ (release/ may lag while source/ is edited)."""
    return nbu.fill(nbu.read(SOURCE / f"{stem}.ipynb"), default="stub")


def written(stem) -> dict:
    nb = nbu.read(SOURCE / f"{stem}.ipynb")
    return {nbu.grade_id(c): float(nbu.meta(c)["points"]) for c in nb.cells if nbu.is_manual_cell(c)}


# -- selfcheck / validate: the report ---------------------------------------------------------------
def test_unanswered_written_answers_are_listed():
    """Does the self-check list each written answer still as released (with its points), and not
    report success while one is unanswered?"""
    nb = nbu.fill(nbu.read(SOURCE / f"{Q12}.ipynb"))  # every blank and answer filled ...
    released = stubbed(Q12)
    for gid in written(Q12):  # ... but the written answers as released
        cell(nb, gid).source = cell(released, gid).source
        cell(nb, gid).metadata = cell(released, gid).metadata
    code, lines = report(nb)
    assert code == 1 and not any("Success" in line for line in lines)
    for gid, pts in written(Q12).items():
        assert f"WRITTEN  {gid}: written answer ({pts:g} points) not answered yet (graded by hand)" in lines
    assert f"{len(written(Q12))} written answers unanswered" in lines[-1]
    # an answer written in place of the placeholder counts as answered
    first = next(iter(written(Q12)))
    cell(nb, first).source = "**Your answer:**\n\nBy linearity of expectation the mean is d mu^2."
    code, lines = report(nb)
    assert not any(line.startswith(f"WRITTEN  {first}:") for line in lines)


def test_selfcheck_checksum_is_nbgraders():
    """Does the self-check's own copy of nbgrader's cell checksum (it ships without nbgrader) give
    nbgrader's value, so that a written answer left exactly as released is recognised?"""
    from nbgrader.utils import compute_checksum

    cells = [c for stem in (Q3, Q6, Q12) for c in stubbed(stem).cells if nbu.meta(c).get("grade_id")]
    assert cells and all(selfcheck._checksum(c) == compute_checksum(c) for c in cells)
    answer = next(c for c in cells if nbu.is_manual_cell(c))
    answer.source = answer.source.replace(selfcheck.TEXT_STUB, "")  # as released, but without the placeholder
    answer.metadata.nbgrader["checksum"] = compute_checksum(answer)
    assert selfcheck.unanswered(answer)
    answer.source += "\nMy answer."
    assert not selfcheck.unanswered(answer)


def test_ungraded_experiment_blank_does_not_block_success():
    """Does a blank left in a cell that no test grades (the Q6 experiment's crossover) read as optional,
    so that a notebook otherwise done reports success?"""
    nb = nbu.fill(nbu.read(SOURCE / f"{Q6}.ipynb"))
    experiment = cell(stubbed(Q6), "q6_experiment")
    assert "_____" in experiment.source
    cell(nb, "q6_experiment").source = experiment.source
    code, lines = report(nb)
    assert code == 0, lines
    assert any(line.startswith("OPTIONAL q6_experiment:") for line in lines)
    assert not any(line.startswith("BLANK") for line in lines) and "Success" in lines[-1]
    # a graded cell's blank still blocks
    cell(nb, "q6_b_kernel").source = cell(stubbed(Q6), "q6_b_kernel").source
    code, lines = report(nb)
    assert code == 1 and "BLANK    q6_b_kernel: still has a blank (_____ or NotImplementedError) to fill in" in lines


def _stream(text):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def test_a_check_that_could_not_check_is_not_a_pass():
    """When a visible check runs without raising but says its part was not checked (it ran into
    another part's blank), is the part counted as not checked rather than passed?"""
    nb = nbu.fill(nbu.read(SOURCE / f"{Q3}.ipynb"))
    cell(nb, "q3e_softmax").outputs = [_stream(
        "note  (e): scaled_dot_product_attention raised NameError: name '_____' is not defined\n"
        "(e) not checked here: the function stopped before the weights (the graded test checks (e) on its own)\n")]
    cell(nb, "q3f_weighted_values").outputs = [_stream("note  (f): raised NameError: name '_____' is not defined\n")]
    code, lines = report(nb)
    assert code == 1
    assert any(line.startswith("UNCHECKED q3e_softmax: not counted as passed: (e) not checked here") for line in lines)
    assert any(line.startswith("UNCHECKED q3f_weighted_values:") for line in lines)
    graded = sum(1 for c in nb.cells if nbu.is_test_cell(c) and nbu.meta(c).get("grade"))
    assert f"{graded - 2} visible test cells passed" in lines[-1] and "2 not checked yet" in lines[-1]


def test_source_notebook_has_no_false_blank_and_says_hidden():
    """On a source notebook (what course staff validate), are `### STUB:` lines not read as blanks,
    and does the summary say its test cells hold hidden tests instead of calling them visible?"""
    for stem in (Q3, Q6, Q12):
        nb = nbu.read(SOURCE / f"{stem}.ipynb")
        assert any("### STUB:" in c.source and "_____" in c.source for c in nb.cells)
        code, lines = report(nb)
        assert code == 0, lines
        assert "with hidden tests, run as at grading" in lines[-2] and "visible" not in lines[-2]
    code, lines = report(stubbed(Q3))
    assert code == 1 and "visible test cells passed" in lines[-1] and "hidden" not in lines[-1]


@pytest.mark.slow
def test_validate_source_and_release(tmp_path):
    """Does ./kit validate exit 0 on a source notebook (its hidden tests run and pass) and 1 on the
    release, where the untouched (e) and (f) fail (they are blanks, not passes) and the written answer is listed?"""
    src = kit(ROOT, "validate", str(SOURCE / f"{Q3}.ipynb"))
    assert src.returncode == 0, src.stdout + src.stderr
    assert "with hidden tests, run as at grading" in src.stdout and "BLANK" not in src.stdout
    folder = tmp_path / "release"
    shutil.copytree(RELEASE, folder)
    rel = kit(ROOT, "validate", str(folder / f"{Q3}.ipynb"))
    assert rel.returncode == 1, rel.stdout + rel.stderr
    assert "FAIL     q3e_softmax: AssertionError: (e) is still a blank" in rel.stdout, rel.stdout
    assert "FAIL     q3f_weighted_values: AssertionError: (f) is still a blank" in rel.stdout, rel.stdout
    assert "WRITTEN  q3b_explanation" in rel.stdout and " 0 visible test cells passed" in rel.stdout


# -- ./kit check ---------------------------------------------------------------------------------------
def test_check_says_why_a_cell_failed(tmp_path):
    """Does ./kit check's FAIL line come with each failing cell's message ('ename: evalue', as feedback
    shows it), and nothing for a listed cell that did not raise?"""
    nb = nbu.fill(nbu.read(SOURCE / f"{Q3}.ipynb"))
    cell(nb, "q3a_W_k").outputs = [nbformat.v4.new_output(
        "error", ename="AssertionError", evalue="(a) W_k has the wrong size\nsecond line", traceback=[])]
    path = tmp_path / f"{Q3}.ipynb"
    nbu.write(nb, path)
    assert why(path, ["q3a_W_k", "q3b_W_v"]) == ["q3a_W_k: AssertionError: (a) W_k has the wrong size"]
    assert "no autograded notebook" in why(tmp_path / "missing.ipynb", ["q3a_W_k"])[0]


@pytest.mark.slow
def test_check_prints_the_failure_message(tmp_path):
    """When a source notebook's solution is wrong, does ./kit check exit 1 and print, under the FAIL line,
    the failing cell with its message (and, first, the sandbox line with the syscall filter's state)?"""
    from attnkit import sandbox
    from attnkit.course import Course

    course = Course(ROOT).scratch_copy(parent=str(tmp_path), notebooks=[Q3])
    path = course.path("source", "hw9", f"{Q3}.ipynb")
    nb = nbu.read(path)
    right = "self.W_k = nn.Linear(d_model, d_model)\n"
    assert cell(nb, "q3_mha").source.count(right) == 1
    cell(nb, "q3_mha").source = cell(nb, "q3_mha").source.replace(right, "self.W_k = nn.Linear(d_model, d_model + 1)\n")
    nbu.write(nb, path)
    out = kit(course.root, "check", "hw9")
    assert out.returncode == 1, out.stdout + out.stderr
    assert sandbox.describe(sandbox.detect()) in out.stderr and "syscall filter: " in out.stderr
    lines = out.stdout.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL source notebook as submitted: {Q3}"))
    assert "q3a_W_k" in lines[fail]
    why_a = next(line for line in lines[fail + 1:] if line.strip().startswith("q3a_W_k: "))
    assert why_a.split(": ", 2)[1].isidentifier() and len(why_a.split(": ", 2)[2]) > 0, why_a


# -- the formgrader ------------------------------------------------------------------------------------
def test_formgrader_finds_its_exchange(tmp_path):
    """Does the course configuration leave the formgrader nothing to warn about: is the exchange folder
    there (NbGraderAPI.exchange_missing False, the condition of its 'does not exist' warning)?"""
    from attnkit.course import Course

    for name in ("course_config.py", "nbgrader_config.py"):
        shutil.copy2(ROOT / name, tmp_path / name)
    api = Course(tmp_path).api()  # what the formgrader's handlers build on every page
    assert api.exchange_root == str(tmp_path / "exchange")
    assert api.exchange_missing is False and api.exchange_is_functional


# -- the documentation ---------------------------------------------------------------------------------
def test_python_version_is_stated_one_way():
    """Do pyproject.toml, the README and docs/, the student README and setup.sh state the same Python,
    the one this suite runs on?"""
    import re
    import sys

    from attnkit.authoring import bundle
    from attnkit.lms import gradescope

    tested = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'requires-python = ">=(\d+\.\d+)[,"]', pyproject).group(1) == tested
    readme = "".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    stated = set(re.findall(r"Python (3\.\d+)", readme + bundle.README))
    assert stated == {tested}, stated
    assert f"python{tested}" in gradescope.SETUP_SH


def test_every_benchmark_the_readme_names_exists():
    """Is every benchmarks/ script the README or docs/ cites for a figure in the repository?"""
    import re

    text = "".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    named = set(re.findall(r"benchmarks/([a-z_]+\.py)", text))
    assert {"fresh_clone.py", "small_costs.py", "gradescope_limits.py"} <= named
    assert not [n for n in named if not (ROOT / "benchmarks" / n).is_file()]
