"""Command line for course staff and students: ./kit <command> (or python -m attnkit)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from attnkit.course import Course


def _assignments(course: Course, names):
    known = course.assignments()
    for name in names or []:
        if name not in known:
            raise SystemExit(f"error: no assignment {name!r} in source/ (known: {', '.join(known)})")
    return names or known


def cmd_release(args) -> int:
    from attnkit.authoring.release import ReleaseError, release

    course = Course(args.root)
    try:
        release(course, _assignments(course, args.assignments))
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_new(args) -> int:
    from attnkit.authoring.new import create

    course = Course(args.root)
    try:
        written = create(course, args.assignment)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path.relative_to(course.root)}")
    a = args.assignment
    print(f"next: ./kit release {a} && ./kit check {a} && ./kit integrity --banks {a}   (docs/new-assignment.md)")
    return 0


def _sandbox_line(allow: bool, what: str) -> bool:
    """Print which sandbox grading uses; False when grading must be refused."""
    from attnkit import sandbox

    try:
        mode = sandbox.detect()
    except sandbox.SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    print(sandbox.describe(mode), file=sys.stderr)
    if mode == "none":
        if not allow:
            print(f"error: refusing to grade {what} unsandboxed: install bubblewrap (apt-get install -y bubblewrap, "
                  f"as root) or pass --unsandboxed-i-accept-the-risk", file=sys.stderr)
            return False
        print(f"WARNING: grading {what} WITHOUT a sandbox: their code can read the course and the gradebook",
              file=sys.stderr)
    return True


def cmd_autograde(args) -> int:
    if args.on == "slurm" or args.collect:
        from attnkit.slurm import cli

        return cli(args, _assignments)
    try:
        return _autograde(args)
    except KeyboardInterrupt as stop:  # Ctrl-C: grades already written stay; the same command finishes
        done = f"{len(stop.results)} students graded and recorded; " if hasattr(stop, "results") else ""
        print(f"\ninterrupted: {done}run the same command again to finish (grades already written are kept)",
              file=sys.stderr)
        return 130


def _autograde(args) -> int:
    course = Course(args.root)
    from attnkit.sandbox.warm import launch_remembered

    launch_remembered(str(course.root), args.workers)  # the first sandbox's imports, beside the configuration's
    from attnkit.batch.driver import autograde
    from attnkit.reports import table

    if not _sandbox_line(args.unsandboxed_i_accept_the_risk, "submissions"):
        return 2
    from attnkit.slurm import gpu_refusal

    if gpu_refusal(course):  # c.Cluster.require_gpu: never a CPU-only grade
        print(f"error: refusing to grade: {gpu_refusal(course)}", file=sys.stderr)
        return 2
    status = 0
    for assignment in _assignments(course, [args.assignment] if args.assignment else None):
        students = args.student or None
        if students:
            from attnkit import ids

            bad = [s for s in students if not ids.is_valid(s)]  # nbgrader would read it as a pattern
            for s in bad:
                print(f"error: {ids.refusal(s)}", file=sys.stderr)
            status |= bool(bad)
            students = [s for s in students if s not in bad]
            missing = [s for s in students if not course.path("submitted", s, assignment).is_dir()]
            for s in missing:
                print(f"error: nothing submitted for {s!r} in submitted/{s}/{assignment}", file=sys.stderr)
            status |= bool(missing)
            students = [s for s in students if s not in missing]
            if not students:
                continue
        elif not course.students(assignment):
            print(f"nothing submitted for {assignment} (submitted/<student>/{assignment}/)")
            continue
        t0 = time.perf_counter()
        results = autograde(course, assignment, students, args.workers, progress=not args.quiet,
                            allow_unsandboxed=args.unsandboxed_i_accept_the_risk, fork=True)
        for r in results:  # a refused id is not in the gradebook, so not in the table: said here
            for n in r.notebooks:
                if n.notebook == "*" and n.message.startswith("not graded: student id"):
                    print(f"error: {n.message}", file=sys.stderr)
        print(f"\n{assignment}: autograded {len(results)} submissions in {time.perf_counter() - t0:.1f}s")
        print(table(course, assignment, [r.student for r in results]))
        if not all(r.ok for r in results):
            status = 1
    return status


def cmd_feedback(args) -> int:
    from attnkit.reports import feedback

    from attnkit import ids

    course = Course(args.root)
    bad = [s for s in args.student or [] if not ids.is_valid(s)]  # nbgrader would read it as a pattern
    for s in bad:
        print(f"error: {ids.refusal(s)}", file=sys.stderr)
    if bad:
        return 1
    problems = []
    for assignment in _assignments(course, [args.assignment] if args.assignment else None):
        paths = feedback(course, assignment, args.student or None, problems, log=print)
        print(f"{assignment}: wrote {len(paths)} feedback files under feedback/ (no hidden tests, no mark schemes)")
    # A submission that could not be graded was already reported by autograde; a page refused
    # for a leak, or one nbgrader could not write, is a new problem.
    from attnkit.batch.results import Problem
    return 1 if any(p.kind is not Problem.NOT_GRADED for p in problems) else 0


def cmd_export(args) -> int:
    from attnkit.reports import export

    from nbgrader.api import MissingEntry

    course = Course(args.root)
    for assignment in _assignments(course, [args.assignment] if args.assignment else None):
        try:
            with course.gradebook() as gb:
                gb.find_assignment(assignment)
        except MissingEntry:
            print(f"error: nothing graded for {assignment} in {course.path('gradebook.db')} yet "
                  f"(./kit autograde {assignment} first): no CSV written", file=sys.stderr)
            return 1
        if args.format == "canvas":
            from attnkit.lms.canvas import export_canvas

            out = Path(args.output or course.path(f"grades-{assignment}-canvas.csv"))
            out, pending = export_canvas(course, assignment, out, args.canvas_id, args.autograded_only)
            if args.autograded_only:
                print(f"{assignment}: autograded points only (written answers left out, Points Possible too)")
            elif pending:
                print(f"{assignment}: {len(pending)} students have written answers not graded yet; their cell is "
                      f"empty (Canvas: not graded): {', '.join(pending)}. Grade them in the formgrader, or export "
                      f"--autograded-only.")
        else:
            if args.autograded_only:
                print("error: --autograded-only is for --format canvas (the parts CSV has every part)", file=sys.stderr)
                return 2
            out = Path(args.output or course.path(f"grades-{assignment}.csv"))
            export(course, assignment, out)
        print(f"{assignment}: wrote {out}")
        _warn_demo_students(course, assignment)
    return 0


def _warn_demo_students(course: Course, assignment: str) -> None:
    """Older kits wrote the demo's samples into the real course: say so before they reach an LMS."""
    from attnkit.authoring.samples import MARKER, SAMPLES

    if (course.root / MARKER).exists():  # the demo's own course: its samples belong there
        return
    with course.gradebook() as gb:
        found = sorted(s.id for s in gb.students if s.id in SAMPLES)
    if found:
        print(f"warning: the demo's sample students {', '.join(found)} are in this course's gradebook (an older "
              f"./kit demo put them there); remove their rows from the export, and submitted/<sample>/{assignment}",
              file=sys.stderr)


