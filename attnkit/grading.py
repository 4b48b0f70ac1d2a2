"""autograde: grade submitted/ in parallel worker processes (attnkit.workers), every kernel in
the grading sandbox (attnkit.sandbox).

Each notebook of a submission is autograded on its own (nbgrader's ``notebook_id``), so
a notebook that cannot be graded (malformed JSON, a kernel that keeps dying) costs only
that notebook; it is scored 0 with the reason recorded, and the batch goes on. A grading
process that dies is replaced and its student retried once; if it dies again, the notebooks
it had not finished are "failed" ("could not be graded: ...", scored 0).
"""
from __future__ import annotations

import errno
import glob
import os
import stat
import sys
import time

import nbformat

from attnkit import ids
from attnkit.course import Course
from attnkit.progress import Progress
from attnkit.results import NotebookResult, Status, StudentResult, save_report

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


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if line.startswith("attnkit.grader.hidden.GraderOutOfMemory: ") or line.startswith("GraderOutOfMemory: "):
            return line.partition(": ")[2].strip()[:300]
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
    from attnkit.sandbox import warm_start

    refused, skip, notes = submission_problems(folder)
    with warm_start(prestart):  # this student's kernels fork from one pre-imported interpreter
        for notebook in notebooks:
            if refused:
                _refuse(course, assignment, student, notebook, result, on_notebook, refused)
                continue
            _grade_one(course, assignment, student, notebook, folder, result, on_notebook, skip, notes)
    result.seconds = time.perf_counter() - started
    return result.to_json()


def _ahead(course: Course, assignment: str):
    """(a kernel manager with the course's configuration, the grader's files as nbgrader will copy
    them beside the notebooks: the source folder's other files)."""
    from nbgrader.utils import find_all_files

    from attnkit.sandbox import NOT_FOR_KERNELS, CourseKernelManager

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
        return km.start_ahead(files, NBGRADER_ENV, slot)
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


def autograde(course: Course, assignment: str, students: list[str] | None = None, workers: int | None = None,
              progress: bool = True, allow_unsandboxed: bool = False, on_result=None) -> list[StudentResult]:
    """Grade the given (default: all submitted) students; returns one result per student, by id.
    ``on_result(result)``: each student's result (JSON data) as soon as it is in the gradebook.

    Refuses (SandboxUnavailable) when no sandbox works here, unless ``allow_unsandboxed``."""
    from attnkit import sandbox
    from attnkit.workers import GRADER_MEMORY_ENV, RETRIES, Interrupted, run_batch

    mode = sandbox.detect()
    if mode == "none" and not allow_unsandboxed:
        raise sandbox.SandboxUnavailable(
            f"{sandbox.describe(mode)}. Refusing to grade submissions unsandboxed: install bubblewrap "
            f"(apt-get install -y bubblewrap) or pass --unsandboxed-i-accept-the-risk.")
    config = course.api().config
    kernels = config.CourseKernelManager if "CourseKernelManager" in config else {}
    print(sandbox.describe_limits(mode, kernels.get("memory_limit_mb", 4096), kernels.get("cgroup_memory_mb", 0),
                                  kernels.get("max_processes", 256)), file=sys.stderr)  # below the sandbox line
    if mode == "setpriv":  # the fallback's kernels run as another uid: take its rights off the secrets
        sandbox.protect(str(course.root), os.path.dirname(sandbox.KIT_DIR))
    sandbox.sweep()  # what killed grading processes left (kernels' cgroups, run folders' mounts)
    ensure_assignment(course, assignment)
    students = students or course.students(assignment)
    refused = [refused_result(s, assignment) for s in students if not ids.is_valid(s)]
    students = [s for s in students if ids.is_valid(s)]  # nbgrader reads an id as a glob: only valid ones reach it
    workers = max(1, min(workers or os.cpu_count() or 1, len(students) or 1))
    with course.gradebook() as gb:
        notebooks = sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)
    bar = Progress(len(students)) if progress else None
    root = str(course.root)

    def _on_result(result):
        if bar:
            bar.step(result["student"])
        if on_result:
            on_result(result)

    def failed_result(student, done, reason, tries=1 + RETRIES):
        out = StudentResult(student, assignment, [NotebookResult.from_json(n) for n in done])
        finished = {n.notebook for n in out.notebooks}
        for nb in notebooks:
            if nb not in finished:
                try:
                    _zero(course, assignment, student, nb)
                except Exception:  # no submission row yet: nothing to zero, the report says why
                    pass
                out.notebooks.append(NotebookResult(
                    nb, Status.FAILED,
                    f"could not be graded: {reason} (tried {tries} time{'s' * (tries > 1)}); scored 0"))
        return out.to_json()

    try:
        env = {sandbox.ENV_MODE: mode, GRADER_MEMORY_ENV: str(grader_memory_mb(course))}
        results = run_batch(root, assignment, students, workers, env, _on_result, notebooks,
                            failed_result, ahead=lambda slot: start_ahead(root, assignment, slot),
                            limit=student_time_limit(course, assignment, notebooks)) if students else []
    except Interrupted as stop:
        # what was graded stays graded; a rerun finishes
        save_report(course.root, assignment, [StudentResult.from_json(r) for r in stop.results])
        raise
    typed = sorted([StudentResult.from_json(r) for r in results] + refused, key=lambda r: r.student)
    save_report(course.root, assignment, typed)
    return typed


def grader_memory_mb(course: Course) -> int:
    """CourseExecute.grader_memory_mb as configured (the trait's default otherwise)."""
    from attnkit.sandbox import CourseExecute

    config = course.api().config
    set_to = config.CourseExecute.get("grader_memory_mb") if "CourseExecute" in config else None
    return int(CourseExecute.grader_memory_mb.default_value if set_to is None else set_to)


def student_time_limit(course: Course, assignment: str, notebooks: list[str]) -> float:
    """Wall-clock seconds for one student's grading: CourseExecute.student_timeout, or else the per-cell
    timeout x the code cells of the assignment's notebooks + 120 s per notebook (kernels, hidden tests)."""
    config = course.api().config
    set_to = config.CourseExecute.get("student_timeout", 0) if "CourseExecute" in config else 0
    if set_to:
        return float(set_to)
    per_cell = config.Execute.get("timeout", 30) if "Execute" in config else 30
    cells = 0
    for nb in notebooks:
        try:
            cells += sum(c.cell_type == "code" for c in nbformat.read(
                str(course.path("source", assignment, f"{nb}.ipynb")), as_version=4).cells)
        except Exception:  # no source copy: a generous guess
            cells += 50
    return float(cells * (per_cell or 60) + 120 * len(notebooks))


def refused_result(student: str, assignment: str) -> StudentResult:
    """The result of a student whose id breaks the id rule: not graded, nothing of theirs touched."""
    return StudentResult(student, assignment, [NotebookResult(
        "*", Status.FAILED, f"not graded: {ids.refusal(student)}; rename submitted/<id>/ to a valid id")])


def _safe_grade(root: str, assignment: str, student: str, on_notebook=None, prestart: bool = False) -> dict:
    """A grading crash for one student is recorded, never raised into the batch."""
    try:
        return grade_student(root, assignment, student, on_notebook, prestart)
    except Exception as exc:  # pragma: no cover - defensive: the batch must go on
        import traceback

        return StudentResult(student, assignment, [NotebookResult(
            "*", Status.FAILED, f"could not be graded: grader error: {type(exc).__name__}: {exc}")]).to_json() | {
            "traceback": traceback.format_exc()}
