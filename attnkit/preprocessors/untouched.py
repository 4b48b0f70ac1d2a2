"""NameUntouchedParts: a part still as released fails with one message naming the part as the homework does ("still a
blank `_____`: fill it in", "not written yet")."""
from __future__ import annotations

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor

from attnkit.authoring import notebooks as nbu
from attnkit.authoring.notebooks import is_test_cell


class NameUntouchedParts(NbGraderPreprocessor):
    """A test cell whose part is still as released fails with one message, the same wherever it is read (feedback,
    Gradescope, the report, selfcheck.py): "<part>: still a blank `_____`: fill it in" or "<part>: not written
    yet: ...", never a bare ``NotImplementedError:`` or a NameError on ``_____``. The part is named as the homework
    names it (the source notebook's ``attnkit.parts`` metadata). Only the words change: a cell that failed still
    fails."""

    def preprocess(self, nb, resources):
        self._labels = self._source_labels(resources)
        if self._labels:  # the formgrader's page names the parts too (attnkit/templates/formgrade/index.html.j2)
            nb.metadata["attnkit"] = NotebookNode(parts=NotebookNode(self._labels))
        return super().preprocess(nb, resources)

    def _source_labels(self, resources) -> dict:
        from nbgrader.coursedir import CourseDirectory

        info = resources.get("nbgrader", {})
        try:
            cd = CourseDirectory(config=self.config)
            path = cd.format_path(cd.source_directory, ".", info["assignment"]) + f"/{info['notebook']}.ipynb"
            return nbu.part_labels(nbu.read(path))
        except Exception:  # noqa: BLE001 (no source notebook here: the grade ids name the parts)
            return {}

    def preprocess_cell(self, cell, resources, cell_index):
        from attnkit.student.selfcheck import untouched

        if is_test_cell(cell):
            gid = nbu.grade_id(cell)
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    words = untouched(nbu.part_label(self._labels, gid), str(out.get("ename", "")),
                                      str(out.get("evalue", "")))
                    if words is not None:
                        out.ename, out.evalue, out.traceback = "AssertionError", words, [f"AssertionError: {words}"]
        return cell, resources
