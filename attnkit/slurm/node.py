"""One array task, on a compute node: its shard graded in node-local scratch by the local batch's code, each student written to the run folder."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import sys
import tempfile
import time

from pathlib import Path
from attnkit.course import Course
from attnkit.slurm.run import Run, devices_here, gpu_refusal, has_cuda
from attnkit.slurm.merging import _copy_regular

def copy_submission(src: Path, dest: Path) -> None:
    """Copy submitted/<student>/<assignment> into scratch as it is: regular files (one over the size cap
    as a sparse file of its size), links as links (never followed), FIFOs as FIFOs, so that grading
    sees, refuses and says exactly what it would on the shared copy."""
    from attnkit.batch.student import MAX_FILE_BYTES

    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        dest.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(src):
            copy_submission(Path(entry.path), dest / entry.name)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    elif stat.S_ISREG(st.st_mode):
        if st.st_size > MAX_FILE_BYTES:
            with open(dest, "wb") as f:
                f.truncate(st.st_size)
        else:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fin, open(dest, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dest)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        try:
            os.mknod(dest, st.st_mode, st.st_rdev)
        except OSError:  # unprivileged: still not a regular file, so refused the same way
            os.mkfifo(dest)
    elif stat.S_ISSOCK(st.st_mode):
        import socket as _s

        with _s.socket(_s.AF_UNIX) as sock:
            sock.bind(str(dest))


def _scratch_base() -> str:
    for var in ("ATTNKIT_SCRATCH", "SLURM_TMPDIR", "TMPDIR"):
        if os.environ.get(var) and os.path.isdir(os.environ[var]):
            return os.environ[var]
    return tempfile.gettempdir()


def _scratch_course(course: Course, assignment: str, students: list[str]) -> Course:
    dest = Path(tempfile.mkdtemp(prefix="attnkit-slurm-task-", dir=_scratch_base()))
    for name in ("course_config.py", "nbgrader_config.py"):
        if course.path(name).is_file():
            shutil.copy2(course.path(name), dest / name)
    shutil.copytree(course.path("source", assignment), dest / "source" / assignment,
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    grader = course.grader_file(assignment)  # the assignment's grader helper, where the configuration names it
    if grader is not None and grader.is_file():
        (dest / grader.relative_to(course.root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(grader, dest / grader.relative_to(course.root))
    src = sqlite3.connect(f"file:{course.path('gradebook.db')}?mode=ro", uri=True)
    out = sqlite3.connect(dest / "gradebook.db")
    with contextlib.closing(src), contextlib.closing(out):
        src.backup(out)  # a consistent copy even while the merge writes
    for s in students:
        top = course.path("submitted", s)
        st = os.lstat(top)
        if not stat.S_ISDIR(st.st_mode):  # grading refuses it for what it is: keep it what it is
            (dest / "submitted").mkdir(exist_ok=True)
            copy_submission(top, dest / "submitted" / s)
        elif os.path.lexists(top / assignment):
            copy_submission(top / assignment, dest / "submitted" / s / assignment)
    return Course(dest)


def _rows(scratch: Course, assignment: str, student: str) -> dict:
    with scratch.gradebook() as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except Exception:
            return {"timestamp": None, "notebooks": {}}
        return {"timestamp": sub.timestamp.isoformat() if sub.timestamp else None, "notebooks": {
            nb.name: {"flagged": nb.flagged, "late_submission_penalty": nb.late_submission_penalty,
                      "grades": {g.name: {"auto_score": g.auto_score, "manual_score": g.manual_score,
                                          "extra_credit": g.extra_credit, "needs_manual_grade": g.needs_manual_grade}
                                 for g in nb.grades},
                      "comments": {c.name: {"auto_comment": c.auto_comment, "manual_comment": c.manual_comment}
                                   for c in nb.comments}}
            for nb in sub.notebooks}}


def _write_result(run: Run, scratch: Course, result: dict, extra: dict) -> None:
    student, assignment = result["student"], run.data["assignment"]
    final = run.result_dir(student)
    tmp = Path(tempfile.mkdtemp(prefix=f".{student}-", dir=final.parent))
    graded = scratch.path("autograded", student, assignment)
    if graded.is_dir():
        _copy_regular(graded, tmp / "autograded")
    logs = sorted(scratch.path("reports", "logs").glob(f"{assignment}-{student}-*.log"))
    if logs:
        (tmp / "logs").mkdir()
        for f in logs:
            shutil.copyfile(f, tmp / "logs" / f.name)
    data = {"student": student, "result": result, "gradebook": _rows(scratch, assignment, student), **extra}
    (tmp / "result.json").write_text(json.dumps(data))
    if final.exists():  # an earlier round's partial copy: replaced whole
        old = Path(tempfile.mkdtemp(prefix=f".{student}-old-", dir=final.parent))
        final.rename(old / "r")
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)


def task(run_dir: str, round_no: int) -> int:
    """One array task: grade this task's shard in node-local scratch; each student's result to the run folder."""
    from attnkit import sandbox
    from attnkit.batch.driver import autograde

    run = Run(Path(run_dir))
    index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "0")
    shard = json.loads((run.dir / "shards" / f"{round_no}-{index}.json").read_text())
    course, assignment = run.course, run.data["assignment"]
    marker = run.dir / "tasks" / f"{job}_{index}.json"
    node = socket.gethostname()
    t0 = time.perf_counter()

    def mark(status: str, **more) -> None:
        tmp = marker.with_suffix(".part")
        tmp.write_text(json.dumps({"status": status, "node": node, "seconds": time.perf_counter() - t0, **more}))
        tmp.replace(marker)

    why = gpu_refusal(course)
    if not why and run.data["options"].get("gpus") and not has_cuda():
        why = f"the task asked for a GPU (--gpus-per-task) but torch sees none on {node}"
    try:
        mode = sandbox.detect()
        said = sandbox.describe(mode)
    except sandbox.SandboxUnavailable as exc:  # a forced mode that does not work on this node
        mode, said = "none", str(exc)
    if not why and mode == "none" and not run.data["options"].get("unsandboxed"):
        why = (f"node {node} cannot sandbox the kernels ({said}): bubblewrap needs unprivileged "
               f"user namespaces there (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0); ask the "
               f"cluster's admins, or grade elsewhere")
    if why:
        print(f"error: {why}", file=sys.stderr)
        mark("refused", reason=why)
        return 2
    todo = [s for s in shard if not (run.result_dir(s) / "result.json").is_file()]  # a requeued task resumes
    devices = devices_here()
    print(f"task {job}_{index} on {node} as uid {os.geteuid()}: {len(todo)} of {len(shard)} students to grade; "
          f"hidden tests on {', '.join(devices)}\n{said}", file=sys.stderr)  # the limits line follows (autograde)
    # scancel, preemption, --time: Slurm sends SIGTERM before SIGKILL; exiting runs the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    scratch = _scratch_course(course, assignment, todo) if todo else None
    try:
        extra = {"devices": devices, "node": node, "task": f"{job}_{index}"}
        workers = int(os.environ.get("SLURM_CPUS_PER_TASK") or run.data["options"]["workers"] or 1)
        if todo:
            autograde(scratch, assignment, todo, workers, progress=False,
                      allow_unsandboxed=bool(run.data["options"].get("unsandboxed")),
                      on_result=lambda r: _write_result(run, scratch, r, extra))
        mark("done", devices=devices)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch.root, ignore_errors=True)
    return 0
