"""Grade on a Slurm cluster: one ``sbatch --array`` job over shards of the students, merged here.

``./kit autograde hw9 --on slurm`` writes a run folder, ``slurm/<assignment>-<time>/`` under the course
(the course folder must be on a file system the compute nodes share, as home and project folders are on
campus clusters), and submits one array task per shard (a student is never split across tasks). Each task
(``python -m attnkit.slurm task RUN ROUND``) grades its shard with the local batch's own code path
(``attnkit.grading.autograde``: the same sandbox, hidden tests, limits and messages) in a course copy in
node-local scratch ($SLURM_TMPDIR, $TMPDIR or /tmp), and writes each student, as they finish, to
``RUN/results/<student>/`` (their gradebook rows, autograded notebooks, logs), renamed into place whole.
The submitting command follows the array's task states, then merges every result into the course's
gradebook, one writer (a lock on ``slurm/merge.lock``) and one transaction per student. A task that failed,
timed out or was preempted is resubmitted once for its unfinished students; a student still ungraded after
that is "could not be graded: <the task's reason>", scored 0. Ctrl-C stops waiting and cancels nothing; the
same command (or ``--collect JOBID``) picks the run up again.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnkit.course import Course
from attnkit.results import NotebookResult, Status, StudentResult, save_report

RUNS = "slurm"                # under the course root
MAX_RESULT_BYTES = 4 << 20    # one student's result.json (scores, comments, messages)
POLL = float(os.environ.get("ATTNKIT_SLURM_POLL", "5"))
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT",
          "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STOPPED"}


class SlurmError(RuntimeError):
    """sbatch or squeue missing or refusing: the message says what to do."""


# ------------------------------------------------------------------------------------------ course settings
def require_gpu(course: Course) -> bool:
    """course_config.py ``c.Cluster.require_gpu = True``: the hidden tests must run on CUDA, never CPU only."""
    config = course.config()
    return bool(config.Cluster.get("require_gpu", False)) if "Cluster" in config else False


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, a broken driver: the CUDA cases cannot run here
        return False


def devices_here() -> list[str]:
    """What attnkit.grader.checks.devices() returns in a grading process on this node."""
    return ["cpu"] + (["cuda"] if has_cuda() else [])


def gpu_refusal(course: Course, gpus: int | None = None) -> str:
    """Why this course may not be graded here, or ''. ``gpus``: the GPUs each Slurm task asks for."""
    if not require_gpu(course):
        return ""
    if gpus is not None:
        return "" if gpus > 0 else ("this course grades on a GPU (course_config.py: c.Cluster.require_gpu = True): "
                                    "pass --gpus-per-task 1")
    if not has_cuda():
        return (f"this course grades on a GPU (course_config.py: c.Cluster.require_gpu = True) and "
                f"{socket.gethostname()} has none that torch can use")
    return ""


# ------------------------------------------------------------------------------------------------ the run
class Run:
    """One cluster batch: ``RUN/run.json`` (assignment, students, options, the jobs of each round)."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.data = json.loads((self.dir / "run.json").read_text())

    @property
    def course(self) -> Course:
        return Course(self.dir.parents[1])

    def save(self) -> None:
        tmp = self.dir / "run.json.part"
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.dir / "run.json")

    def result_dir(self, student: str) -> Path:
        return self.dir / "results" / student

    def graded(self) -> set[str]:
        return {s for s in self.data["students"] if (self.result_dir(s) / "result.json").is_file()}

    def jobs(self) -> list[str]:
        return [r["job"] for r in self.data["rounds"]]


def _runs(course: Course) -> Path:
    return course.path(RUNS)


def find_run(course: Course, job: str) -> Run | None:
    index = _runs(course) / "jobs" / str(job)
    if not index.is_file():
        return None
    return Run(_runs(course) / index.read_text().strip())


def open_run(course: Course, assignment: str, students: list[str]) -> Run | None:
    """The unfinished run of this assignment over these students (a rerun of the same command resumes it)."""
    base = _runs(course)
    for folder in sorted(base.glob(f"{assignment}-*"), reverse=True) if base.is_dir() else []:
        try:
            run = Run(folder)
        except (OSError, ValueError):
            continue
        if run.data["assignment"] == assignment and not run.data.get("finished") \
                and sorted(run.data["students"]) == sorted(students):
            return run
    return None


