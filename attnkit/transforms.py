"""nbgrader preprocessors that close nbgrader's grading traps (README: "How grading avoids nbgrader's traps").

* ClearSolutionsWithStubs - a solution region may carry its own stub (``### STUB: ...``
  lines), so students see the homework's skeleton with labelled blanks instead of a bare
  ``raise NotImplementedError()`` that hides the code around the blank.
* ScoreOnlyErrors - a test cell is scored by "did it raise?" alone: stderr text (library
  warnings) no longer zeroes it, and a value it happens to display is never read as a score.
* NameUntouchedParts - a part still as released fails with one message naming the part as the homework
  does ("still a blank `_____`: fill it in", "not written yet").
* ScrubTestOutputs - feedback shows ``ename: evalue`` for test cells, never the traceback
  lines, which quote hidden test source.
* NormaliseSubmission - nbgrader's OverwriteCells, finished: every field of a cell's or the
  notebook's metadata that steers execution or grading (tags such as ``skip-execution`` or
  ``raises-exception``, the nbgrader flags and points, the language info) comes from the gradebook,
  never from the submission; everything else in the metadata is dropped.
* CapOutputs - outputs capped in bytes (text per cell, each image, the whole notebook), not in lines.
* CheckCellMetadataOnce - nbgrader's CheckCellMetadata, the same checks, with the metadata
  schema itself checked once per process instead of once per cell.

CourseExecute (the course's kernel, in the grading sandbox) lives in attnkit/sandbox.py.
"""
from __future__ import annotations

import json
import traceback

import jsonschema
from nbgrader.nbgraderformat import MetadataValidator, ValidationError
from traitlets import Integer
from nbgrader.nbgraderformat.common import BaseMetadataValidator, SchemaTooNewError, SchemaTooOldError
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import (CheckCellMetadata, ClearSolutions, DeduplicateIds, NbGraderPreprocessor,
                                    OverwriteCells)

from nbformat import NotebookNode

from attnkit import markup
from attnkit import notebooks as nbu
from attnkit.course import alembic_head_in_process
from attnkit.notebooks import is_test_cell
from attnkit.results import error_message

alembic_head_in_process()  # (every nbgrader app loads the course config, which imports this module)


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
        from attnkit.selfcheck import untouched

        if is_test_cell(cell):
            gid = nbu.grade_id(cell)
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    words = untouched(nbu.part_label(self._labels, gid), str(out.get("ename", "")),
                                      str(out.get("evalue", "")))
                    if words is not None:
                        out.ename, out.evalue, out.traceback = "AssertionError", words, [f"AssertionError: {words}"]
        return cell, resources


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


class _SchemaCheckedOnce(BaseMetadataValidator):
    """nbgrader's per-cell base check (schema version, then the JSON schema) with a validator
    built once: nbgrader calls jsonschema.validate(), which first validates the schema against
    its metaschema, for every cell of every notebook (nine tenths of the check's time)."""

    _validators: dict = {}

    def validate_cell(self, cell) -> None:
        if "nbgrader" not in cell.metadata:
            return
        version = cell.metadata["nbgrader"].get("schema_version", 0)
        if version < self.schema_version:
            raise SchemaTooOldError(f"Outdated schema version: {version} (expected {self.schema_version})",
                                    version, self.schema_version)
        if version > self.schema_version:
            raise SchemaTooNewError(f"Schema version is too new: {version} (expected {self.schema_version})",
                                    version, self.schema_version)
        validator = self._validators.get(self.schema_version)
        if validator is None:
            cls = jsonschema.validators.validator_for(self.schema)
            cls.check_schema(self.schema)
            validator = self._validators[self.schema_version] = cls(self.schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(cell.metadata["nbgrader"]))
        if error is not None:  # what jsonschema.validate() raises
            raise error


class _MetadataValidatorOnce(MetadataValidator, _SchemaCheckedOnce):
    """nbgrader's current validator; its ``super().validate_cell`` now reaches the check above."""


class CheckCellMetadataOnce(CheckCellMetadata):
    """nbgrader's CheckCellMetadata with the schema checked once (see _SchemaCheckedOnce)."""

    def preprocess(self, nb, resources):
        try:
            _MetadataValidatorOnce().validate_nb(nb)
        except ValidationError:
            self.log.error(traceback.format_exc())
            msg = "Notebook failed to validate; the nbgrader metadata may be corrupted."
            self.log.error(msg)
            raise ValidationError(msg)
        return nb, resources


