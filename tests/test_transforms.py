"""The kit's nbgrader transforms, each alone on an in-memory notebook (fast tier)."""
from __future__ import annotations

from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from attnkit.preprocessors.clear_solutions import ClearSolutionsWithStubs
from attnkit.preprocessors.dedupe import DropDuplicateIds
from attnkit.preprocessors.score_only_errors import ScoreOnlyErrors
from attnkit.preprocessors.scrub import ScrubTestOutputs


def _meta(grade_id, *, grade=False, solution=False, locked=False, points=None):
    m = {"grade": grade, "solution": solution, "locked": locked, "grade_id": grade_id, "schema_version": 3}
    if points is not None:
        m["points"] = points
    return {"nbgrader": m}


def _test_cell(source, gid="t1", outputs=()):
    cell = new_code_cell(source, metadata=_meta(gid, grade=True, locked=True, points=2))
    cell.outputs = list(outputs)
    return cell


def test_clear_solutions_uses_each_regions_stub():
    """Does the release show the labelled blank, nbgrader's stub where there is none, and keep hidden tests?"""
    answer = new_code_cell("def f(x):\n    ### BEGIN SOLUTION (a)\n    return x + 1\n    ### STUB: return x + _____  # (a)\n"
                           "    ### END SOLUTION\n\n\ndef g(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                           metadata=_meta("a1", solution=True))
    written = new_markdown_cell("### BEGIN SOLUTION\nBecause.\n### END SOLUTION", metadata=_meta("w1", grade=True,
                                                                                                  solution=True, points=2))
    test = _test_cell("assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert g(2) == 4\n### END HIDDEN TESTS")
    nb, _ = ClearSolutionsWithStubs().preprocess(new_notebook(cells=[answer, written, test]),
                                                 {"language": "python", "unique_key": "nb"})
    assert nb.cells[0].source == ("def f(x):\n    return x + _____  # (a)\n\n\ndef g(x):\n"
                                  "    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert nb.cells[1].source == "YOUR ANSWER HERE"
    assert "assert g(2) == 4" in nb.cells[2].source  # ClearHiddenTests removes it later in the release


def test_score_only_errors_neutralises_stderr_and_displayed_values():
    """Can a warning on stderr or a displayed False no longer change a test cell's score?"""
    cell = _test_cell("x", outputs=[new_output("stream", name="stderr", text="UserWarning: ...\n"),
                                    new_output("execute_result", data={"text/plain": "False"}, execution_count=3)])
    answer = new_code_cell("y", metadata=_meta("a1", solution=True))
    answer.outputs = [new_output("stream", name="stderr", text="note\n")]
    nb, _ = ScoreOnlyErrors().preprocess(new_notebook(cells=[cell, answer]), {})
    assert [o.output_type for o in nb.cells[0].outputs] == ["stream", "display_data"]
    assert nb.cells[0].outputs[0].name == "stdout" and "execution_count" not in nb.cells[0].outputs[1]
    assert nb.cells[1].outputs[0].name == "stderr"  # answer cells are not scored: left alone


def test_scrub_test_outputs_keeps_only_the_redacted_error():
    """Does feedback keep 'ename: evalue' of a failed test cell, without its traceback or hidden lines?"""
    hidden = "expect(secret_reference(x) == 41, 'nope')"
    err = new_output("error", ename="AssertionError", evalue=f"failed at {hidden}", traceback=["Traceback...", hidden])
    cell = _test_cell(f"visible()\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS",
                      outputs=[new_output("stream", name="stdout", text="ok  visible\n"), err])
    nb, _ = ScrubTestOutputs().preprocess(new_notebook(cells=[cell]), {})
    (out,) = nb.cells[0].outputs
    assert out.traceback == ["AssertionError: failed at [hidden test]"] and hidden not in out.evalue


def test_drop_duplicate_ids_unmarks_the_copy():
    """Does a duplicated test cell lose its nbgrader metadata instead of breaking the notebook?
    (nbgrader keeps the last cell with an id; OverwriteCells then restores its source.)"""
    copy, last = _test_cell("a", "t1"), _test_cell("b", "t1")
    nb, _ = DropDuplicateIds().preprocess(new_notebook(cells=[copy, last]), {})
    assert "nbgrader" not in nb.cells[0].metadata and nb.cells[1].metadata["nbgrader"]["grade_id"] == "t1"


def _metadata_cases():
    """(what, notebook): the course's source notebooks as they are, and broken copies of one."""
    import copy

    from harness import ASSIGNMENT, ROOT
    from attnkit.authoring import notebooks as nbu

    books = [(p.stem, nbu.read(p)) for p in sorted((ROOT / "source" / ASSIGNMENT).glob("*.ipynb"))]
    base = books[-1][1]
    graded = next(i for i, c in enumerate(base.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    edits = {
        "points not a number": lambda m: m.update(points="x"),
        "unknown schema version (old)": lambda m: m.update(schema_version=1),
        "unknown schema version (new)": lambda m: m.update(schema_version=9),
        "grade cell without points": lambda m: m.pop("points"),
        "empty grade_id": lambda m: m.update(grade_id=""),
        "grade not a boolean": lambda m: m.update(grade="yes"),
        "extra key": lambda m: m.update(surprise=1),
    }
    for what, edit in edits.items():
        nb = copy.deepcopy(base)
        edit(nb.cells[graded].metadata["nbgrader"])
        books.append((what, nb))
    dup = copy.deepcopy(base)
    dup.cells.append(copy.deepcopy(dup.cells[graded]))
    books.append(("duplicate grade id", dup))
    return books


def test_check_cell_metadata_once_agrees_with_nbgraders_check():
    """Does the schema-checked-once validator accept and refuse exactly what nbgrader's own does,
    with the same error?"""
    from nbgrader.nbgraderformat import MetadataValidator

    from attnkit.preprocessors.metadata import _MetadataValidatorOnce

    def outcome(validator, nb):
        try:
            validator().validate_nb(nb)
            return "valid"
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"

    seen = set()
    for what, nb in _metadata_cases():
        ours, theirs = outcome(_MetadataValidatorOnce, nb), outcome(MetadataValidator, nb)
        assert ours == theirs, f"{what}: ours {ours!r}, nbgrader's {theirs!r}"
        seen.add(theirs == "valid")
    assert seen == {True, False}, "the cases should include valid and invalid notebooks"


# (grade id, kinds, cell type): a grade cell, a solution cell, a cell that is both, a task cell, a plain locked cell
CELLS = (("g", "grade", "code"), ("s", "solution", "code"), ("gs", "grade solution", "markdown"),
         ("t", "task", "markdown"), ("plain", "", "code"))


def _add_cells(gb, cells) -> None:
    """Notebook "n" of assignment "a" gets ``cells``, each with its source "src <id>" and that source's checksum."""
    from nbformat import NotebookNode
    from nbgrader.utils import compute_checksum

    for gid, kinds, ctype in cells:
        flags = dict(grade_id=gid, grade="grade" in kinds, solution="solution" in kinds,
                     locked="solution" not in kinds, points=2.5)
        checksum = compute_checksum(NotebookNode(source=f"src {gid}", cell_type=ctype,
                                                 metadata=NotebookNode(nbgrader=NotebookNode(flags))))
        gb.add_source_cell(gid, "n", "a", cell_type=ctype, locked=flags["locked"], source=f"src {gid}",
                           checksum=checksum)
        if "grade" in kinds:
            gb.add_grade_cell(gid, "n", "a", max_score=2.5, cell_type=ctype)
        if "solution" in kinds:
            gb.add_solution_cell(gid, "n", "a")
        if "task" in kinds:
            gb.add_task_cell(gid, "n", "a", max_score=4, cell_type=ctype)


def test_normalise_reads_each_cells_flags_as_nbgraders_own_lookups_do():
    """Reading the notebook's cells from the gradebook once, does NormaliseSubmission give every cell (grade,
    solution, both, task, a plain source cell, one the gradebook lacks, a notebook it lacks) exactly the flags,
    points and checksum that nbgrader's per-cell lookups give?"""
    from nbformat import NotebookNode
    from nbgrader.api import Gradebook, MissingEntry

    from attnkit.preprocessors.normalise import NormaliseSubmission

    def nbgraders(gb, gid, nb, a):  # one find_* per kind, as the kit once did
        try:
            source = gb.find_source_cell(gid, nb, a)
        except MissingEntry:
            return None
        flags = NotebookNode(grade_id=gid, cell_type=source.cell_type, locked=bool(source.locked),
                             checksum=source.checksum, grade=False, solution=False, task=False, schema_version=3)
        for kind, finder in (("grade", gb.find_grade_cell), ("solution", gb.find_solution_cell),
                             ("task", gb.find_task_cell)):
            try:
                found = finder(gid, nb, a)
            except MissingEntry:
                continue
            flags[kind] = True
            if kind != "solution":
                flags["points"] = float(found.max_score)
        return flags

    with Gradebook("sqlite:///:memory:") as gb:
        gb.add_assignment("a")
        gb.add_notebook("n", "a")
        _add_cells(gb, CELLS + (("other", "grade", "code"),))
        seen = []
        for notebook in ("n", "not-in-the-gradebook"):
            ours = NormaliseSubmission()
            ours.gradebook, ours.notebook_id, ours.assignment_id = gb, notebook, "a"
            for gid in ("g", "s", "gs", "t", "plain", "other", "unknown"):
                want, got = nbgraders(gb, gid, notebook, "a"), ours._trusted(gid)
                assert got == want and list(got or ()) == list(want or ()), (notebook, gid, got, want)
                seen.append(None if got is None else (got.grade, got.solution, got.task))
        assert {(True, False, False), (False, True, False), (True, True, False), (False, False, True),
                (False, False, False), None} <= set(seen)


def _book_with_cells(url: str) -> None:
    """A gradebook whose notebook "n" of assignment "a" has the cells of CELLS; student "s" has submitted it."""
    from nbgrader.api import Gradebook

    with Gradebook(url) as gb:
        gb.add_assignment("a")
        gb.add_notebook("n", "a")
        _add_cells(gb, CELLS)
        gb.add_student("s")
        gb.add_submission("a", "s")


def _graded_notebook(extra=()):
    """Notebook "n" as autograding leaves it: a failed test, an answered solution, an unanswered written answer."""
    from nbgrader.utils import compute_checksum

    failed = _test_cell("assert False", gid="g", outputs=[new_output("error", ename="AssertionError", evalue="",
                                                                     traceback=[])])
    failed.metadata.nbgrader["points"] = 2.5
    answered = new_code_cell("x = 1", metadata=_meta("s", solution=True))
    answered.metadata.nbgrader["checksum"] = "sum-s"
    unanswered = new_markdown_cell("YOUR ANSWER HERE", metadata=_meta("gs", grade=True, solution=True, points=2.5))
    unanswered.metadata.nbgrader["checksum"] = compute_checksum(unanswered)
    task = new_markdown_cell("Describe.", metadata={"nbgrader": {"grade": False, "solution": False, "task": True,
                                                                  "locked": True, "grade_id": "t", "points": 4,
                                                                  "schema_version": 3}})
    return new_notebook(cells=[failed, answered, unanswered, task, new_code_cell("plain", metadata=_meta("plain")),
                               *extra])


def test_saved_grades_are_nbgraders_own():
    """Reading the submitted notebook's grades and comments once and committing once, does SaveAutoGradesOnce leave
    the gradebook exactly as nbgrader's SaveAutoGrades does (scores, needs-manual-grade with and without an earlier
    manual score, comments), and refuse a cell the gradebook lacks as nbgrader does?"""
    import shutil
    import tempfile
    from pathlib import Path

    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.preprocessors import SaveAutoGrades

    from attnkit.preprocessors.save_grades import SaveAutoGradesOnce

    folder = Path(tempfile.mkdtemp())
    try:
        _book_with_cells(f"sqlite:///{folder / 'seed.db'}")

        def state(url):
            with Gradebook(url) as gb:
                sub = gb.find_submission_notebook("n", "a", "s")
                return (sorted((g.name, g.auto_score, g.manual_score, g.needs_manual_grade) for g in sub.grades),
                        sorted((c.name, c.auto_comment) for c in sub.comments))

        results = {}
        for manual in (None, 1.0):
            for cls in (SaveAutoGrades, SaveAutoGradesOnce):
                db = folder / f"{cls.__name__}-{manual}.db"
                shutil.copy(folder / "seed.db", db)
                url = f"sqlite:///{db}"
                if manual is not None:
                    with Gradebook(url) as gb:
                        gb.find_grade("g", "n", "a", "s").manual_score = manual
                        gb.db.commit()
                before = state(url)
                resources = {"nbgrader": {"notebook": "n", "assignment": "a", "student": "s", "db_url": url}}
                cls().preprocess(_graded_notebook(), resources)
                results[cls.__name__, manual] = state(url)
                assert results[cls.__name__, manual] != before, f"{cls.__name__} saved nothing"
                unknown = _test_cell("ok", gid="not-in-the-gradebook")
                try:
                    cls().preprocess(_graded_notebook([unknown]), resources)
                except MissingEntry:
                    results[cls.__name__, manual, "unknown"] = "MissingEntry"
            assert results["SaveAutoGradesOnce", manual] == results["SaveAutoGrades", manual], manual
            assert results["SaveAutoGradesOnce", manual, "unknown"] == results["SaveAutoGrades", manual, "unknown"]
        grades, comments = results["SaveAutoGrades", 1.0]
        assert ("g", 0.0, 1.0, True) in grades and ("gs", 0.0, None, False) in grades
        assert ("gs", "No response.") in comments and ("s", None) in comments
    finally:
        shutil.rmtree(folder)


def test_normalise_and_save_grades_read_a_notebook_in_a_few_queries():
    """However many cells a notebook has, do NormaliseSubmission and SaveAutoGradesOnce query the gradebook a fixed
    number of times (nbgrader's own: two or three queries a cell), and does the result not change?"""
    import shutil
    import tempfile
    from pathlib import Path

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from nbgrader.preprocessors import OverwriteCells, SaveAutoGrades

    from attnkit.preprocessors.normalise import NormaliseSubmission
    from attnkit.preprocessors.save_grades import SaveAutoGradesOnce

    folder = Path(tempfile.mkdtemp())
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        url = f"sqlite:///{folder / 'gradebook.db'}"
        _book_with_cells(url)
        resources = {"nbgrader": {"notebook": "n", "assignment": "a", "student": "s", "db_url": url}}
        seen = {}
        for copies in (1, 6, 1):
            nb = _graded_notebook()
            nb.cells = nb.cells * copies
            for cls in (NormaliseSubmission, SaveAutoGradesOnce, OverwriteCells, SaveAutoGrades):
                statements.clear()
                out, _ = cls().preprocess(nb, dict(resources))
                seen[cls.__name__, copies] = (len(statements), [dict(c.metadata) for c in out.cells[:5]])
        for ours, theirs in (("NormaliseSubmission", "OverwriteCells"), ("SaveAutoGradesOnce", "SaveAutoGrades")):
            (few, one), (many, six) = seen[ours, 1], seen[ours, 6]
            assert many <= few + 2, f"{ours}: {few} statements for 5 cells, {many} for 30"
            assert one == six, ours
            grew = seen[theirs, 6][0] - seen[theirs, 1][0]  # the measure sees per-cell queries: nbgrader's own make them
            assert grew >= 25, f"{theirs}: {grew} more statements for 25 more cells"
    finally:
        event.remove(Engine, "before_cursor_execute", count)
        shutil.rmtree(folder)


def test_outputs_are_capped_in_bytes_not_lines():
    """Is one 5 MB line cut to the cell's cap with a note, a 3 MB image replaced, a test cell's error kept?"""
    import base64

    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from attnkit.preprocessors.cap_outputs import CapOutputs

    answer = new_code_cell("print('x' * 5_000_000)")
    answer.outputs = [new_output("stream", name="stdout", text="x" * 5_000_000),
                      new_output("display_data", data={"image/png": base64.b64encode(b"\0" * 3_000_000).decode()})]
    test = new_code_cell("assert False", metadata={"nbgrader": {"grade": True, "grade_id": "t", "points": 1,
                                                                "locked": True, "solution": False}})
    test.outputs = [new_output("error", ename="AssertionError", evalue="no" * 10, traceback=["tb"])]
    nb, _ = CapOutputs(max_cell_bytes=1 << 20, max_image_bytes=2 << 20).preprocess(new_notebook(cells=[answer, test]), {})
    texts = [o for o in nb.cells[0].outputs if o.output_type == "stream"]
    assert len(texts[0].text) == 1 << 20 and "more bytes of output cut" in texts[-1].text
    image = next(o for o in nb.cells[0].outputs if o.output_type == "display_data")
    assert "image/png" not in image.data and "image of" in image.data["text/plain"]
    assert [o.ename for o in nb.cells[1].outputs] == ["AssertionError"]
    nb, _ = CapOutputs(max_notebook_bytes=100_000).preprocess(nb, {})  # the whole notebook too
    assert sum(len(str(o)) for c in nb.cells for o in c.outputs) < 200_000 and nb.cells[1].outputs[0].ename