def shards(students: list[str], tasks: int) -> list[list[str]]:
    """``tasks`` (at most one per student) contiguous shards of near-equal size; a student is in exactly one."""
    n = max(1, min(tasks, len(students)))
    size = math.ceil(len(students) / n)
    return [students[i:i + size] for i in range(0, len(students), size)]


def _script(run: Run, round_no: int, count: int) -> str:
    o = run.data["options"]
    lines = ["#!/bin/bash", f"#SBATCH --job-name=attnkit-{run.data['assignment']}",
             f"#SBATCH --array=0-{count - 1}", f"#SBATCH --output={run.dir}/out/%A_%a.out",
             f"#SBATCH --cpus-per-task={o['workers']}", "#SBATCH --requeue"]
    if o.get("partition"):
        lines.append(f"#SBATCH --partition={o['partition']}")
    if o.get("time"):
        lines.append(f"#SBATCH --time={o['time']}")
    if o.get("gpus"):
        lines.append(f"#SBATCH --gres=gpu:{o['gpus']}")
    lines += [f"cd {_q(str(run.course.root))}",
              f"exec {_q(sys.executable)} -m attnkit.slurm task {_q(str(run.dir))} {round_no}", ""]
    return "\n".join(lines)


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise SlurmError(f"{tool} not found: run this on a Slurm login node (module load slurm?)")
    return path


def _sbatch(run: Run, round_no: int, groups: list[list[str]]) -> str:
    sdir = run.dir / "shards"
    sdir.mkdir(exist_ok=True)
    for i, group in enumerate(groups):
        (sdir / f"{round_no}-{i}.json").write_text(json.dumps(group))
    script = run.dir / f"round-{round_no}.sbatch"
    script.write_text(_script(run, round_no, len(groups)))
    proc = subprocess.run([_need("sbatch"), "--parsable", str(script)], capture_output=True, text=True,
                          cwd=run.course.root)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {proc.stderr.strip()[-500:]}")
    job = proc.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch said {proc.stdout.strip()!r}, not a job id")
    index = _runs(run.course) / "jobs"
    index.mkdir(parents=True, exist_ok=True)
    (index / job).write_text(run.dir.name)
    run.data["rounds"].append({"job": job, "shards": groups})
    run.save()
    return job


def submit(course: Course, assignment: str, students: list[str], options: dict) -> Run:
    """Write a run folder and submit its first array job. ``options``: partition, tasks, gpus, time, workers,
    unsandboxed."""
    from attnkit.grading import ensure_assignment

    ensure_assignment(course, assignment)  # every task copies the gradebook: it must hold the assignment
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = _runs(course) / f"{assignment}-{stamp}"
    for sub in ("results", "tasks", "out"):
        (folder / sub).mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"assignment": assignment, "students": students,
                                                 "options": options, "rounds": []}))
    run = Run(folder)
    _sbatch(run, 0, shards(students, options["tasks"]))
    return run


# --------------------------------------------------------------------------------------- task states
def _expand(ids: str) -> list[int]:
    """'0-3,5%2' -> [0, 1, 2, 3, 5]."""
    out = []
    for part in ids.split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += range(int(a), int(b) + 1)
        elif part.strip().isdigit():
            out.append(int(part))
    return out


def task_states(job: str) -> dict[int, tuple[str, str]] | None:
    """{array index: (state, reason)} of the array job's tasks that Slurm still knows about; None when the
    controller did not answer (busy, restarting): not knowing is never taken for "ended"."""
    states: dict[int, tuple[str, str]] = {}
    proc = subprocess.run([_need("scontrol"), "-o", "show", "job", job], capture_output=True, text=True)
    if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
        return None
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "ArrayTaskId" not in f:
            continue
        why = f.get("Reason", "None")
        if f.get("ExitCode", "0:0") != "0:0":
            why = f"exit code {f['ExitCode']}" + ("" if why == "None" else f", {why}")
        for i in _expand(f["ArrayTaskId"]):
            states[i] = (f.get("JobState", "UNKNOWN"), why)
    if not states and shutil.which("sacct"):  # scontrol forgets finished jobs after MinJobAge: accounting
        proc = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State,ExitCode,Reason"],
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            jid, state, code, reason = (line.split("|") + ["", "", ""])[:4]
            m = re.fullmatch(rf"{job}_(\[?[\d,\-%]+\]?)", jid)
            if m:
                for i in _expand(m.group(1).strip("[]")):
                    states[i] = (state.split()[0], f"exit code {code}" if code not in ("", "0:0") else reason)
    return states


