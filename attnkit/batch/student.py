"""One student's run, in a grading process: each notebook autograded on its own, a failure scored 0 with its reason."""
from __future__ import annotations

import errno
import glob
import os
import stat
import time

import nbformat

from attnkit import ids
from attnkit.course import Course
from attnkit.batch.results import NotebookResult, Status, StudentResult


LOCK_RETRIES = 5
MAX_FILE_BYTES = 64 << 20   # the largest submitted file (notebook or other) that is read or copied


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


def _autograde_notebook(course: Course, assignment: str, student: str, notebook: str, skip=()) -> dict:
    """``skip``: names in the submission nbgrader must not copy (not regular files, or too big)."""
    from nbgrader.apps.api import capture_log, temp_attrs
    from nbgrader.converters import Autograde

    api = course.api()
    ignore = list(api.coursedir.ignore) + [glob.escape(n) for n in skip]
    with temp_attrs(api.coursedir, assignment_id=assignment, student_id=student, notebook_id=notebook,
                    ignore=ignore):
        app = Autograde(coursedir=api.coursedir, parent=api)
        app.force = True
        app.create_student = True
        return capture_log(app)


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a folder" if stat.S_ISDIR(mode) else "not a regular file")


def read_regular(path, cap: int = MAX_FILE_BYTES) -> bytes:
    """The contents of ``path`` if it is a regular file of at most ``cap`` bytes; else OSError saying
    what it is. Never follows a symlink, never blocks (a FIFO, a device), never reads past ``cap``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link: only regular files are graded") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"is {_kind(st.st_mode)}: only regular files are graded")
        if st.st_size > cap:
            raise OSError(errno.EFBIG, f"is {st.st_size:,} bytes: files over {cap:,} bytes are not graded")
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise OSError(errno.EFBIG, f"is over {cap:,} bytes: not graded")
        return b"".join(chunks)
    finally:
        os.close(fd)


def submission_problems(folder) -> tuple[str, list[str], list[str]]:
    """(why the whole folder is refused, or ""; the entries nbgrader must not copy; what to say about them).
    Only regular files are graded: a symlink, FIFO, device or socket anywhere in the submission (or a
    file over MAX_FILE_BYTES) is left where it is, never opened, and said in the result."""
    folder = str(folder)
    for level in (os.path.dirname(folder), folder):  # submitted/<student>, submitted/<student>/<assignment>
        try:
            st = os.lstat(level)
        except FileNotFoundError:
            return "", [], []
        if not stat.S_ISDIR(st.st_mode):
            return f"{os.path.relpath(level, os.path.dirname(os.path.dirname(folder)))} is {_kind(st.st_mode)}", [], []
    skip, notes = [], []
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            rel = os.path.relpath(path, folder)
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                why = f"{rel} is {_kind(st.st_mode)}"
            elif st.st_size > MAX_FILE_BYTES:
                why = f"{rel} is {st.st_size:,} bytes (over {MAX_FILE_BYTES:,})"
            else:
                continue
            if rel == "timestamp.txt":  # nbgrader opens it itself, to read the submission time
                return f"{why}: only regular files are graded", [], []
            skip.append(name)
            notes.append(why)
    return "", skip, notes


KERNEL_NEVER_ANSWERED = "Kernel died before replying to kernel_info"  # jupyter_client's words


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if line.startswith("attnkit.grader.hidden.GraderOutOfMemory: ") or line.startswith("GraderOutOfMemory: "):
            return line.partition(": ")[2].strip()[:300]
    if KERNEL_NEVER_ANSWERED in log:  # (a container too small for a kernel beside the grader: every notebook's)
        return ("the notebook's kernel died as it started, before any cell ran (too little memory for a kernel "
                "beside the grader?)")
    for line in log.splitlines():
        if "[ERROR]" in line or "Error" in line:
            return line.strip()[-300:]
    return log.strip().splitlines()[-1][-300:] if log.strip() else "unknown error"


def grade_student(root: str, assignment: str, student: str, on_notebook=None, prestart: bool = False) -> dict:
    """Autograde every notebook of one student's submission (runs in a worker process);
    ``on_notebook(result)`` as each notebook is done; ``prestart``: more students follow in this
    process (their sandbox may start ahead). Returns the result as JSON data (it travels back to
    the batch through a pipe)."""
    if not ids.is_valid(student):  # never handed to nbgrader, which would read it as a pattern
        raise ValueError(ids.refusal(student))
    course = Course(root)
    started = time.perf_counter()
    result = StudentResult(student, assignment)
    folder = course.path("submitted", student, assignment)
    with course.gradebook() as gb:
        notebooks = sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)
    from attnkit.sandbox.warm import last_kernel, warm_start

    refused, skip, notes = submission_problems(folder)
    with warm_start(prestart):  # this student's kernels fork from one pre-imported interpreter
        for notebook in notebooks:
            if refused:
                _refuse(course, assignment, student, notebook, result, on_notebook, refused)
                continue
            if notebook == notebooks[-1]:
                last_kernel()  # (where no student follows: the interpreter need not stay beside this one)
            _grade_one(course, assignment, student, notebook, folder, result, on_notebook, skip, notes)
    result.seconds = time.perf_counter() - started
    return result.to_json()


def _ahead(course: Course, assignment: str):
    """(a kernel manager with the course's configuration, the grader's files as nbgrader will copy
    them beside the notebooks: the source folder's other files)."""
    from nbgrader.utils import find_all_files

    from attnkit.sandbox.bwrap import NOT_FOR_KERNELS
    from attnkit.sandbox.manager import CourseKernelManager

    api = course.api()
    source = api.coursedir.format_path(api.coursedir.source_directory, ".", assignment).rstrip("/")
    files = {os.path.basename(f): f for f in find_all_files(source, api.coursedir.ignore + ["*.ipynb"])
             if os.path.dirname(f) == source and os.path.basename(f) not in NOT_FOR_KERNELS}
    return CourseKernelManager(config=api.config), files


NBGRADER_ENV = {"NBGRADER_EXECUTION": "autograde"}  # what nbgrader's Execute sets while kernels start


def start_ahead(root: str, assignment: str, slot: int | None = None):
    """Start a grading process's first warm-start interpreter ahead of its first kernel: in that
    process as it starts (no ``slot``), or in the batch process before that process even starts,
    for worker ``slot`` (to hand over). Returns the Zygote, or None. A student whose folder holds
    other files than these gets a new one (the kernel must see that student's files, and no
    one else's)."""
    try:
        km, files = _ahead(Course(root), assignment)
        return km.start_ahead(files, NBGRADER_ENV, slot, root=root if slot is not None else None)
    except Exception:  # only a head start: grading starts the interpreter itself if this fails
        return None


def _refuse(course, assignment, student, notebook, result, on_notebook, why: str, t0=None) -> None:
    _zero(course, assignment, student, notebook)
    result.notebooks.append(NotebookResult(notebook, Status.MALFORMED, f"refused: {why}; scored 0",
                                           time.perf_counter() - t0 if t0 else 0.0))
    on_notebook and on_notebook(result.notebooks[-1].to_json())


def _grade_one(course, assignment, student, notebook, folder, result, on_notebook, skip=(), notes=()) -> None:
    t0 = time.perf_counter()
    path = folder / f"{notebook}.ipynb"
    if not os.path.lexists(path):
        _zero(course, assignment, student, notebook)
        result.notebooks.append(NotebookResult(notebook, Status.MISSING, "notebook not submitted: scored 0"))
        on_notebook and on_notebook(result.notebooks[-1].to_json())
        return
    try:
        raw = read_regular(path)
    except OSError as exc:  # a symlink (to the instructor's notebook?), a FIFO, a device, too big
        return _refuse(course, assignment, student, notebook, result, on_notebook,
                       f"{notebook}.ipynb {exc.strerror}", t0)
    try:
        nbformat.validate(nbformat.reads(raw.decode("utf-8"), as_version=4))
    except Exception as exc:  # malformed JSON or not a notebook
        _zero(course, assignment, student, notebook)
        msg = f"not a valid notebook ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): scored 0"
        result.notebooks.append(NotebookResult(notebook, Status.MALFORMED, msg, time.perf_counter() - t0))
        on_notebook and on_notebook(result.notebooks[-1].to_json())
        return
    for attempt in range(LOCK_RETRIES):
        out = _autograde_notebook(course, assignment, student, notebook, skip)
        log = (out.get("log") or "") + (out.get("error") or "")
        if out["success"] or "database is locked" not in log:
            break
        time.sleep(0.5 * (attempt + 1))
    if out["success"]:
        said = f"not copied for grading (only regular files are): {'; '.join(notes)}" if notes else ""
        result.notebooks.append(NotebookResult(notebook, Status.GRADED, said, time.perf_counter() - t0))
    else:
        _zero(course, assignment, student, notebook)
        result.notebooks.append(NotebookResult(
            notebook, Status.FAILED, f"could not be graded: {_first_error(log)}; scored 0", time.perf_counter() - t0))
        logdir = course.path("reports", "logs")
        logdir.mkdir(parents=True, exist_ok=True)
        (logdir / f"{assignment}-{student}-{notebook}.log").write_text(log)
    on_notebook and on_notebook(result.notebooks[-1].to_json())


def _safe_grade(root: str, assignment: str, student: str, on_notebook=None, prestart: bool = False) -> dict:
    """A grading crash for one student is recorded, never raised into the batch."""
    try:
        return grade_student(root, assignment, student, on_notebook, prestart)
    except Exception as exc:  # pragma: no cover - defensive: the batch must go on
        import traceback

        return StudentResult(student, assignment, [NotebookResult(
            "*", Status.FAILED, f"could not be graded: grader error: {type(exc).__name__}: {exc}")]).to_json() | {
            "traceback": traceback.format_exc()}
