"""The release checks alone, on a tiny course in a temporary folder (fast tier).

The release here is made by ``notebooks.fill(default="stub")`` (what nbgrader's generation does
to solution regions), then spoiled one way per test to see the check refuse it.
"""
from __future__ import annotations

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from attnkit import notebooks as nbu
from attnkit.course import Course
from attnkit.grader.hidden import GRADER_LINE
from attnkit.release import bare_expression_cells, grader_only_names, problems, secret_scan

HELPER = '''
def check_shape(x, shape):
    """Visible tests use this."""
    assert tuple(x.shape) == shape


def _internal():
    return 1


def reference_answer_check(f):
    """Only hidden tests use this."""
    return f(2) == _internal() + 4
'''


def _meta(gid, **flags):
    return {"nbgrader": {"grade_id": gid, "schema_version": 3, "grade": flags.get("grade", False),
                         "solution": flags.get("solution", False), "locked": flags.get("locked", False),
                         **({"points": flags["points"]} if "points" in flags else {})}}


def _source():
    return new_notebook(cells=[
        new_markdown_cell("# Tiny\nWhat is the shape of `W_k`?"),
        new_code_cell("from helper import check_shape", metadata=_meta("setup", locked=True)),
        new_code_cell("def shape_of_W_k():\n    ### BEGIN SOLUTION (a)\n    return '[d, k]'\n"
                      "    ### STUB: return _____\n    ### END SOLUTION", metadata=_meta("a", solution=True)),
        new_code_cell("assert isinstance(shape_of_W_k(), str)\n### BEGIN HIDDEN TESTS\n" + GRADER_LINE + "\n"
                      "### ANSWER TEXT: [d, k]\nassert reference_answer_check(lambda n: n + 3)\n"
                      "assert shape_of_W_k().replace(' ', '') == '[d,k]'\n### END HIDDEN TESTS",
                      metadata=_meta("a_test", grade=True, locked=True, points=2)),
    ])


@pytest.fixture
def course(tmp_path):
    for where in ("source", "release"):
        (tmp_path / where / "hw").mkdir(parents=True)
        (tmp_path / where / "hw" / "helper.py").write_text(HELPER)
    nbu.write(_source(), tmp_path / "source" / "hw" / "tiny.ipynb")
    nbu.write(nbu.fill(_source(), default="stub"), tmp_path / "release" / "hw" / "tiny.ipynb")
    return Course(tmp_path)


def _edit_release(course, index, text):
    path = course.path("release", "hw", "tiny.ipynb")
    nb = nbu.read(path)
    nb.cells[index].source = text
    nbu.write(nb, path)


def test_a_clean_release_passes_except_grader_only_helpers(course):
    """Does the release check accept the stubbed notebook and name the helper only hidden tests use?"""
    assert problems(course, "hw") == [
        "helper.py: reference_answer_check is used only by hidden tests; keep it in the kit "
        "(attnkit.grader.checks), not in a file students receive"]


def test_an_import_in_a_visible_cell_is_not_a_use(course):
    """Can a name escape the grader-only check by being imported in the visible set-up cell?"""
    _edit_release(course, 1, "from helper import check_shape, reference_answer_check")
    assert any("reference_answer_check" in p for p in grader_only_names(course, "hw", course.path("release", "hw")))


def test_declared_answer_text_in_prose_is_refused(course):
    """Does prose that states a declared answer (whatever its spacing) fail, naming the cell and part?"""
    _edit_release(course, 0, "# Tiny\nHint: `W_k` is\n[d,   k].")
    found = secret_scan(course, "hw", course.path("release", "hw"))
    assert found == ["tiny.ipynb cell #0: states the answer of tiny:a_test ('[d, k]')"]


def test_answer_text_in_the_helper_file_is_refused(course):
    course.path("release", "hw", "helper.py").write_text(HELPER + "\n# W_k has shape [d, k]\n")
    assert any(p.startswith("helper.py: states the answer") for p in secret_scan(course, "hw", course.path("release", "hw")))


def test_solution_hidden_line_and_marker_are_refused(course):
    """Are a solution line, a hidden-test line and a leftover marker each caught in a released cell?"""
    _edit_release(course, 2, "def shape_of_W_k():\n    return '[d, k]'  # copied\n"
                             "assert shape_of_W_k().replace(' ', '') == '[d,k]'\n### BEGIN HIDDEN TESTS")
    found = "\n".join(secret_scan(course, "hw", course.path("release", "hw")))
    assert "contains solution text" in found and "hidden test or mark scheme text" in found
    assert "marker 'BEGIN HIDDEN TESTS'" in found


def test_unstubbed_answer_and_malformed_markup_are_refused(course):
    nb = _source()
    nb.cells[2].source = nb.cells[2].source.replace("    ### END SOLUTION", "")
    nbu.write(nb, course.path("source", "hw", "tiny.ipynb"))
    found = problems(course, "hw")
    assert any("cell a, line 2: 'BEGIN SOLUTION' is never closed" in p for p in found), found


def test_bare_expression_test_cell_is_found():
    """Would a test cell that ends in a bare expression (nbgrader scores its value) be refused?"""
    nb = _source()
    nb.cells[3].source += "\n1 == 2"
    assert bare_expression_cells(nb) == ["a_test"]
    nb.cells[3].source += "\nprint('done')"
    assert bare_expression_cells(nb) == []
