"""The grading line (attnkit/grader/channel.py ``Line``, attnkit/kernel/line.py): a test cell's hidden requests on
one Unix socket, served by one execution in a real sandboxed kernel. A request that never returns, a kernel that
dies during one, an agent that never connects and a callback each end as the grader says, and the next cell is
graded."""
from __future__ import annotations

import time

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from attnkit import sandbox
from attnkit.grader.hidden import GRADER_LINE
from test_sandbox import MODE, SANDBOXED

needs_sandbox = pytest.mark.skipif(not SANDBOXED, reason=f"no grading sandbox here ({MODE})")

STUDENT = '''
import os, time

def ident(x):
    return x

def uses(fn, n):
    return sum(fn(i) for i in range(n))

def spins(n):
    while n > 0:
        pass

def dies():
    os._exit(1)
'''


def _test_cell(gid: str, hidden: str):
    source = f"### BEGIN HIDDEN TESTS\n{GRADER_LINE}\n{hidden}\n### END HIDDEN TESTS"
    return new_code_cell(source, metadata={"nbgrader": {"grade": True, "solution": False, "locked": True,
                                                        "grade_id": gid, "points": 1}})


def _errors(cell) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for o in cell.outputs if o.output_type == "error"]


def _grade(tmp_path, *cells, timeout=120):
    nb = new_notebook(cells=[new_code_cell(STUDENT), *cells])
    t0 = time.monotonic()
    nb, _ = sandbox.CourseExecute(timeout=timeout).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    return nb.cells[1:], time.monotonic() - t0


@needs_sandbox
def test_requests_and_callbacks_cross_and_each_cell_gets_its_own_session(tmp_path):
    """Do many requests and a test function called back by the student's code give the right values, in two cells
    in a row (each its own session), with the kernel idle again after each?"""
    hidden = ("assert [ident(i) for i in range(300)] == list(range(300))\n"
              "assert uses(lambda x: 2 * x, 200) == 2 * sum(range(200))\n"
              "print('both right')")
    cells, _ = _grade(tmp_path, _test_cell("t1", hidden), _test_cell("t2", hidden))
    for cell in cells:
        assert not _errors(cell), cell.outputs
        assert [o.get("text") for o in cell.outputs] == ["both right\n"]


@needs_sandbox
def test_a_request_that_never_returns_times_out_and_the_next_cell_is_graded(tmp_path):
    """Is a hidden request that spins forever stopped at the cell's timeout (CellTimeoutError), the kernel
    interrupted, and the next test cell graded in the same kernel?"""
    cells, took = _grade(tmp_path, _test_cell("t_spin", "spins(1)"), _test_cell("t_after", "assert ident(5) == 5"),
                         timeout=6)
    assert any(e.startswith("CellTimeoutError: stopped after 6") for e in _errors(cells[0])), cells[0].outputs
    assert not _errors(cells[1]), cells[1].outputs
    assert took < 60, took


@needs_sandbox
def test_a_kernel_that_dies_during_a_request_fails_that_cell_only(tmp_path):
    """Does a kernel that exits during a hidden request fail that cell with KernelDied, and is the next test cell
    graded in a restarted kernel?"""
    cells, _ = _grade(tmp_path, _test_cell("t_dies", "dies()"), _test_cell("t_after", "assert ident(7) == 7"))
    assert any(e.startswith("KernelDied") for e in _errors(cells[0])), cells[0].outputs
    assert not _errors(cells[1]), cells[1].outputs


# the kernel's process killed from the grader's side, as the out-of-memory killer of a container the grader shares
# (Gradescope's) kills it while the grader allocates; its oldest process is the kernel itself
KILL_KERNEL = ("import os, signal, time\n"
               "_procs = meter.procs()\n"
               "os.kill(min(_procs, key=_procs.get), signal.SIGKILL)\n"
               "time.sleep(1)\n")


@needs_sandbox
def test_a_kernel_killed_from_outside_between_requests_is_said_to_have_died(tmp_path):
    """When the kernel is killed between two requests of a hidden test, does that cell fail with KernelDied and the
    likely causes, not as a protocol break blamed on the student's notebook, fail every later request of the cell at
    once, and is the next cell graded?"""
    hidden = ("from attnkit.grader.remote import KernelGone\nassert ident(1) == 1\n" + KILL_KERNEL +
              "try:\n    ident(2)\nexcept KernelGone as exc:\n    first = exc\n"
              "t = time.monotonic()\n"
              "try:\n    ident(3)\nexcept KernelGone as exc:\n    print(type(exc).__name__, type(first).__name__, "
              "time.monotonic() - t < 0.5)\n"
              "raise first")
    cells, _ = _grade(tmp_path, _test_cell("t_killed", hidden), _test_cell("t_after", "assert ident(7) == 7"))
    errors = _errors(cells[0])
    assert len(errors) == 1 and errors[0].startswith("KernelDied") and "too much memory" in errors[0], errors
    assert [o.get("text") for o in cells[0].outputs if o.output_type == "stream"] == ["KernelDied KernelDied True\n"]
    assert not _errors(cells[1]), cells[1].outputs


@needs_sandbox
def test_a_kernel_killed_after_its_last_reply_is_restarted_before_the_next_cell(tmp_path):
    """When the kernel is killed after the last reply of a cell's hidden tests (every assertion of that cell passed),
    does that cell keep its pass and the kernel start again before the next cell, which is then graded on its own
    merits, not failed as the cell that found the kernel dead?"""
    cells, _ = _grade(tmp_path, _test_cell("t_done", "assert ident(1) == 1\n" + KILL_KERNEL),
                      _test_cell("t_after", "assert ident(7) == 7"))
    assert not _errors(cells[0]), cells[0].outputs
    assert not _errors(cells[1]), cells[1].outputs


@needs_sandbox
def test_an_agent_that_never_connects_fails_the_cell_at_once(tmp_path):
    """When the student's code replaces the line's session with one that returns at once, does the cell fail with
    KernelGone as soon as that execution ends, not at the cell's timeout?"""
    patch = new_code_cell("import attnkit.kernel.line as _L\n_L.session = lambda path: None")
    cells, took = _grade(tmp_path, patch, _test_cell("t_gone", "assert ident(1) == 1"), timeout=60)
    assert any(e.startswith("KernelGone") and "grading line" in e for e in _errors(cells[1])), cells[1].outputs
    assert took < 40, took
