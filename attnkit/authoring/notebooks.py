"""Instructor notebooks as a whole: cell kinds, solution regions, student-style copies, secrets.

The markup inside a cell is read by ``attnkit.authoring.markup`` alone; this module applies it to every
cell of a notebook (with the notebook and cell named in any error). Submissions for the demo
and the fixture banks are built from a source notebook by choosing, for every solution
region, the solution, the student stub, or other code.
"""
from __future__ import annotations

import copy
import textwrap
from dataclasses import dataclass

import nbformat

from attnkit.authoring import markup


def read(path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def write(nb, path) -> None:
    nbformat.write(nb, str(path))


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell) -> str | None:
    return meta(cell).get("grade_id")


def is_test_cell(cell) -> bool:
    """A locked, autograded test cell (not a manually graded answer)."""
    m = meta(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell.cell_type == "code"


def is_answer_cell(cell) -> bool:
    return bool(meta(cell).get("solution"))


def is_manual_cell(cell) -> bool:
    m = meta(cell)
    return bool(m.get("grade")) and bool(m.get("solution"))


def parsed(nb, path=None):
    """(cell, items) for every cell, parsed once; MarkupError names the notebook and cell."""
    name = str(path or "")
    return [(cell, markup.parse(cell.source, notebook=name, cell=grade_id(cell) or f"#{i}"))
            for i, cell in enumerate(nb.cells)]


@dataclass
class Region:
    label: str
    cell_id: str
    cell_type: str
    indent: str
    solution: list[str]   # the instructor's lines
    stub: list[str]       # what students see instead


def regions(nb) -> list[Region]:
    """Every solution region of every answer cell, in order (unlabelled ones take the cell's grade_id)."""
    out = []
    for cell, items in parsed(nb):
        if is_answer_cell(cell):
            for r in items:
                if isinstance(r, markup.Region) and r.kind == markup.SOLUTION:
                    out.append(Region(r.label or grade_id(cell), grade_id(cell), cell.cell_type, r.indent, r.body,
                                      r.stub))
    return out


def fill(source_nb, answers: dict[str, str] | None = None, default: str = "solution",
         keep_hidden: bool = False) -> nbformat.NotebookNode:
    """A student-style copy of a source notebook.

    Every solution region becomes its solution (``default="solution"``) or its stub
    (``default="stub"``), except the labels in ``answers``, which get that code (dedented,
    then indented like the region). Hidden tests and mark schemes are removed unless
    ``keep_hidden`` (test cells are restored from the gradebook at autograde anyway).
    """
    answers = {k: textwrap.dedent(v).strip("\n").split("\n") for k, v in (answers or {}).items()}
    nb = copy.deepcopy(source_nb)
    used = set()
    for i, cell in enumerate(nb.cells):
        where = {"cell": grade_id(cell) or f"#{i}"}
        if is_answer_cell(cell):
            stub = markup.CODE_STUB if cell.cell_type == "code" else markup.TEXT_STUB
            cell.source, got = markup.render(cell.source, solutions=default, replace=answers,
                                             keep=(markup.HIDDEN, markup.MARK_SCHEME) if keep_hidden else (),
                                             default_stub=stub, default_label=grade_id(cell) or "", **where)
            used |= got
        elif not keep_hidden:
            cell.source, _ = markup.render(cell.source, **where)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    unknown = set(answers) - used
    if unknown:
        raise KeyError(f"no solution region labelled {sorted(unknown)}")
    return nb


def outside(nb, kinds) -> set:
    """Stripped lines of the notebook that are outside regions of these kinds."""
    seen = set()
    for cell, items in parsed(nb):
        for item in items:
            if isinstance(item, str):
                seen.add(item.strip())
            elif item.kind not in kinds:
                seen.update(l.strip() for l in item.body)
    return seen


def hidden_lines(nb) -> list[str]:
    """Lines that must never reach a student: hidden tests and mark schemes (lines that also
    appear elsewhere in the notebook, like an import, are left out)."""
    kinds = (markup.HIDDEN, markup.MARK_SCHEME)
    elsewhere = outside(nb, kinds)
    return [l for cell in nb.cells for l in markup.secret_lines(cell.source, kinds) if l not in elsewhere]


def assignment_hidden_lines(paths) -> list[str]:
    """Hidden-test and mark-scheme lines of several notebooks (one assignment), less any line
    that one of them shows students (a shared import or a visible check is no secret)."""
    notebooks = [read(p) for p in paths]
    shown = set().union(set(), *(outside(nb, (markup.HIDDEN, markup.MARK_SCHEME)) for nb in notebooks))
    return list(dict.fromkeys(l for nb in notebooks for l in hidden_lines(nb) if l not in shown))


def solution_lines(nb) -> list[str]:
    """Solution lines (not comments) that do not also appear outside solution regions."""
    elsewhere = outside(nb, (markup.SOLUTION, markup.HIDDEN))
    return [l for cell in nb.cells for l in markup.secret_lines(cell.source, (markup.SOLUTION,))
            if l not in elsewhere and not l.startswith("#")]


def answer_texts(nb) -> list[tuple[str, str]]:
    """(grade_id, text) of every ``ANSWER TEXT`` a hidden region declares."""
    return [(grade_id(cell), a) for cell, items in parsed(nb) for r in items
            if isinstance(r, markup.Region) for a in r.answers]


def points(nb) -> dict[str, float]:
    """grade_id -> points of every graded cell."""
    return {grade_id(c): float(meta(c).get("points", 0)) for c in nb.cells if meta(c).get("grade")}


def part_labels(nb) -> dict[str, str]:
    """grade_id -> the part's name as the homework says it ("Q3(a) blank (b): size of W_v"), declared once in the
    source notebook's metadata (``attnkit.parts``); a part without one keeps its grade id."""
    parts = (nb.get("metadata", {}).get("attnkit") or {}).get("parts") or {}
    return {str(k): str(v) for k, v in parts.items() if isinstance(v, str)}


def part_label(labels: dict, gid: str) -> str:
    return labels.get(gid) or gid