class CapOutputs(NbGraderPreprocessor):
    """Outputs capped in bytes, not lines (after execution, before the grades are saved).

    LimitOutput counts lines: one line of 1 GiB, or a 500 MiB image, passed it whole into the autograded
    notebook and the feedback. Here each code cell keeps at most ``max_cell_bytes`` of text (stream,
    text/* data, error messages), an image over ``max_image_bytes`` is replaced by a note, and the notebook
    keeps at most ``max_notebook_bytes`` of outputs (the biggest answer-cell outputs go first; a test cell
    keeps its error, which is its score). What is cut is said in the output, with its size.
    """

    max_cell_bytes = Integer(1 << 20, help="bytes of text outputs kept per code cell").tag(config=True)
    max_image_bytes = Integer(2 << 20, help="bytes of one image output kept (base64)").tag(config=True)
    max_notebook_bytes = Integer(16 << 20, help="bytes of outputs kept per notebook").tag(config=True)

    def preprocess(self, nb, resources):
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = self._cap_cell(cell.get("outputs", []))
        total = sum(self._size(c) for c in nb.cells if c.cell_type == "code")
        for cell in sorted((c for c in nb.cells if c.cell_type == "code" and not is_test_cell(c)),
                           key=self._size, reverse=True):
            if total <= self.max_notebook_bytes:
                break
            size = self._size(cell)
            cell.outputs = [NotebookNode(output_type="stream", name="stdout",
                                         text=f"[{size:,} bytes of output removed: the notebook's outputs are capped "
                                              f"at {self.max_notebook_bytes:,} bytes]\n")]
            total -= size
        return nb, resources

    @staticmethod
    def _size(cell) -> int:
        return sum(len(json.dumps(o)) for o in cell.get("outputs", []))

    # -- as outputs arrive (CourseExecute.output): the same caps, applied to each message before it is
    # kept, so that a flood never piles up in the grading process. The pass above still runs after.
    NOTE_ROOM = 256      # of a cell's text budget, kept for the note saying what was cut
    OUTPUT_COST = 64     # what one output costs at least: a million empty outputs are a flood too
    MAX_METADATA = 4096  # an output's metadata over this is dropped
    MAX_ERRORS = 3       # error outputs kept per cell (the first decides a test cell's score)
    MAX_TRACEBACK = 64 << 10  # characters of one error's traceback

    def arriving(self) -> dict:
        """The budget of one notebook, for ``admit``: outputs kept, in all, at most twice the notebook cap
        (this pass keeps the first ones; the pass after execution picks what the notebook keeps)."""
        return {"notebook_left": 2 * self.max_notebook_bytes}

    def cell_budget(self, notebook: dict) -> dict:
        return {"left": self.max_cell_bytes - self.NOTE_ROOM, "cut": 0, "notebook": notebook}

    def admit(self, msg_type: str, content: dict, budget: dict) -> bool:
        """Cap one output message's ``content`` in place; False: nothing of it is kept (counted as cut)."""
        nb = budget["notebook"]
        if msg_type == "error":  # a test cell's error is its score: the first ones kept, capped as below
            # ... but only MAX_ERRORS a cell (the kernel holds the session key: it can send any number)
            budget["errors"] = budget.get("errors", 0) + 1
            if budget["errors"] > self.MAX_ERRORS:
                budget["cut"] += 1
                return False
            content["ename"] = str(content.get("ename", ""))[:200]
            content["evalue"] = str(content.get("evalue", ""))[:4000]
            tb = content.get("traceback")
            lines, room = [], self.MAX_TRACEBACK
            for line in (tb[:200] if isinstance(tb, list) else []):
                line = str(line)[:min(4000, room)]
                if not line:
                    break
                lines.append(line)
                room -= len(line)
            content["traceback"] = lines
            size = len(content["ename"]) + len(content["evalue"]) + self.MAX_TRACEBACK - room + self.OUTPUT_COST
            budget["left"] -= size
            nb["notebook_left"] -= size
            return True
        if msg_type == "stream":
            text = content.get("text", "")
            text = text if isinstance(text, str) else ""
            keep = max(0, min(len(text), budget["left"], nb["notebook_left"]))
            budget["cut"] += len(text) - keep
            if keep == 0:
                return False
            content["text"] = text[:keep]
            budget["left"] -= keep + self.OUTPUT_COST
            nb["notebook_left"] -= keep + self.OUTPUT_COST
            return True
        if msg_type not in ("display_data", "execute_result", "update_display_data"):
            return True  # not an output (nbclient ignores it)
        data = content.get("data")
        if not isinstance(data, dict):
            return False
        meta = content.get("metadata")
        if meta and len(json.dumps(meta, default=str)) > self.MAX_METADATA:
            content["metadata"] = {}
        kept = 0
        for mime in list(data):
            value = data[mime]
            value = value if isinstance(value, str) else json.dumps(value, default=str)
            size = len(value)
            if mime.startswith("image/"):
                if size > self.max_image_bytes or size > nb["notebook_left"]:
                    del data[mime]
                    why = (f"images are capped at {self.max_image_bytes:,} bytes" if size > self.max_image_bytes
                           else f"the notebook's outputs are capped at {self.max_notebook_bytes:,} bytes")
                    data["text/plain"] = f"[an image of {size:,} bytes was removed: {why}]"
                    continue
                nb["notebook_left"] -= size
                kept += size
                continue
            keep = max(0, min(size, budget["left"], nb["notebook_left"]))
            budget["cut"] += size - keep
            if keep < size or budget["left"] <= 0 or nb["notebook_left"] <= 0:
                if isinstance(data[mime], str) and keep > 0:
                    data[mime] = value[:keep]
                else:
                    del data[mime]
                    continue
            budget["left"] -= keep
            nb["notebook_left"] -= keep
            kept += keep
        budget["left"] -= self.OUTPUT_COST
        nb["notebook_left"] -= self.OUTPUT_COST
        return bool(data)

    def cut_note(self, budget: dict):
        """The note a cell gets when ``admit`` cut its outputs (the pass after execution says the same)."""
        if not budget["cut"]:
            return None
        return NotebookNode(output_type="stream", name="stdout",
                            text=f"\n[{budget['cut']:,} more bytes of output cut: each cell keeps "
                                 f"{self.max_cell_bytes:,} bytes]\n")

    def _cap_cell(self, outputs):
        left, kept, cut = self.max_cell_bytes, [], 0
        for out in outputs:
            if out.output_type == "stream":
                text = out.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                if left <= 0:
                    cut += len(text.encode("utf-8", "replace"))
                    continue
                raw = text.encode("utf-8", "replace")
                if len(raw) > left:
                    cut += len(raw) - left
                    out.text = raw[:left].decode("utf-8", "ignore")
                left -= min(len(raw), left)
                kept.append(out)
            elif out.output_type in ("display_data", "execute_result"):
                data = out.get("data", {})
                for mime in list(data):
                    value = data[mime]
                    value = "".join(value) if isinstance(value, list) else value
                    size = len(value.encode("utf-8", "replace")) if isinstance(value, str) else len(json.dumps(value))
                    if mime.startswith("image/") and size > self.max_image_bytes:
                        del data[mime]
                        data["text/plain"] = (f"[an image of {size:,} bytes was removed: images are capped at "
                                              f"{self.max_image_bytes:,} bytes]")
                    elif not mime.startswith("image/") and size > left:
                        cut += size - max(left, 0)
                        if isinstance(value, str) and left > 0:
                            data[mime] = value.encode("utf-8", "replace")[:left].decode("utf-8", "ignore")
                        else:
                            del data[mime]
                        left = 0
                    elif not mime.startswith("image/"):
                        left -= size
                if data:
                    kept.append(out)
            elif out.output_type == "error":
                out.evalue = str(out.get("evalue", ""))[:4000]
                out.traceback = [line[:4000] for line in out.get("traceback", [])[:200]]
                kept.append(out)
            else:
                kept.append(out)
        if cut:
            kept.append(NotebookNode(output_type="stream", name="stdout",
                                     text=f"\n[{cut:,} more bytes of output cut: each cell keeps "
                                          f"{self.max_cell_bytes:,} bytes]\n"))
        return kept