def _marker(run: Run, job: str, index: int) -> dict | None:
    path = run.dir / "tasks" / f"{job}_{index}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def task_reason(run: Run, job: str, index: int, state: tuple[str, str] | None) -> str:
    """Why a task left students ungraded, in the words of the report."""
    marker = _marker(run, job, index)
    if marker and marker.get("status") == "refused":
        return marker["reason"]
    where = f"Slurm task {job}_{index}"
    if state is None:
        return f"{where} ended without finishing its students (Slurm no longer knows how)"
    name, why = state
    text = {"TIMEOUT": "ran past its time limit (--time)", "PREEMPTED": "was preempted",
            "CANCELLED": "was cancelled", "NODE_FAIL": "lost its node", "OUT_OF_MEMORY": "ran out of memory",
            "FAILED": "failed", "BOOT_FAIL": "could not boot its node", "DEADLINE": "passed its deadline"}
    said = text.get(name.split("+")[0], f"ended {name}")
    tail = ""
    out = run.dir / "out" / f"{job}_{index}.out"
    with contextlib.suppress(OSError):
        lines = [l.strip() for l in out.read_text(errors="replace")[-4000:].splitlines() if l.strip()]
        tail = f"; last output: {lines[-1][:200]}" if lines and name not in ("CANCELLED", "PREEMPTED") else ""
    return f"{where} {said}" + (f" ({why})" if why and why != "None" else "") + tail


# --------------------------------------------------------------------------------------------- waiting
def _summary(states: dict[int, tuple[str, str]], count: int) -> str:
    by: dict[str, int] = {}
    for i in range(count):
        name = states.get(i, ("ENDED", ""))[0].split("+")[0].lower()
        by[name] = by.get(name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(by.items()))


def follow(run: Run, progress: bool = True, stream=sys.stderr) -> None:
    """Wait until no task of the run's rounds is pending or running: a progress line whenever it changes;
    merges results as they arrive, and resubmits once for students a failed task left ungraded."""
    course = run.course
    total = len(run.data["students"])
    last = None
    t0 = time.perf_counter()
    while True:
        merge(run)
        rnd = len(run.data["rounds"]) - 1
        job = run.data["rounds"][rnd]["job"]
        count = len(run.data["rounds"][rnd]["shards"])
        states = task_states(job)
        if states is None:
            time.sleep(POLL)
            continue
        done = len(run.graded())
        if progress:
            width = 30
            bar = "#" * int(width * done / max(total, 1))
            line = (f"[{bar:.<{width}}] {done}/{total} students graded; job {job} tasks: "
                    f"{_summary(states, count)}")
            if line != last:
                stream.write(f"{line} ({time.perf_counter() - t0:.0f}s)\n")
                stream.flush()
                last = line
        if any(s.split("+")[0] in ACTIVE for s, _ in states.values()):
            time.sleep(POLL)
            continue
        merge(run)
        left = [s for s in run.data["students"] if s not in run.graded()]
        if not left:
            return
        reasons = _reasons(run, rnd, states)
        run.data["rounds"][rnd]["reasons"] = reasons
        run.save()
        refused = all(_refused(run, job, i) for i in range(count) if any(s in left for s in
                                                                        run.data["rounds"][rnd]["shards"][i]))
        if rnd >= 1 or refused:  # tried twice (or the nodes refuse to grade at all): scored 0, listed
            return
        if progress:
            stream.write(f"{len(left)} students not graded by job {job} "
                         f"({'; '.join(sorted(set(reasons[s] for s in left)))[:300]}): resubmitting them once\n")
        new = _sbatch(run, rnd + 1, shards(left, min(run.data["options"]["tasks"], len(left))))
        if progress:
            stream.write(f"submitted job {new}\n")


def _refused(run: Run, job: str, index: int) -> bool:
    marker = _marker(run, job, index)
    return bool(marker and marker.get("status") == "refused")


def _reasons(run: Run, rnd: int, states) -> dict[str, str]:
    job = run.data["rounds"][rnd]["job"]
    out = {}
    for i, group in enumerate(run.data["rounds"][rnd]["shards"]):
        why = task_reason(run, job, i, states.get(i))
        for s in group:
            out[s] = why
    return out


