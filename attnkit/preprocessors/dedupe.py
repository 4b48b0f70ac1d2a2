"""DropDuplicateIds: nbgrader's DeduplicateIds, finished: a copied or split cell loses its nbgrader metadata."""
from __future__ import annotations

from nbgrader.preprocessors import DeduplicateIds


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
