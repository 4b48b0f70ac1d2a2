"""Merging each student's result into the course's gradebook: one writer, one transaction per student, every value checked first."""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import shutil
import tempfile

from pathlib import Path
from attnkit.course import Course
from attnkit.batch.results import NotebookResult, Status, StudentResult, save_report
from attnkit.slurm.run import MAX_RESULT_BYTES, Run, _runs

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
    from attnkit.batch.student import read_regular

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
    from attnkit.batch.student import MAX_FILE_BYTES, read_regular

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
    from attnkit.batch.student import _zero

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
    from attnkit.batch.results import load_report

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