def cmd_bundle(args) -> int:
    from attnkit.authoring.bundle import bundle

    course = Course(args.root)
    for assignment in _assignments(course, [args.assignment] if args.assignment else None):
        bundle(course, assignment)
    return 0


def cmd_gradescope(args) -> int:
    from attnkit.lms.gradescope import build

    course = Course(args.root)
    for assignment in _assignments(course, [args.assignment] if args.assignment else None):
        try:
            out = build(course, assignment, Path(args.output) if args.output else None, args.written, args.visibility)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{assignment}: wrote {out} (upload it as the Gradescope autograder; written answers: {args.written})")
    return 0


def cmd_collect(args) -> int:
    import datetime as dt

    from attnkit.lms.collect import collect

    course = Course(args.root)
    assignment = _assignments(course, [args.assignment])[0]
    due = None
    if args.due:
        due = dt.datetime.fromisoformat(args.due)
        due = due if due.tzinfo else due.replace(tzinfo=dt.timezone.utc)
    try:
        report = collect(course, assignment, Path(args.export), args.format, due)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {args.export}: {exc}", file=sys.stderr)
        return 1
    print(report.table(assignment))
    return 0


def cmd_validate(args) -> int:
    from attnkit.student.validate import validate

    code = 0
    for nb in args.notebooks:
        code = max(code, validate(nb))
    return code


