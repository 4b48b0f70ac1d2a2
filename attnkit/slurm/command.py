"""./kit autograde --on slurm and --collect: submit or pick up a run, follow it, resubmit once, merge, report."""
from __future__ import annotations

import math
import sys
import time

from attnkit.course import Course
from attnkit.batch.results import save_report
from attnkit.slurm.run import SlurmError, _runs, find_run, gpu_refusal, open_run
from attnkit.slurm.jobs import follow, submit
from attnkit.slurm.merging import devices_lines, finish

def cli(args, assignments) -> int:
    """./kit autograde ASSIGNMENT --on slurm ... and ./kit autograde --collect JOBID."""
    from attnkit import ids
    from attnkit.batch.driver import refused_result
    from attnkit.reports import table

    course = Course(args.root)
    run = assignment = students = None
    try:
        if args.collect:
            run = find_run(course, args.collect)
            if run is None:
                print(f"error: no cluster run of this course has job {args.collect} "
                      f"({_runs(course) / 'jobs'} lists them)", file=sys.stderr)
                return 1
        else:
            if not args.assignment:
                print("error: --on slurm grades one assignment: name it (./kit autograde ASSIGNMENT --on slurm)",
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
        if run is None and students:  # stopped inside submit(), after sbatch took the job: it is recorded
            run = open_run(course, assignment, students)
        if run is None or not run.jobs():
            print("\ninterrupted before any job was submitted: nothing is running on the cluster", file=sys.stderr)
            return 130
        job = run.jobs()[0]
        print(f"\ninterrupted: nothing was cancelled; job {job} goes on on the cluster, and the students already "
              f"graded are merged. Run the same command again (or ./kit autograde --collect {job}) to follow it "
              f"and merge the rest", file=sys.stderr)
        return 130
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
