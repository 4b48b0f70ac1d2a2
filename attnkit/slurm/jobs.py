"""Submitting the array job, reading its task states, and following it until every task has ended."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from attnkit.course import Course
from attnkit.slurm.run import ACTIVE, POLL, Run, SlurmError, _runs, shards
from attnkit.slurm.merging import merge

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


@contextlib.contextmanager
def recorded():
    """Is a job that sbatch accepted always written down? Ctrl-C (SIGINT) inside this block waits for its end,
    so a submitted job is in run.json and the jobs index before the KeyboardInterrupt: the same command resumes
    it instead of losing it, or submitting it twice."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    caught = []
    before = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        if caught and before is not signal.SIG_IGN:
            raise KeyboardInterrupt


def _sbatch(run: Run, round_no: int, groups: list[list[str]]) -> str:
    """Submit one round's array job and record it: run.json first (what a resume reads), then the jobs index."""
    sdir = run.dir / "shards"
    sdir.mkdir(exist_ok=True)
    for i, group in enumerate(groups):
        (sdir / f"{round_no}-{i}.json").write_text(json.dumps(group))
    script = run.dir / f"round-{round_no}.sbatch"
    script.write_text(_script(run, round_no, len(groups)))
    with recorded():
        # its own session: a Ctrl-C at the terminal must not stop sbatch between accepting the job and saying its id
        proc = subprocess.run([_need("sbatch"), "--parsable", str(script)], capture_output=True, text=True,
                              cwd=run.course.root, start_new_session=True)
        if proc.returncode != 0:
            raise SlurmError(f"sbatch refused the job: {proc.stderr.strip()[-500:]}")
        job = proc.stdout.strip().split(";")[0]
        if not job.isdigit():
            raise SlurmError(f"sbatch said {proc.stdout.strip()!r}, not a job id")
        run.data["rounds"].append({"job": job, "shards": groups})
        run.save()
        index = _runs(run.course) / "jobs"
        index.mkdir(parents=True, exist_ok=True)
        (index / job).write_text(run.dir.name)
    return job


def submit(course: Course, assignment: str, students: list[str], options: dict) -> Run:
    """Write a run folder and submit its first array job. ``options``: partition, tasks, gpus, time, workers,
    unsandboxed."""
    from attnkit.batch.driver import ensure_assignment

    ensure_assignment(course, assignment)  # every task copies the gradebook: it must hold the assignment
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = _runs(course) / f"{assignment}-{stamp}"
    for sub in ("results", "tasks", "out"):
        (folder / sub).mkdir(parents=True)
    # run.json is first written with the job: a folder without it was never submitted, and no rerun resumes it
    run = Run(folder, {"assignment": assignment, "students": students, "options": options, "rounds": []})
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