def cmd_check(args) -> int:
    from attnkit.authoring.check import check

    course = Course(args.root)
    _sandbox_line(True, "the instructor's own notebooks")  # says whether grading is sandboxed
    return 0 if check(course, _assignments(course, args.assignments), args.workers) else 1


def cmd_demo(args) -> int:
    from attnkit.batch.driver import autograde
    from attnkit.authoring.release import release
    from attnkit.reports import export, feedback, table
    from attnkit.authoring.samples import SAMPLES, demo_course, place

    t0 = time.perf_counter()
    real = Course(args.root)
    course = demo_course(real)  # its own folder: the samples never join the real class
    assignment = course.assignments()[0]
    _sandbox_line(True, "the demo's own samples")
    print(f"== demo course in {course.root} (its own submitted/, gradebook.db, feedback/; "
          f"{real.root}'s own are untouched)")
    print(f"== release {assignment}")
    release(course, [assignment])
    print(f"== sample submissions in {course.path('submitted').relative_to(real.root)}/: "
          + "; ".join(f"{k} ({v})" for k, v in SAMPLES.items()))
    students = place(course, assignment)
    print("== autograde")
    autograde(course, assignment, students, args.workers, allow_unsandboxed=True)
    print("== feedback")
    paths = feedback(course, assignment, students)
    print(f"wrote {len(paths)} feedback files, e.g. {paths[0].relative_to(real.root) if paths else '-'}")
    out = export(course, assignment, course.path(f"grades-{assignment}.csv"))
    print(f"== grades exported to {out.relative_to(real.root)}\n")
    print(table(course, assignment, students))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; everything it made is in {course.root} "
          f"(gradebook.db, submitted/, autograded/, feedback/, release/; the next demo empties it)")
    return 0


