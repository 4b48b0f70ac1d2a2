"""nbgrader preprocessors that close the traps listed in ../shared/NBGRADER_NOTES.md.

* ClearSolutionsWithStubs - a solution region may carry its own stub (``### STUB: ...``
  lines), so students see the homework's skeleton with labelled blanks instead of a bare
  ``raise NotImplementedError()`` that hides the code around the blank.
* ScoreOnlyErrors - a test cell is scored by "did it raise?" alone: stderr text (library
  warnings) no longer zeroes it, and a value it happens to display is never read as a score.
* ScrubTestOutputs - feedback shows ``ename: evalue`` for test cells, never the traceback
  lines, which quote hidden test source.

CourseExecute (the course's kernel, in the grading sandbox) lives in attnkit/sandbox.py.
"""
from __future__ import annotations

import re

from nbgrader import utils
from nbgrader.preprocessors import ClearSolutions, DeduplicateIds, NbGraderPreprocessor

STUB_PREFIX = "### STUB:"


def is_test_cell(cell) -> bool:
    """A locked, autograded test cell (not a manually graded answer)."""
    return utils.is_grade(cell) and not utils.is_solution(cell) and cell.cell_type == "code"


class ClearSolutionsWithStubs(ClearSolutions):
    """Replace each ``### BEGIN SOLUTION`` region by its own stub when it has one.

    Source::

        ### BEGIN SOLUTION (a)
        self.W_k = nn.Linear(d_model, d_model)
        ### STUB: self.W_k = nn.Linear(d_model, _____)  # (a)
        ### END SOLUTION

    Release::

        self.W_k = nn.Linear(d_model, _____)  # (a)

    A region without ``### STUB:`` lines gets nbgrader's usual code or text stub.
    """

    def _replace_solution_region(self, cell, language):
        lines = cell.source.split("\n")
        default_stub = (self.code_stub[language] if cell.cell_type == "code" else self.text_stub).split("\n")
        out, region, indent, in_solution, replaced = [], [], "", False, False
        for line in lines:
            if self.begin_solution_delimeter in line:
                if in_solution:
                    raise RuntimeError("encountered nested begin solution statements")
                in_solution, replaced, region = True, True, []
                indent = re.match(r"\s*", line).group(0)
            elif self.end_solution_delimeter in line and in_solution:
                stubs = [r.strip()[len(STUB_PREFIX):] for r in region if r.strip().startswith(STUB_PREFIX)]
                stubs = [s[1:] if s.startswith(" ") else s for s in stubs]
                for stub_line in (stubs or default_stub):
                    out.append((indent + stub_line) if stub_line else "")
                in_solution = False
            elif in_solution:
                region.append(line)
            else:
                out.append(line)
        if in_solution:
            raise RuntimeError("no end solution statement found")
        cell.source = "\n".join(out)
        return replaced


class DropDuplicateIds(DeduplicateIds):
    """nbgrader's DeduplicateIds, finished: a copied or split cell loses its nbgrader metadata.

    nbgrader leaves ``nbgrader: {}`` on the copy, and OverwriteCells (add_missing_cells) then
    fails with KeyError 'grade_id', so a duplicated cell used to cost the whole notebook.
    """

    def preprocess(self, nb, resources):
        nb, resources = super().preprocess(nb, resources)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if meta is not None and "grade_id" not in meta:
                del cell.metadata["nbgrader"]
        return nb, resources


class ScoreOnlyErrors(NbGraderPreprocessor):
    """Make a test cell's score depend only on whether it raised.

    nbgrader zeroes a test cell that wrote anything to stderr and reads its first
    displayed value as a partial score (a bare ``False`` even scores full marks).
    Run before SaveAutoGrades: stderr text becomes stdout text (still shown) and
    displayed values become plain display data (still shown, never scored).
    """

    def preprocess_cell(self, cell, resources, cell_index):
        if is_test_cell(cell):
            for out in cell.get("outputs", []):
                if out.output_type == "stream" and out.name == "stderr":
                    out.name = "stdout"
                elif out.output_type == "execute_result":
                    out.output_type = "display_data"
                    out.pop("execution_count", None)
        return cell, resources


class ScrubTestOutputs(NbGraderPreprocessor):
    """For feedback: a test cell shows only ``ename: evalue`` of its error.

    Tracebacks quote hidden test lines, and a student's function could print the calling
    test's source; so test cells keep no other output, and any hidden-test line that
    still appears in an error message is redacted.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        if is_test_cell(cell):
            hidden = _hidden_lines(cell.source)
            kept = []
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    text = f"{out.ename}: {out.evalue}"
                    for line in hidden:
                        text = text.replace(line, "[hidden test]")
                    out.traceback = [text]
                    out.evalue = text.split(": ", 1)[1] if ": " in text else ""
                    kept.append(out)
            cell.outputs = kept
        return cell, resources


def _hidden_lines(source: str) -> list[str]:
    lines, inside = [], False
    for line in source.split("\n"):
        if "BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "END HIDDEN TESTS" in line:
            inside = False
        elif inside and len(line.strip()) >= 8:
            lines.append(line.strip())
    return lines
