"""Reading instructor notebooks: solution regions, blanks, hidden tests.

A solution region may carry a label on its BEGIN line (``### BEGIN SOLUTION (e)``); an
unlabelled region is named after its cell's grade_id. Submissions for the demo and the
test fixtures are built from the source notebook by choosing, for every region, the
solution, the student stub, or some other code.
"""
from __future__ import annotations

import copy
import re
import textwrap
from dataclasses import dataclass

import nbformat

BEGIN_SOL, END_SOL = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
BEGIN_MS, END_MS = "BEGIN MARK SCHEME", "END MARK SCHEME"
STUB_PREFIX = "### STUB:"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"


def read(path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def write(nb, path) -> None:
    nbformat.write(nb, str(path))


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell) -> str | None:
    return meta(cell).get("grade_id")


def is_test_cell(cell) -> bool:
    m = meta(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell.cell_type == "code"


def is_answer_cell(cell) -> bool:
    return bool(meta(cell).get("solution"))


def is_manual_cell(cell) -> bool:
    m = meta(cell)
    return bool(m.get("grade")) and bool(m.get("solution"))


def _stub_text(line: str) -> str:
    """The code of a ``### STUB: code`` line, keeping its indentation relative to the region."""
    text = line.strip()[len(STUB_PREFIX):]
    return text[1:] if text.startswith(" ") else text


@dataclass
class Region:
    label: str
    cell_id: str
    indent: str
    solution: list[str]   # the instructor's lines
    stub: list[str]       # what students see instead


def _segments(cell) -> list:
    """An answer cell's source as ("text", line) and ("region", Region) items, in order."""
    items, inside, body, label, indent = [], False, [], "", ""
    for line in cell.source.split("\n"):
        if BEGIN_SOL in line:
            inside, body = True, []
            indent = re.match(r"\s*", line).group(0)
            label = line.split(BEGIN_SOL, 1)[1].strip().strip("()") or grade_id(cell)
        elif END_SOL in line and inside:
            stub = [_stub_text(l) for l in body if l.strip().startswith(STUB_PREFIX)]
            sol = [l for l in body if not l.strip().startswith(STUB_PREFIX)]
            items.append(("region", Region(label, grade_id(cell), indent, sol, stub)))
            inside = False
        elif inside:
            body.append(line)
        else:
            items.append(("text", line))
    return items


def regions(nb) -> list[Region]:
    """Every solution region of every answer cell, in order."""
    return [item for cell in nb.cells if is_answer_cell(cell)
            for kind, item in _segments(cell) if kind == "region"]


def _strip_region(source: str, begin: str, end: str) -> str:
    out, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            inside = True
        elif end in line and inside:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def fill(source_nb, answers: dict[str, str] | None = None, default: str = "solution",
         keep_hidden: bool = False) -> nbformat.NotebookNode:
    """A student-style copy of a source notebook.

    Every solution region becomes its solution (``default="solution"``) or its stub
    (``default="stub"``), except the labels in ``answers``, which get that code
    (dedented, then indented like the region). Hidden tests and mark schemes are removed
    unless ``keep_hidden`` (test cells are restored from the gradebook at autograde anyway).
    """
    answers = dict(answers or {})
    nb = copy.deepcopy(source_nb)
    used = set()
    for cell in nb.cells:
        if is_answer_cell(cell):
            out = []
            for kind, item in _segments(cell):
                if kind == "text":
                    out.append(item)
                elif item.label in answers:
                    used.add(item.label)
                    code = textwrap.dedent(answers[item.label]).strip("\n").split("\n")
                    out += [(item.indent + l) if l else "" for l in code]
                elif default == "solution":
                    out += item.solution
                else:
                    default_stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
                    out += [(item.indent + l) if l else "" for l in (item.stub or default_stub.split("\n"))]
            cell.source = "\n".join(out)
        if not keep_hidden:
            cell.source = _strip_region(cell.source, BEGIN_HIDDEN, END_HIDDEN)
            cell.source = _strip_region(cell.source, BEGIN_MS, END_MS)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    unknown = set(answers) - used
    if unknown:
        raise KeyError(f"no solution region labelled {sorted(unknown)}")
    return nb


def hidden_lines(nb) -> list[str]:
    """Non-trivial lines that must never reach a student: hidden tests and mark schemes
    (lines that also appear elsewhere in the notebook, like an import, are left out)."""
    secret, elsewhere = [], set()
    for cell in nb.cells:
        rest = _strip_region(_strip_region(cell.source, BEGIN_HIDDEN, END_HIDDEN), BEGIN_MS, END_MS)
        elsewhere.update(l.strip() for l in rest.split("\n"))
        for begin, end in ((BEGIN_HIDDEN, END_HIDDEN), (BEGIN_MS, END_MS)):
            inside = False
            for line in cell.source.split("\n"):
                if begin in line:
                    inside = True
                elif end in line:
                    inside = False
                elif inside and len(line.strip()) >= 12:
                    secret.append(line.strip())
    return [l for l in secret if l not in elsewhere]


def solution_lines(nb) -> list[str]:
    """Non-trivial solution lines that do not also appear outside solution regions."""
    outside = set()
    for cell in nb.cells:
        src = _strip_region(_strip_region(cell.source, BEGIN_SOL, END_SOL), BEGIN_HIDDEN, END_HIDDEN)
        outside.update(l.strip() for l in src.split("\n"))
    out = []
    for region in regions(nb):
        for line in region.solution:
            s = line.strip()
            if len(s) >= 12 and s not in outside and not s.startswith("#"):
                out.append(s)
    return out


def points(nb) -> dict[str, float]:
    """grade_id -> points of every graded cell."""
    return {grade_id(c): float(meta(c).get("points", 0)) for c in nb.cells if meta(c).get("grade")}
