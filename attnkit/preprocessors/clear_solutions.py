"""ClearSolutionsWithStubs: a solution region may carry its own stub (``### STUB: ...`` lines), so students see the
homework's skeleton with labelled blanks instead of a bare ``raise NotImplementedError()`` that hides the code
around the blank."""
from __future__ import annotations

from nbgrader.preprocessors import ClearSolutions

from attnkit.authoring import markup, notebooks as nbu


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

    def preprocess(self, nb, resources):
        self._where = {"notebook": resources.get("unique_key", "")}
        return super().preprocess(nb, resources)

    def _replace_solution_region(self, cell, language):
        stub = self.code_stub[language] if cell.cell_type == "code" else self.text_stub
        where = dict(getattr(self, "_where", {}), cell=nbu.grade_id(cell) or "")
        if not markup.regions(cell.source, markup.SOLUTION, **where):
            return False
        cell.source, _ = markup.render(cell.source, solutions="stub", keep=(markup.HIDDEN, markup.MARK_SCHEME),
                                       default_stub=stub, **where)
        return True
