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

    def preprocess(self, nb, resources):
        nb, resources = super().preprocess(nb, resources)
        nb.metadata = NotebookNode({k: v for k, v in nb.metadata.items() if k == "kernelspec"})
        nb.metadata["language_info"] = NotebookNode(name="python")
        return nb, resources

    def preprocess_cell(self, cell, resources, cell_index):
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        trusted = self._trusted(gid) if gid else None
        # The flags first: nbgrader's checksum of a locked cell covers them, then super() puts the source back.
        cell.metadata = NotebookNode({"nbgrader": trusted} if trusted else {})
        return super().preprocess_cell(cell, resources, cell_index)

    def _trusted(self, gid):
        """The nbgrader metadata of the gradebook's cell ``gid`` (nbgrader's schema 3); None if unknown."""
        nb_id, aid = self.notebook_id, self.assignment_id
        try:
            source = self.gradebook.find_source_cell(gid, nb_id, aid)
        except MissingEntry:
            return None
        flags = NotebookNode(grade_id=gid, cell_type=source.cell_type, locked=bool(source.locked),
                             checksum=source.checksum, grade=False, solution=False, task=False,
                             schema_version=3)
        for kind, finder in (("grade", self.gradebook.find_graded_cell),
                             ("solution", self.gradebook.find_solution_cell),
                             ("task", self.gradebook.find_task_cell)):
            try:
                found = finder(gid, nb_id, aid)
            except MissingEntry:
                continue
            if kind == "grade" and type(found).__name__ == "TaskCell":
                continue  # find_graded_cell also answers for task cells
            flags[kind] = True
            if kind in ("grade", "task"):
                flags["points"] = float(found.max_score)
        return flags
