"""autograde: grade submitted/ in parallel worker processes (attnkit.workers), every kernel in
the grading sandbox (attnkit.sandbox).

Each notebook of a submission is autograded on its own (nbgrader's ``notebook_id``), so
a notebook that cannot be graded (malformed JSON, a kernel that keeps dying) costs only
that notebook; it is scored 0 with the reason recorded, and the batch goes on. A grading
process that dies is replaced and its student retried once; if it dies again, the notebooks
it had not finished are "failed" ("could not be graded: ...", scored 0).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from attnkit.course import Course

LOCK_RETRIES = 5


@dataclass
class NotebookResult:
    notebook: str
    status: str            # "graded", "missing", "malformed", "failed"
    message: str = ""
    seconds: float = 0.0


@dataclass
class StudentResult:
    student: str
    assignment: str
    notebooks: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(n["status"] in ("graded", "missing") for n in self.notebooks)


def _zero(course: Course, assignment: str, student: str, notebook: str) -> None:
    """Score 0 (not 'needs manual grade') for every cell of a notebook that could not be graded."""
    with course.gradebook() as gb:
        gb.update_or_create_student(student)
        try:
            gb.find_submission(assignment, student)
        except Exception:
            gb.add_submission(assignment, student)
        nb = gb.find_submission_notebook(notebook, assignment, student)
        for grade in nb.grades:
            grade.auto_score = 0
            grade.needs_manual_grade = False
        gb.db.commit()


def _autograde_notebook(course: Course, assignment: str, student: str, notebook: str) -> dict:
    from nbgrader.apps.api import capture_log, temp_attrs
    from nbgrader.converters import Autograde

    api = course.api()
    with temp_attrs(api.coursedir, assignment_id=assignment, student_id=student, notebook_id=notebook):
        app = Autograde(coursedir=api.coursedir, parent=api)
        app.force = True
        app.create_student = True
        return capture_log(app)


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "[ERROR]" in line or "Error" in line:
            return line.strip()[-300:]
    return log.strip().splitlines()[-1][-300:] if log.strip() else "unknown error"


def grade_student(root: str, assignment: str, student: str, on_notebook=None) -> dict:
    """Autograde every notebook of one student's submission (runs in a worker process);
    ``on_notebook(result)`` as each notebook is done."""
    course = Course(root)
    started = time.perf_counter()
    result = StudentResult(student, assignment)
    folder = course.path("submitted", student, assignment)
    with course.gradebook() as gb:
        notebooks = sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)
    for notebook in notebooks:
        t0 = time.perf_counter()
        path = folder / f"{notebook}.ipynb"
        if not path.exists():
            _zero(course, assignment, student, notebook)
            result.notebooks.append(asdict(NotebookResult(notebook, "missing", "notebook not submitted: scored 0")))
            on_notebook and on_notebook(result.notebooks[-1])
            continue
        try:
            nbformat.validate(nbformat.read(str(path), as_version=4))
        except Exception as exc:  # malformed JSON or not a notebook
            _zero(course, assignment, student, notebook)
            msg = f"not a valid notebook ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): scored 0"
            result.notebooks.append(asdict(NotebookResult(notebook, "malformed", msg, time.perf_counter() - t0)))
            on_notebook and on_notebook(result.notebooks[-1])
            continue
        for attempt in range(LOCK_RETRIES):
            out = _autograde_notebook(course, assignment, student, notebook)
            log = (out.get("log") or "") + (out.get("error") or "")
            if out["success"] or "database is locked" not in log:
                break
            time.sleep(0.5 * (attempt + 1))
        if out["success"]:
            result.notebooks.append(asdict(NotebookResult(notebook, "graded", "", time.perf_counter() - t0)))
        else:
            _zero(course, assignment, student, notebook)
            result.notebooks.append(asdict(NotebookResult(
                notebook, "failed", f"could not be graded: {_first_error(log)}; scored 0", time.perf_counter() - t0)))
            logdir = course.path("reports", "logs")
            logdir.mkdir(parents=True, exist_ok=True)
            (logdir / f"{assignment}-{student}-{notebook}.log").write_text(log)
        on_notebook and on_notebook(result.notebooks[-1])
    result.seconds = time.perf_counter() - started
    return asdict(result)


def ensure_assignment(course: Course, assignment: str) -> None:
    """Autograde needs the assignment in the gradebook: generate it if this gradebook lacks it."""
    from attnkit.release import generate

    with course.gradebook() as gb:
        try:
            gb.find_assignment(assignment)
            return
        except Exception:
            pass
    generate(course, assignment)


class Progress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.t0 = total, 0, stream, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"[{bar}] {self.done}/{self.total} {label} ({time.perf_counter() - self.t0:.0f}s)\n")
        self.stream.flush()


def autograde(course: Course, assignment: str, students: list[str] | None = None, workers: int | None = None,
              progress: bool = True, allow_unsandboxed: bool = False) -> list[dict]:
    """Grade the given (default: all submitted) students; returns one result per student.

    Refuses (SandboxUnavailable) when no sandbox works here, unless ``allow_unsandboxed``."""
    from attnkit import sandbox
    from attnkit.workers import RETRIES, Interrupted, run_batch

    mode = sandbox.detect()
    if mode == "none" and not allow_unsandboxed:
        raise sandbox.SandboxUnavailable(
            f"{sandbox.describe(mode)}. Refusing to grade submissions unsandboxed: install bubblewrap "
            f"(apt-get install -y bubblewrap) or pass --unsandboxed-i-accept-the-risk.")
    if mode == "setpriv":  # the fallback's kernels run as another uid: take its rights off the secrets
        sandbox.protect(str(course.root), os.path.dirname(sandbox.KIT_DIR))
    ensure_assignment(course, assignment)
    students = students or course.students(assignment)
    workers = max(1, min(workers or os.cpu_count() or 1, len(students) or 1))
    with course.gradebook() as gb:
        notebooks = sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)
    bar = Progress(len(students)) if progress else None
    root = str(course.root)

    def on_result(result):
        if bar:
            bar.step(result["student"])

    def failed_result(student, done, reason):
        finished = {n["notebook"] for n in done}
        out = StudentResult(student, assignment, list(done))
        for nb in notebooks:
            if nb not in finished:
                try:
                    _zero(course, assignment, student, nb)
                except Exception:  # no submission row yet: nothing to zero, the report says why
                    pass
                out.notebooks.append(asdict(NotebookResult(
                    nb, "failed", f"could not be graded: {reason} (tried {1 + RETRIES} times); scored 0")))
        return asdict(out)

    try:
        results = run_batch(root, assignment, students, workers, {sandbox.ENV_MODE: mode}, on_result, notebooks,
                            failed_result)
    except Interrupted as stop:
        _save_report(course, assignment, stop.results)  # what was graded stays graded; a rerun finishes
        raise
    results.sort(key=lambda r: r["student"])
    _save_report(course, assignment, results)
    return results



def _safe_grade(root: str, assignment: str, student: str, on_notebook=None) -> dict:
    """A grading crash for one student is recorded, never raised into the batch."""
    try:
        return grade_student(root, assignment, student, on_notebook)
    except Exception as exc:  # pragma: no cover - defensive: the batch must go on
        import traceback

        return asdict(StudentResult(student, assignment, [asdict(NotebookResult(
            "*", "failed", f"could not be graded: grader error: {type(exc).__name__}: {exc}"))])) | {
            "traceback": traceback.format_exc()}


def _save_report(course: Course, assignment: str, results: list[dict]) -> None:
    path = course.path("reports", f"{assignment}-autograde.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    old = {}
    if path.exists():
        try:
            old = {r["student"]: r for r in json.loads(path.read_text())}
        except Exception:
            old = {}
    old.update({r["student"]: r for r in results})
    path.write_text(json.dumps([old[k] for k in sorted(old)], indent=1))


def load_report(course: Course, assignment: str) -> dict:
    path = course.path("reports", f"{assignment}-autograde.json")
    if not path.exists():
        return {}
    return {r["student"]: r for r in json.loads(path.read_text())}
