"""The release checks alone, on a tiny course in a temporary folder (fast tier).

The release here is made by ``notebooks.fill(default="stub")`` (what nbgrader's generation does
to solution regions), then spoiled one way per test to see the check refuse it.
"""
from __future__ import annotations

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.grader.hidden import GRADER_LINE
from attnkit.authoring.release import bare_expression_cells, grader_only_names, problems, secret_scan

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
        "helper.py: reference_answer_check is used only by hidden tests; keep it in the assignment's grader "
        "helper (CourseExecute.graders, e.g. graders/<assignment>.py), not in a file students receive"]


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


# ---- Give-aways a program can find: the options run on the inputs the release hands out ----

import shutil
from pathlib import Path

from attnkit.authoring.giveaways import runnable_giveaways

ROOT = Path(__file__).resolve().parent.parent

MQ_HELPER = '''
import torch


def mq_inputs(b, d, h, *, shapes=None):
    """x [b, d] and the two weights: in fixed shapes (the give-away) or in the shapes the caller names."""
    k = d // h
    size = dict(b=b, d=d, h=h, k=k, q=k)
    wq, wk = shapes or ("hdq", "dk")
    return torch.randn(b, d), torch.randn(*[size[c] for c in wq]), torch.randn(*[size[c] for c in wk])
'''


def _mq_source(visible):
    def mc(letter, question, options, right):
        listed = "\n".join(f"{i}. `{o}`" for i, o in enumerate(options, 1))
        return [new_markdown_cell(f"**({letter})** {question}\n\n{listed}"),
                new_code_cell(f"### BEGIN SOLUTION ({letter})\nanswer_{letter} = {right}\n"
                              f"### STUB: answer_{letter} = _____\n### END SOLUTION",
                              metadata=_meta(f"answer_{letter}", solution=True))]
    return new_notebook(cells=[
        new_code_cell("import torch\nfrom mq import mq_inputs", metadata=_meta("setup", locked=True)),
        *mc("A", "What is the shape of `W_q`?", ["[h, d, q]", "[d, q]", "[h, q]"], 1),
        *mc("C", "Which expression computes `q`?", ['torch.einsum("bd,dq->bhq", x, W_q)',
                                                   'torch.einsum("bd,hdq->bhq", x, W_q)',
                                                   'torch.einsum("bhd,dq->bhq", x, W_q)'], 2),
        new_code_cell(visible, metadata=_meta("try_it", locked=True)),
    ])


def _mq_course(tmp_path, visible):
    for where in ("source", "release"):
        (tmp_path / where / "hw").mkdir(parents=True)
        (tmp_path / where / "hw" / "mq.py").write_text(MQ_HELPER)
    nbu.write(_mq_source(visible), tmp_path / "source" / "hw" / "mq.ipynb")
    nbu.write(nbu.fill(_mq_source(visible), default="stub"), tmp_path / "release" / "hw" / "mq.ipynb")
    return Course(tmp_path)


def test_inputs_in_the_answer_shape_are_found(tmp_path):
    """Is a release refused when its helper hands out W_q in the right option's shape, on which only the
    right einsum of (C) runs (even when the line sits inside a function)?"""
    course = _mq_course(tmp_path, "def try_it():\n    x, W_q, W_k = mq_inputs(2, 12, 3)\n    print(x.shape)")
    found = runnable_giveaways(course, "hw", course.path("release", "hw"))
    assert [f.split(":")[0] for f in found] == ["mq.ipynb (A)", "mq.ipynb (C)"], found
    assert "only the right option (2) runs" in found[1] and "mq_inputs(2, 12, 3)" in found[1]


