"""SaveAutoGradesOnce: nbgrader's SaveAutoGrades, the same scores and comments, with the submitted notebook's grades
and comments read in one query and written in one commit, not a lookup and a commit per cell."""
from __future__ import annotations

from nbgrader.api import Comment, Gradebook, Grade, MissingEntry
from nbgrader.preprocessors import NbGraderPreprocessor, SaveAutoGrades
from sqlalchemy.orm import joinedload


class SaveAutoGradesOnce(SaveAutoGrades):
    """nbgrader's per-cell code (``_add_score``, ``_add_comment``) runs unchanged against ``_Submission``, which answers
    ``find_grade`` and ``find_comment`` from the notebook's rows and holds every commit until the notebook is done.

    Why? nbgrader runs two joined queries and a commit for each graded cell: about 40 ms a notebook here, and a commit
    is an fsync on a real disk. One commit also makes a notebook's scores land together or not at all."""

    def preprocess(self, nb, resources):
        self.notebook_id = resources["nbgrader"]["notebook"]
        self.assignment_id = resources["nbgrader"]["assignment"]
        self.student_id = resources["nbgrader"]["student"]
        self.db_url = resources["nbgrader"]["db_url"]
        with Gradebook(self.db_url) as gb:
            self.gradebook = _Submission(gb, self.notebook_id, self.assignment_id, self.student_id)
            nb, resources = NbGraderPreprocessor.preprocess(self, nb, resources)
            gb.db.commit()
        return nb, resources


class _Session:
    """The gradebook's session with ``commit`` held back (the preprocessor commits once, at the end)."""

    def __init__(self, session):
        self._session = session

    def commit(self) -> None:
        self._session.flush()

    def __getattr__(self, name):
        return getattr(self._session, name)


class _Submission:
    """The parts of a Gradebook that SaveAutoGrades uses, for one submitted notebook: ``find_grade`` and
    ``find_comment`` as nbgrader answers them (a grade cell's row before a task cell's of the same name; a solution
    cell's comment before a task cell's), from that notebook's rows, read at the first lookup."""

    def __init__(self, gb: Gradebook, notebook: str, assignment: str, student: str):
        self._gb, self._key = gb, (notebook, assignment, student)
        self.db = _Session(gb.db)
        self._grades = self._comments = None

    def _load(self) -> None:
        sub = self._gb.find_submission_notebook(*self._key)  # MissingEntry, as nbgrader's first lookup would raise
        db = self._gb.db
        grades = db.query(Grade).options(joinedload(Grade.cell)).filter(Grade.notebook_id == sub.id).all()
        comments = db.query(Comment).options(joinedload(Comment.cell)).filter(Comment.notebook_id == sub.id).all()
        self._grades = _by_name(grades, ("TaskCell", "GradeCell"))
        self._comments = _by_name(comments, ("TaskCell", "SolutionCell"))

    def find_grade(self, name: str, notebook: str, assignment: str, student: str) -> Grade:
        return self._find("grade", name, notebook, assignment, student)

    def find_comment(self, name: str, notebook: str, assignment: str, student: str) -> Comment:
        return self._find("comment", name, notebook, assignment, student)

    def _find(self, what: str, name, notebook, assignment, student):
        if (notebook, assignment, student) != self._key:  # not this notebook: nbgrader's own lookup
            return getattr(self._gb, f"find_{what}")(name, notebook, assignment, student)
        if self._grades is None:
            self._load()
        found = (self._grades if what == "grade" else self._comments).get(name)
        if found is None:
            raise MissingEntry(f"No such {what}: {assignment}/{notebook}/{name} for {student}")
        return found


def _by_name(rows: list, kinds: tuple) -> dict:
    """name -> row, for rows whose cell is of one of ``kinds``: a later kind wins over an earlier of the same name."""
    out = {}
    for kind in kinds:
        for row in rows:
            if row.cell.type == kind:
                out[row.cell.name] = row
    return out
