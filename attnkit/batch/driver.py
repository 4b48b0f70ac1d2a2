"""autograde: grade submitted/ in parallel worker processes (batch/workers.py), every kernel in
the grading sandbox (attnkit.sandbox); one student's run is batch/student.py.

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

from attnkit import ids
from attnkit.batch.student import _zero, start_ahead
from attnkit.course import Course
from attnkit.sandbox.limits import KernelLimits
from attnkit.batch.progress import Progress
from attnkit.batch.results import NotebookResult, save_report, Status, StudentResult


def ensure_assignment(course: Course, assignment: str) -> None:
    """Autograde needs the assignment in the gradebook: generate it if this gradebook lacks it."""
    from attnkit.authoring.release import generate

    with course.gradebook() as gb:
        try:
            gb.find_assignment(assignment)
            return
        except Exception:
            pass
    generate(course, assignment)


def autograde(course: Course, assignment: str, students: list[str] | None = None, workers: int | None = None,
              progress: bool = True, allow_unsandboxed: bool = False, on_result=None,
              fork: bool = False) -> list[StudentResult]:
    """Grade the given (default: all submitted) students; returns one result per student, by id.
    ``on_result(result)``: each student's result (JSON data) as soon as it is in the gradebook.
    ``fork``: the caller is the command's own fresh process (``./kit autograde``), which did nothing a fork must
    not share: the grading processes start as forks of it (workers.Forked), not as new interpreters.

    Refuses (SandboxUnavailable) when no sandbox works here, unless ``allow_unsandboxed``."""
    from attnkit import sandbox
    from attnkit.batch.workers import GRADER_MEMORY_ENV, RETRIES, Interrupted, grades_in_process, run_batch

    mode = sandbox.detect()
    if mode == "none" and not allow_unsandboxed:
        raise sandbox.SandboxUnavailable(
            f"{sandbox.describe(mode)}. Refusing to grade submissions unsandboxed: install bubblewrap "
            f"(apt-get install -y bubblewrap) or pass --unsandboxed-i-accept-the-risk.")
    config = course.api().config
    limits = KernelLimits.configured(config)
    print(sandbox.describe_limits(mode, limits.memory_limit_mb, limits.cgroup_memory_mb, limits.max_processes),
          file=sys.stderr)  # below the sandbox line
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

    env = {sandbox.ENV_MODE: mode, GRADER_MEMORY_ENV: str(grader_memory_mb(course))}
    ahead = lambda slot: start_ahead(root, assignment, slot)  # noqa: E731
    warm_configured = config.get("CourseKernelManager", {}).get("warm_start", True)
    in_process = grades_in_process(len(students), workers, fork)
    short = sandbox.warm.cold_for_memory(workers, in_process) if mode == "bwrap" and warm_configured else ""
    if short:  # said once, below the memory line; the grading processes inherit the choice
        print(f"warm start: off: {short}; kernels start cold ({sandbox.ENV_WARM}=1 turns it on)", file=sys.stderr)
        env[sandbox.ENV_WARM], ahead = "0", None
        sandbox.warm.drop_early()
    elif in_process and mode == "bwrap" and warm_configured and sandbox.warm.cold_for_memory(workers):
        env[sandbox.ENV_WARM] = "1"  # warm only because no grading process is forked: this process's own checks agree
    try:
        results = run_batch(root, assignment, students, workers, env, _on_result, notebooks,
                            failed_result, ahead=ahead,
                            limit=student_time_limit(course, assignment, notebooks), fork=fork) if students else []
    except Interrupted as stop:
        # what was graded stays graded; a rerun finishes
        save_report(course.root, assignment, [StudentResult.from_json(r) for r in stop.results])
        raise
    typed = sorted([StudentResult.from_json(r) for r in results] + refused, key=lambda r: r.student)
    save_report(course.root, assignment, typed)
    return typed


def grader_memory_mb(course: Course) -> int:
    """CourseExecute.grader_memory_mb as configured (the trait's default otherwise)."""
    from attnkit.preprocessors.execute import CourseExecute

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
        try:  # the instructor's own notebooks: counted, not validated (nbformat's validation took 40 ms here)
            with open(course.path("source", assignment, f"{nb}.ipynb"), encoding="utf-8") as f:
                cells += sum(c.get("cell_type") == "code" for c in json.load(f)["cells"])
        except Exception:  # no source copy: a generous guess
            cells += 50
    return float(cells * (per_cell or 60) + 120 * len(notebooks))


def refused_result(student: str, assignment: str) -> StudentResult:
    """The result of a student whose id breaks the id rule: not graded, nothing of theirs touched."""
    return StudentResult(student, assignment, [NotebookResult(
        "*", Status.FAILED, f"not graded: {ids.refusal(student)}; rename submitted/<id>/ to a valid id")])
