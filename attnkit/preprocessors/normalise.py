"""NormaliseSubmission: nbgrader's OverwriteCells, finished: every field of a cell's or the notebook's metadata that
steers execution or grading (tags such as ``skip-execution`` or ``raises-exception``, the nbgrader flags and
points, the language info) comes from the gradebook, never from the submission; everything else in the metadata is
dropped."""
from __future__ import annotations

from nbformat import NotebookNode
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import OverwriteCells


class NormaliseSubmission(OverwriteCells):
    """OverwriteCells, then metadata rebuilt from the gradebook alone.

    nbgrader restores a locked cell's source, its points and lock, but keeps whatever else the
    submission's metadata says: a test cell tagged ``skip-execution`` is skipped by nbclient and,
    having no error, scored full marks; flags such as ``grade``/``solution`` stay as the student set
    them. Here each cell keeps only ``metadata.nbgrader``, rebuilt from the gradebook's record of
    that cell (a cell the gradebook does not know keeps none), and the notebook keeps only the
    kernelspec (OverwriteKernelspec sets it from the gradebook) and the language name.
    """

    _known = None  # kind -> {grade_id: the gradebook's cell}, for the notebook being normalised

    def preprocess(self, nb, resources):
        self._known = None
        try:
            nb, resources = super().preprocess(nb, resources)
        finally:
            self._known = None
        nb.metadata = NotebookNode({k: v for k, v in nb.metadata.items() if k == "kernelspec"})
        nb.metadata["language_info"] = NotebookNode(name="python")
        return nb, resources

    def preprocess_cell(self, cell, resources, cell_index):
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        trusted = self._trusted(gid) if gid else None
        # The flags first: nbgrader's checksum of a locked cell covers them, then super() puts the source back.
        cell.metadata = NotebookNode({"nbgrader": trusted} if trusted else {})
        book, self.gradebook = self.gradebook, _Cells(self.gradebook, self._cells(), self.notebook_id,
                                                      self.assignment_id)
        try:  # nbgrader's checks (type, lock, points, checksum), its lookups answered from what _cells() read
            return super().preprocess_cell(cell, resources, cell_index)
        finally:
            self.gradebook = book

    def _cells(self) -> dict:
        """The gradebook's cells of this notebook by kind and name: four queries a notebook, not three a cell."""
        if self._known is None:
            try:
                book = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
            except MissingEntry:
                book = None
            self._known = {kind: {c.name: c for c in getattr(book, kind)} if book is not None else {}
                           for kind in ("source_cells", "grade_cells", "solution_cells", "task_cells")}
        return self._known

    def _trusted(self, gid):
        """The nbgrader metadata of the gradebook's cell ``gid`` (nbgrader's schema 3); None if unknown."""
        known = self._cells()
        source = known["source_cells"].get(gid)
        if source is None:
            return None
        flags = NotebookNode(grade_id=gid, cell_type=source.cell_type, locked=bool(source.locked),
                             checksum=source.checksum, grade=False, solution=False, task=False,
                             schema_version=3)
        for kind, cells in (("grade", known["grade_cells"]), ("solution", known["solution_cells"]),
                            ("task", known["task_cells"])):
            found = cells.get(gid)
            if found is None:
                continue
            flags[kind] = True
            if kind in ("grade", "task"):
                flags["points"] = float(found.max_score)
        return flags


class _Cells:
    """The gradebook, with ``find_source_cell`` and ``find_graded_cell`` for one notebook answered as nbgrader answers
    them (a grade cell before a task cell of the same name) from its cells read once (NormaliseSubmission._cells)."""

    def __init__(self, gb, known: dict, notebook: str, assignment: str):
        self._gb, self._known, self._key = gb, known, (notebook, assignment)

    def find_source_cell(self, name: str, notebook: str, assignment: str):
        if (notebook, assignment) != self._key:
            return self._gb.find_source_cell(name, notebook, assignment)
        return self._one(name, "source_cells", kind="source cell", notebook=notebook, assignment=assignment)

    def find_graded_cell(self, name: str, notebook: str, assignment: str):
        if (notebook, assignment) != self._key:
            return self._gb.find_graded_cell(name, notebook, assignment)
        return self._one(name, "grade_cells", "task_cells", kind="grade cell", notebook=notebook, assignment=assignment)

    def _one(self, name, *kinds, kind, notebook, assignment):
        for cells in kinds:
            if name in self._known[cells]:
                return self._known[cells][name]
        raise MissingEntry(f"No such {kind}: {assignment}/{notebook}/{name}")

    def __getattr__(self, name):
        return getattr(self._gb, name)