def test_inputs_sized_by_named_constants_are_found(tmp_path):
    """Is the same give-away found when the sizes are named first (``b, d, h = 2, 12, 3``, in an earlier
    cell or the same one) and the helper is called with the names?"""
    course = _mq_course(tmp_path, "b, d, h = 2, 12, 3\nx, W_q, W_k = mq_inputs(b, d, h)")
    found = runnable_giveaways(course, "hw", course.path("release", "hw"))
    assert [f.split(":")[0] for f in found] == ["mq.ipynb (A)", "mq.ipynb (C)"], found
    assert "mq_inputs(2, 12, 3)" in found[1]
    nb = nbu.read(course.path("release", "hw", "mq.ipynb"))
    nb.cells.insert(1, new_code_cell("b = 2\nd, h = (12, 3)", metadata=_meta("sizes", locked=True)))
    nb.cells[-1].source = "def try_it():\n    x, W_q, W_k = mq_inputs(b, d, h)"
    nbu.write(nb, course.path("release", "hw", "mq.ipynb"))
    found = runnable_giveaways(course, "hw", course.path("release", "hw"))
    assert [f.split(":")[0] for f in found] == ["mq.ipynb (A)", "mq.ipynb (C)"], found
    nb.cells[1].source = "b = 2\nd, h = (12, 3)\nd = int(input())"  # no longer a constant
    nbu.write(nb, course.path("release", "hw", "mq.ipynb"))
    assert runnable_giveaways(course, "hw", course.path("release", "hw")) == []


def test_inputs_in_the_students_shapes_are_not_a_giveaway(tmp_path):
    """Does the check pass a helper that builds the weights in the shapes the student names (here from
    answer_A, still a blank in the release), and inputs in a wrong option's shape?"""
    course = _mq_course(tmp_path, "x, W_q, W_k = mq_inputs(2, 12, 3, shapes=(['hdq', 'dq', 'hq'][answer_A - 1], 'dk'))\n"
                                  "x2, W_q2, W_k2 = mq_inputs(2, 12, 3, shapes=('dq', 'dk'))")
    assert runnable_giveaways(course, "hw", course.path("release", "hw")) == []


def _real_release(tmp_path):
    dest = tmp_path / "release" / "hw9"
    shutil.copytree(ROOT / "release" / "hw9", dest)
    return Course(ROOT), dest


def test_the_real_release_hands_out_no_answer(tmp_path):
    """Does the released hw9 hand out no input on which only a right option runs, and no tensor in a
    graded shape?"""
    course, release = _real_release(tmp_path)
    assert runnable_giveaways(course, "hw9", release) == []


def test_the_old_q4_inputs_planted_in_the_real_release_is_found(tmp_path):
    """Would the old Q4 visible check (weights built in the right shapes by the kit) be refused, naming
    (A) to (E)?"""
    course, release = _real_release(tmp_path)
    nb = nbu.read(release / "q4_multiquery_attention.ipynb")
    nb.cells.append(new_code_cell('x, prev_K, prev_V, W_q, W_k, W_v, W_o = q4_inputs(2, 3, 12, 3, W_q="[h, d, q]", '
                                  'W_k="[d, k]", W_v="[d, v]", seed=1)'))
    nbu.write(nb, release / "q4_multiquery_attention.ipynb")
    found = runnable_giveaways(course, "hw9", release)
    assert sorted(f.split(":")[0] for f in found) == [f"q4_multiquery_attention.ipynb ({p})" for p in "ABCDE"], found


def test_the_old_q6_and_q12_give_aways_planted_in_the_real_release_are_found(tmp_path):
    """Would the old texts that stated answers (Q6's equation (6) in the intro and "with constant term 1",
    Q12's sqrt(d) in the intro and the Q2(b) conclusion) each be refused?"""
    course, release = _real_release(tmp_path)
    planted = {
        "q6_linear_attention.ipynb": ["$$V'_i \\;=\\; \\frac{\\phi(Q_i)^\\top \\sum_{j=1}^{N} \\phi(K_j) V_j^\\top}"
                                      "{\\phi(Q_i)^\\top \\sum_{j=1}^{N} \\phi(K_j)} \\tag{6}$$",
                                      "What is the degree-2 polynomial kernel *with constant term 1*?"],
        "q12_scaled_dot_product.ipynb": ["Q1 asks why attention divides the scores $q^\\top k$ by $\\sqrt{d}$.",
                                         "It checks that argmax attention passes **no** gradient to `q`."],
    }
    for name, texts in planted.items():
        nb = nbu.read(release / name)
        nb.cells += [new_markdown_cell(t) for t in texts]
        nbu.write(nb, release / name)
    found = "\n".join(secret_scan(course, "hw9", release))
    assert "contains solution text of q6_linear_attention" in found
    assert "states the answer of q6_linear_attention:q6_b_kernel_test ('constant term 1')" in found
    assert "states the answer of q12_scaled_dot_product:q1c_test ('\\\\sqrt{d}')" in found
    assert "states the answer of q12_scaled_dot_product:q2_grad_test ('passes **no** gradient')" in found
