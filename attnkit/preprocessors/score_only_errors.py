"""ScoreOnlyErrors: a test cell is scored by "did it raise?" alone: stderr text (library warnings) no longer zeroes
it, and a value it happens to display is never read as a score."""
from __future__ import annotations

from nbgrader.preprocessors import NbGraderPreprocessor

from attnkit.authoring.notebooks import is_test_cell


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
