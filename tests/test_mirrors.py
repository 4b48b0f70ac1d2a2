"""What the student's helper must mirror from the kit (it stands alone in the student's JupyterLab): the same blank
label, the same line for a blank still left, the same line-by-line run and its accessors, the same part -> method
table as the grader helper. Fast tier."""
from __future__ import annotations

import functools
import importlib.util
import linecache
import sys
from pathlib import Path

import pytest
import torch

from attnkit.grader import hidden
from attnkit.kernel import agent

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"
GRADER = ROOT / "graders" / "hw9.py"


@functools.lru_cache(maxsize=1)
def helper():
    """The student's helper, imported once under a name of its own."""
    spec = importlib.util.spec_from_file_location("attention_checks_mirrors", SOURCE / "attention_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raised_on(line: str):
    """The traceback of ``line`` (a cell line holding a blank) raising NameError, as a cell's would."""
    name = f"<cell-mirrors-{abs(hash(line))}>"
    src = f"def f():\n    {line}\n"
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns = {}
    exec(compile(src, name, "exec"), ns)
    try:
        ns["f"]()
    except NameError as exc:
        return exc.__traceback__
    raise AssertionError("the line did not raise")


LINES = ["x = _____  # (d)", "x = _____ @ k  # (b-ii)", "x = _____  #(another blank)", "x = _____  # (D)",
         "x = _____", "x = _____  # see (the notes)", "x = _____  # (a) and (b)"]


@pytest.mark.parametrize("line", LINES)
def test_the_kernel_and_the_helper_read_the_same_blank_label(line):
    """Does the student's helper name a blank's line as the kernel's agent does (the grader's message), (b-ii) too?"""
    tb = raised_on(line)
    assert helper()._blank_label(tb) == (agent._blank_label(tb) or "a blank")
    assert helper()._LABEL.pattern == agent.BLANK_LABEL.pattern


@pytest.mark.parametrize("part", ["(d)", "(b) W_v", "(d) scores", "whole layer"])
@pytest.mark.parametrize("label", [None, "a blank", "(d)", "(a)", "(b-ii)"])
def test_a_blank_still_left_gets_the_same_line_in_the_grader_and_the_helper(part, label):
    """Is the line for a blank still left the same in a hidden test (grader) and in a visible check (helper)?"""
    assert hidden.blank_words(part, label) == helper().blank_words(part, label)


def test_the_grader_helper_uses_the_helpers_part_table():
    """Is the part -> method table one copy: the grader helper's is the student's helper's?"""
    sys.path.insert(0, str(SOURCE))
    try:
        helpers, hw9 = hidden.load_grader(GRADER, SOURCE)
    finally:
        sys.path.remove(str(SOURCE))
    assert hw9.PART_METHODS is helpers["attention_checks"]._PART_METHODS
    assert hw9.PART_METHODS["(g)"] == ("split_heads",)


STEPS = '''
import torch


def steps(x):
    a = x + 1
    b = _____ * 2  # (b)
    c = a + b
    d = c.sum()  # (d)
    return d
'''


@pytest.mark.parametrize("replace", [(), ("c",)])
def test_the_kernel_and_the_helper_trace_a_method_line_by_line_alike(replace):
    """Given the same function, a failing line and the same stand-ins, does the helper's line-by-line run (the visible
    checks') bind, skip and return what the kernel's traced call (the hidden tests') does, through the same accessors?"""
    from attnkit.inprocess import in_process

    name = f"<cell-steps-{len(replace)}>"
    linecache.cache[name] = (len(STEPS), None, STEPS.splitlines(True), name)
    ns = {}
    exec(compile(STEPS, name, "exec"), ns)
    x = torch.arange(3.0)
    standins = {"b": torch.ones(3), "c": torch.full((3,), 5.0)}
    kernel = in_process(ns, [STEPS])
    fn = kernel.lookup({"steps"})["steps"]
    traced = kernel.call_traced(fn, x, functions=[fn], watch=("a", "b", "c", "d"), standins=standins,
                                skip_failures=True, replace=replace)
    lines = helper().run_lines(ns["steps"], x, watch=("a", "b", "c", "d"), standins=standins, replace=replace)
    assert [n for n, _ in traced.history] == [n for n, _ in lines.history]
    assert all(torch.equal(u, v) for (_, u), (_, v) in zip(traced.history, lines.history))
    assert torch.equal(traced.value, lines.value) and traced.error is None and lines.error is None
    assert [s["assigns"] for s in traced.skipped] == [s["assigns"] for s in lines.skipped] == ["b"]
    for name in ("a", "b", "c", "d", "e"):
        assert (traced.first(name) is None) == (lines.first(name) is None)
        assert (traced.last_before(name, "d") is None) == (lines.last_before(name, "d") is None)


def test_a_quadratic_time_reads_the_same_in_a_visible_check_and_a_hidden_test(monkeypatch):
    """Does the verdict line for a time that grows quadratically say the same thing (part, device, clock, exponent,
    "quadratic, not linear in N") in the student's visible check as in the grader's hidden test?"""
    from attnkit.grader import growth

    r = {"sizes": [256, 512], "times": [1e-3, 4e-3], "fit": (0.0, 0.0, 1e-9), "statistic": 2.0, "exponents": [2.0],
         "verdict": "quadratic", "clock": "CPU", "threshold": 1.5, "seconds": 1.0}
    monkeypatch.setattr(growth, "measure_time_growth", lambda *a, **k: r)
    student = helper()
    monkeypatch.setattr(student, "measure_growth", lambda *a, **k: r)
    with pytest.raises(AssertionError) as graded:
        growth.check_linear_time(None, None, None, None, part="Q6(c)", device="cpu")
    with pytest.raises(AssertionError) as visible:
        student.check_linear_time(None, None, part="Q6(c)", device="cpu")
    g, v = str(graded.value), str(visible.value)
    assert g.split(" (")[0] == v.split(" (")[0] == "Q6(c): on cpu the CPU time grows like N^2.00"
    assert g.endswith(" -- that is quadratic, not linear in N") and v.endswith(" -- that is quadratic, not linear in N")