# ------------------------------------------------------------------------------------------------ merge
@contextlib.contextmanager
def _merge_lock(course: Course):
    path = _runs(course) / "merge.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one writer into the gradebook, whoever else is collecting
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def merge(run: Run) -> list[str]:
    """Merge every result not merged yet into the course: gradebook rows in one transaction per student,
    then autograded/ and the report. Returns the students merged now."""
    course, assignment = run.course, run.data["assignment"]
    merged_file = run.dir / "merged.json"
    merged_now, results = [], []
    with _merge_lock(course):
        merged = json.loads(merged_file.read_text()) if merged_file.is_file() else {}
        for student in sorted(run.graded()):
            path = run.result_dir(student) / "result.json"
            stamp = str(path.stat().st_mtime_ns)
            if merged.get(student) == stamp:
                continue
            try:
                data = _load_result(path, student, assignment)
                _merge_gradebook(course, assignment, student, data["gradebook"])
                _place_autograded(course, assignment, student, run.result_dir(student))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                data = {"result": StudentResult(student, assignment, [NotebookResult(
                    "*", Status.FAILED, f"could not be graded: its cluster result was unreadable ({exc}); "
                                        f"grade again")]).to_json(), "devices": []}
            results.append(StudentResult.from_json(data["result"]))
            _devices_note(run, student, data)
            merged[student] = stamp
            merged_now.append(student)
            tmp = merged_file.with_suffix(".part")
            tmp.write_text(json.dumps(merged))
            tmp.replace(merged_file)
        if results:
            save_report(course.root, assignment, results)
    return merged_now


def _load_result(path: Path, student: str, assignment: str) -> dict:
    from attnkit.grading import read_regular

    data = json.loads(read_regular(path, MAX_RESULT_BYTES))
    if data.get("student") != student or data["result"]["student"] != student or \
            data["result"]["assignment"] != assignment:
        raise ValueError("it names another student or assignment")
    StudentResult.from_json(data["result"])  # typed: a bad status raises
    return data


def _number(x, low=None, high=None):
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"not a score: {x!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"score {x} outside [{low}, {high}]")
    return float(x)


def _checked(gb, assignment: str, rows: dict) -> dict:
    """The task's rows with every value checked (a score within its part's maximum, text as text), before
    anything is written: a bad result changes nothing."""
    maxes = {nb.name: {g.name: g.max_score for g in nb.grade_cells} for nb in gb.find_assignment(assignment).notebooks}
    ts = rows.get("timestamp")
    out = {"timestamp": dt.datetime.fromisoformat(ts) if ts else None, "notebooks": {}}
    for name, nrow in rows["notebooks"].items():
        if name not in maxes:
            raise ValueError(f"no notebook {name!r} in {assignment}")
        out["notebooks"][name] = {
            "flagged": bool(nrow.get("flagged", False)),
            "late_submission_penalty": _number(nrow.get("late_submission_penalty"), 0),
            "grades": {g: {"auto_score": _number(v.get("auto_score"), 0, maxes[name][g]),
                           "manual_score": _number(v.get("manual_score"), 0, maxes[name][g]),
                           "extra_credit": _number(v.get("extra_credit")),
                           "needs_manual_grade": bool(v.get("needs_manual_grade", False))}
                       for g, v in nrow["grades"].items() if g in maxes[name]},
            "comments": {c: {"auto_comment": _text(v.get("auto_comment")),
                             "manual_comment": _text(v.get("manual_comment"))} for c, v in nrow["comments"].items()}}
    return out


def _merge_gradebook(course: Course, assignment: str, student: str, rows: dict) -> None:
    """The student's submission rows as the task's gradebook had them, written in one commit."""
    with course.gradebook() as gb:
        rows = _checked(gb, assignment, rows)
        gb.update_or_create_student(student)
        try:
            sub = gb.find_submission(assignment, student)
        except Exception:
            sub = gb.add_submission(assignment, student)
        try:
            sub.timestamp = rows["timestamp"]
            for nb in sub.notebooks:
                nrow = rows["notebooks"].get(nb.name)
                if nrow is None:
                    continue
                nb.flagged = nrow["flagged"]
                nb.late_submission_penalty = nrow["late_submission_penalty"]
                for g in nb.grades:
                    for key, value in nrow["grades"].get(g.name, {}).items():
                        setattr(g, key, value)
                for c in nb.comments:
                    for key, value in nrow["comments"].get(c.name, {}).items():
                        setattr(c, key, value)
            gb.db.commit()
        except Exception:
            gb.db.rollback()
            raise


