"""ScrubTestOutputs: feedback shows ``ename: evalue`` for test cells, never the traceback lines, which quote hidden
test source."""
from __future__ import annotations

from nbgrader.preprocessors import NbGraderPreprocessor

from attnkit.authoring import markup
from attnkit.authoring.notebooks import is_test_cell
from attnkit.batch.results import error_message


class ScrubTestOutputs(NbGraderPreprocessor):
    """For feedback: a test cell shows only ``ename: evalue`` of its error.

    Tracebacks quote hidden test lines, and a student's function could print the calling
    test's source; so test cells keep no other output, and any hidden-test line that
    still appears in an error message is redacted.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        if is_test_cell(cell):
            hidden = markup.secret_lines(cell.source, (markup.HIDDEN,))
            kept = []
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    text = error_message(out)
                    for line in hidden:
                        text = text.replace(line, "[hidden test]")
                    out.traceback = [text]
                    out.evalue = text.split(": ", 1)[1] if ": " in text else ""
                    kept.append(out)
            cell.outputs = kept
        return cell, resources