def cmd_integrity(args) -> int:
    from attnkit.integrity import run

    if args.cell_timeout:
        os.environ["ATTNKIT_CELL_TIMEOUT"] = str(args.cell_timeout)
    # hand-built fixtures may lack cell ids: nbformat's FutureWarning about it is noise here (workers too)
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning"]))
    banks = [b for b in (args.banks or "").split(",") if b] or None
    report = run(args.root, workers=args.workers or 2, banks=banks, keep=args.keep)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kit", description=__doc__)
    p.add_argument("--root", default=None, help="course root (default: the folder holding course_config.py)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("new", help="scaffold a working assignment: a notebook, its helper, its grader helper and a "
                                   "fixture bank (docs/new-assignment.md)")
    s.add_argument("assignment")
    s.set_defaults(func=cmd_new)

    s = sub.add_parser("release", help="generate student versions into release/ and prove them clean")
    s.add_argument("assignments", nargs="*")
    s.set_defaults(func=cmd_release)

    s = sub.add_parser("autograde", help="grade submitted/ in parallel; print a score table")
    s.add_argument("assignment", nargs="?")
    s.add_argument("--student", action="append", help="grade only this student (repeatable)")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--unsandboxed-i-accept-the-risk", action="store_true",
                   help="grade even where no sandbox works: submitted code then runs with the grader's rights")
    s.add_argument("--on", choices=("local", "slurm"), default="local",
                   help="slurm: one sbatch --array job over shards of the students (docs/running-a-course.md)")
    s.add_argument("--partition", help="with --on slurm: the partition (sbatch --partition)")
    s.add_argument("--tasks", type=int, default=None, help="with --on slurm: array tasks (default: one per 8 students)")
    s.add_argument("--gpus-per-task", type=int, default=0,
                   help="with --on slurm: GPUs per task (--gres=gpu:G); the hidden tests then run their CUDA cases")
    s.add_argument("--time", help="with --on slurm: each task's time limit (sbatch --time, e.g. 01:00:00)")
    s.add_argument("--no-wait", action="store_true", help="with --on slurm: print the job id and return")
    s.add_argument("--collect", metavar="JOBID",
                   help="wait for a cluster run (its first job id) and merge its results into the gradebook")
    s.set_defaults(func=cmd_autograde)

    s = sub.add_parser("feedback", help="HTML feedback per student, without hidden tests")
    s.add_argument("assignment", nargs="?")
    s.add_argument("--student", action="append")
    s.set_defaults(func=cmd_feedback)

    s = sub.add_parser("export", help="CSV: one row per student, one column per graded part")
    s.add_argument("assignment", nargs="?")
    s.add_argument("--output", "-o")
    s.add_argument("--format", choices=("parts", "canvas"), default="parts",
                   help="parts: one column per graded part (default); canvas: Canvas gradebook import CSV")
    s.add_argument("--canvas-id", default=None,
                   help="with --format canvas: the Canvas assignment id, written as '<assignment> (<id>)'")
    s.add_argument("--autograded-only", action="store_true",
                   help="with --format canvas: autograded points only, against the autograded maximum, in a column "
                        "'<assignment> autograded' (default: every point; a student with written answers not yet "
                        "graded gets an empty cell, which Canvas imports as not graded)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bundle", help="dist/<assignment>-student.zip: what students get (release, self-check, "
                                      "README, requirements)")
    s.add_argument("assignment", nargs="?")
    s.set_defaults(func=cmd_bundle)

    s = sub.add_parser("gradescope", help="build dist/<assignment>-gradescope.zip, the Gradescope autograder")
    s.add_argument("assignment", nargs="?")
    s.add_argument("--output", "-o", help="zip path (default dist/<assignment>-gradescope.zip)")
    s.add_argument("--written", choices=("pending", "omit"), default="pending",
                   help="written answers: 'pending' lists them as not yet graded, with their points, in the "
                        "submission's text (default; Gradescope has no neutral test); 'omit' leaves them out")
    s.add_argument("--visibility", choices=("visible", "hidden", "after_due_date", "after_published"),
                   default="visible", help="when students see each part's result on Gradescope")
    s.set_defaults(func=cmd_gradescope)

    s = sub.add_parser("collect", help="fill submitted/<student>/<assignment>/ from a Gradescope or Canvas export zip")
    s.add_argument("assignment")
    s.add_argument("export", help="Gradescope 'Export Submissions' zip or Canvas 'Download Submissions' zip")
    s.add_argument("--format", choices=("auto", "gradescope", "canvas"), default="auto")
    s.add_argument("--due", default=None, help="ISO time: a submission after it is listed late (Canvas marks its own)")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("validate", help="student self-check: run a notebook's visible tests")
    s.add_argument("notebooks", nargs="+")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("check", help="instructor self-check of source/ and release/")
    s.add_argument("assignments", nargs="*")
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("demo", help="release, autograde the sample submissions, feedback, grade table")
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("integrity", help="grade every fixture bank (the course's banks/) in a scratch course; "
                                         "print the confusion table and the tamper cases scored as intended")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default 2)")
    s.add_argument("--banks", default=None, help="comma-separated parts of bank names, e.g. q3,tamper (default: all)")
    s.add_argument("--cell-timeout", type=int, default=20,
                   help="seconds per cell while grading the banks (default 20, as the tests use; 0 = course setting)")
    s.add_argument("--keep", action="store_true", help="keep the scratch course")
    s.set_defaults(func=cmd_integrity)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return args.func(args)