def _text(x):
    if x is None:
        return None
    if not isinstance(x, str):
        raise ValueError("a comment that is not text")
    return x[:100_000]


def _place_autograded(course: Course, assignment: str, student: str, rdir: Path) -> None:
    src = rdir / "autograded"
    if not src.is_dir():
        return
    dest = course.path("autograded", student, assignment)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{assignment}-", dir=dest.parent))
    _copy_regular(src, tmp / "new")
    old = tmp / "old"
    if dest.exists():
        dest.rename(old)
    (tmp / "new").rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    logs = rdir / "logs"
    if logs.is_dir():
        target = course.path("reports", "logs")
        target.mkdir(parents=True, exist_ok=True)
        for f in logs.iterdir():
            if f.is_file() and not f.is_symlink():
                shutil.copyfile(f, target / f.name)


def _copy_regular(src: Path, dest: Path) -> None:
    """Regular files and folders only, never following a link (autograded output of hostile notebooks)."""
    from attnkit.grading import MAX_FILE_BYTES, read_regular

    dest.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        if entry.is_dir(follow_symlinks=False):
            _copy_regular(Path(entry.path), dest / entry.name)
        elif entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                (dest / entry.name).write_bytes(read_regular(entry.path, MAX_FILE_BYTES))


def _devices_note(run: Run, student: str, data: dict) -> None:
    notes = run.dir / "devices.json"
    have = json.loads(notes.read_text()) if notes.is_file() else {}
    have[student] = {"devices": [d for d in data.get("devices", []) if d in ("cpu", "cuda")][:2],
                     "node": str(data.get("node", ""))[:64], "task": str(data.get("task", ""))[:64],
                     "notebooks": [n["notebook"] for n in data["result"]["notebooks"]
                                   if n["status"] == "graded"]}
    notes.write_text(json.dumps(have, indent=1))


def finish(run: Run) -> list[StudentResult]:
    """After the last round: students still ungraded are scored 0 with their task's reason; the report of
    every student of the run, and the run marked finished."""
    from attnkit.grading import _zero

    course, assignment = run.course, run.data["assignment"]
    merge(run)
    left = [s for s in run.data["students"] if s not in run.graded()]
    tries = len(run.data["rounds"])
    with course.gradebook() as gb:
        notebooks = sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)
    failed = []
    reasons = run.data["rounds"][-1].get("reasons", {})
    with _merge_lock(course):
        for s in left:
            why = reasons.get(s, "its Slurm task ended without grading it")
            out = StudentResult(s, assignment)
            for nb in notebooks:
                with contextlib.suppress(Exception):  # no submission row yet: the report says why
                    _zero(course, assignment, s, nb)
                out.notebooks.append(NotebookResult(
                    nb, Status.FAILED,
                    f"could not be graded: {why} (tried {tries} time{'s' * (tries > 1)}); scored 0"))
            failed.append(out)
        if failed:
            save_report(course.root, assignment, failed)
    from attnkit.results import load_report

    report = load_report(course.root, assignment)
    run.data["finished"] = True
    run.save()
    return [report[s] for s in sorted(run.data["students"]) if s in report]


def devices_lines(run: Run) -> list[str]:
    """Per student, the devices their notebooks' hidden tests ran on (and where CUDA was skipped)."""
    notes = run.dir / "devices.json"
    have = json.loads(notes.read_text()) if notes.is_file() else {}
    lines = []
    for s in sorted(have):
        d = have[s]
        on = ", ".join(d["devices"]) or "?"
        skipped = "" if "cuda" in d["devices"] else " (no GPU on the node: CUDA cases skipped)"
        nbs = ", ".join(d["notebooks"]) or "no notebook graded"
        lines.append(f"  {s}: {nbs} ran on {on}{skipped}; node {d['node'] or '?'}, task {d['task']}")
    return lines


# -------------------------------------------------------------------------------------------- command
def cli(args, assignments) -> int:
    """./kit autograde ASSIGNMENT --on slurm ... and ./kit autograde --collect JOBID."""
    from attnkit import ids
    from attnkit.grading import refused_result
    from attnkit.reports import table

    course = Course(args.root)
    run = None
    try:
        if args.collect:
            run = find_run(course, args.collect)
            if run is None:
                print(f"error: no cluster run of this course has job {args.collect} "
                      f"({_runs(course) / 'jobs'} lists them)", file=sys.stderr)
                return 1
        else:
            if not args.assignment:
                print("error: --on slurm grades one assignment: name it (./kit autograde hw9 --on slurm)",
                      file=sys.stderr)
                return 2
            assignment = assignments(course, [args.assignment])[0]
            why = gpu_refusal(course, args.gpus_per_task)
            if why:
                print(f"error: refusing to grade: {why}", file=sys.stderr)
                return 2
            students = args.student or course.students(assignment)
            bad = [s for s in students if not ids.is_valid(s)]  # nbgrader would read it as a pattern
            for s in bad:
                print(f"error: {ids.refusal(s)}", file=sys.stderr)
            if bad and not args.student:  # a folder's name: listed in the report, as locally
                save_report(course.root, assignment, [refused_result(s, assignment) for s in bad])
            students = [s for s in students if s not in bad]
            missing = [s for s in students if not course.path("submitted", s, assignment).is_dir()]
            for s in missing:
                print(f"error: nothing submitted for {s!r} in submitted/{s}/{assignment}", file=sys.stderr)
            students = sorted(s for s in students if s not in missing)
            if not students:
                print(f"nothing to grade for {assignment}")
                return 1 if bad or missing else 0
            run = open_run(course, assignment, students)
            if run is not None:
                print(f"resuming the unfinished cluster run {run.dir.name} (job {', '.join(run.jobs())}): "
                      f"{len(run.graded())}/{len(students)} students graded", file=sys.stderr)
            else:
                workers = max(1, args.workers or 1)
                tasks = max(1, args.tasks or math.ceil(len(students) / 8))
                run = submit(course, assignment, students, {
                    "partition": args.partition, "tasks": tasks, "gpus": args.gpus_per_task or 0,
                    "time": args.time, "workers": workers, "unsandboxed": args.unsandboxed_i_accept_the_risk})
                print(f"submitted job {run.jobs()[0]}: {len(students)} students of {assignment} in "
                      f"{len(run.data['rounds'][0]['shards'])} array tasks ({workers} CPU"
                      f"{'s' * (workers > 1)}{f', {args.gpus_per_task} GPU' if args.gpus_per_task else ''} each); "
                      f"results in {run.dir.relative_to(course.root)}/", file=sys.stderr)
            if args.no_wait:
                print(run.jobs()[0])
                print(f"later: ./kit autograde --collect {run.jobs()[0]}", file=sys.stderr)
                return 0
        t0 = time.perf_counter()
        follow(run, progress=not args.quiet)
        results = finish(run)
        assignment = run.data["assignment"]
        print(f"\n{assignment}: autograded {len(results)} submissions on Slurm (job "
              f"{', '.join(run.jobs())}) in {time.perf_counter() - t0:.1f}s")
        print(table(course, assignment, [r.student for r in results]))
        lines = devices_lines(run)
        if lines:
            print("devices the hidden tests ran on:")
            print("\n".join(lines))
        return 0 if all(r.ok for r in results) else 1
    except KeyboardInterrupt:
        job = run.jobs()[0] if run is not None and run.jobs() else "?"
        print(f"\ninterrupted: nothing was cancelled; job {job} goes on on the cluster, and the students already "
              f"graded are merged. Run the same command again (or ./kit autograde --collect {job}) to follow it "
              f"and merge the rest", file=sys.stderr)
        return 130
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------------------- the task
def copy_submission(src: Path, dest: Path) -> None:
    """Copy submitted/<student>/<assignment> into scratch as it is: regular files (one over the size cap
    as a sparse file of its size), links as links (never followed), FIFOs as FIFOs, so that grading
    sees, refuses and says exactly what it would on the shared copy."""
    from attnkit.grading import MAX_FILE_BYTES

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
    from attnkit.grading import autograde

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
    print(f"task {job}_{index} on {node}: {len(todo)} of {len(shard)} students to grade; hidden tests on "
          f"{', '.join(devices)}", file=sys.stderr)
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


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    if len(argv) == 3 and argv[0] == "task":
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                              "ignore::FutureWarning"]))
        return task(argv[1], int(argv[2]))
    print("usage: python -m attnkit.slurm task RUN_DIR ROUND (run by sbatch)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
