"""Seconds per submission, side by side in one run on the same submissions:

* plain ``nbgrader autograde`` (nbgrader's own CLI with course_config.py; one process);
* the kit with the warm start off (``ATTNKIT_WARM_START=0``: every notebook's kernel starts cold
  in its own sandbox, as before the warm start);
* the kit now (warm start: each student's kernels fork from one pre-imported interpreter in that
  student's sandbox, the next student's started ahead);
* optionally the kit at a git ref (``--base REF``, exported with git archive);

with 1 worker (``--students1`` submissions) and 2 workers (``--students2``), variants interleaved
round by round (the machine is shared: only ratios from one run mean much); one submission alone
(an ``autograde()`` call for one student with 1 worker, the figure the warm-start work started from); and the
start-up floor: bwrap + python, + ``import torch`` (a cold kernel's start), and a warm kernel
(fork from the interpreter until the kernel answers); one submission by the CLI, and each target beside its
figure (one submission <= 7 s and <= 0.45x nbgrader's CLI per submission in the same run; a batch of 16
<= 3.0 s per submission with 2 workers). Every variant must give the same verdicts.

    .venv/bin/python benchmarks/grading_speed.py [--students1 4] [--students2 16] [--rounds 1] [--base REF]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnkit.authoring import notebooks as nbu  # noqa: E402
from attnkit import sandbox  # noqa: E402
from attnkit.course import Course  # noqa: E402
from attnkit.authoring.release import generate  # noqa: E402


def make_course(n: int, root: Path = ROOT) -> Course:
    """A scratch course from ``root`` (this checkout, or a base ref's tree) with ``n`` submissions."""
    course = Course(root).scratch_copy()
    if root == ROOT:  # a base kit's own autograde generates its assignment itself
        generate(course, "hw9")
    for i in range(n):
        dest = course.path("submitted", f"student-{i:02d}", "hw9")
        dest.mkdir(parents=True)
        for stem in course.notebooks("hw9"):
            src = nbu.read(course.path("source", "hw9", f"{stem}.ipynb"))
            # even: right answers; odd: the blanks as released (samples.partial is broken on main: CODE_STUB)
            nbu.write(nbu.fill(src) if i % 2 == 0 else nbu.fill(src, default="stub"), dest / f"{stem}.ipynb")
    return course


def floor(repeats: int = 3) -> dict:
    """Median seconds of a cold sandboxed interpreter (bwrap + python, and + import torch) and of a
    warm kernel (fork from the warm-start interpreter until it answers kernel_info)."""
    uid = sandbox.uid_slot()
    out = {}
    for label, code in (("bwrap + python", "pass"), ("bwrap + python + import torch", "import torch")):
        argv = sandbox.bwrap_argv([sys.executable, "-c", code], uid=uid, workfiles={}, run_dir=None, env={})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
    if sandbox.warm_enabled() and sandbox.detect() == "bwrap":
        import asyncio

        workdir = tempfile.mkdtemp(prefix="attnkit-floor-")
        os.chmod(workdir, 0o755)

        async def warm_kernels():
            times = []
            for i in range(repeats + 1):
                km = sandbox.CourseKernelManager()
                t0 = time.perf_counter()
                await km.start_kernel(cwd=workdir)
                kc = km.client()
                kc.start_channels()
                await kc.wait_for_ready(timeout=60)
                if i:  # the first one also waits for the interpreter itself
                    times.append(time.perf_counter() - t0)
                kc.stop_channels()
                await km.shutdown_kernel(now=True)
            return times

        try:
            with sandbox.warm_start():
                out["warm kernel (fork until ready)"] = statistics.median(asyncio.run(warm_kernels()))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def export_base(ref: str) -> Path | None:
    """The tree at git ``ref`` (the kit, its course_config.py, its notebooks and grader helpers), in a temp folder."""
    dest = Path(tempfile.mkdtemp(prefix="attnkit-base-"))
    paths = ["attnkit", "source", "course_config.py", "nbgrader_config.py"]
    paths += [p for p in ("graders",)  # the assignments' grader helpers, where the ref has them (course_config names them)
              if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{ref}:{p}"]).returncode == 0]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, *paths], capture_output=True)
    if archive.returncode:
        shutil.rmtree(dest)
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for name in sandbox.KERNEL_MODULES + ("",):  # the sandbox binds them: readable by its uid
        os.chmod(dest / "attnkit" / name, 0o755 if not name else 0o644) if (dest / "attnkit" / name).exists() else None
    os.chmod(dest, 0o755)
    os.chmod(dest / "source", 0o700)  # the solutions: never readable by a kernel's uid (the setpriv fallback's)
    return dest


def run_kit(course: Course, workers: int, env: dict, pythonpath: Path | None = None) -> float:
    env = {**os.environ, **env}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde", "hw9",
                           "--workers", str(workers), "--quiet"], capture_output=True, text=True, env=env,
                          cwd=str(pythonpath or ROOT))
    took = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"kit autograde failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return took


def run_nbgrader(course: Course) -> float:
    nbgrader = str(Path(sys.executable).with_name("nbgrader"))
    t0 = time.perf_counter()
    proc = subprocess.run([nbgrader, "autograde", "hw9", "--force", "--JupyterApp.config_file_name=course_config"],
                          cwd=str(course.root), capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"nbgrader autograde failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return took


def one_submission(course: Course, env: dict) -> float:
    """Seconds of an autograde() call for one student with 1 worker (the batch's own start included)."""
    code = ("import sys, time; from attnkit.course import Course; from attnkit.batch.driver import autograde\n"
            "c = Course(sys.argv[1]); t0 = time.perf_counter()\n"
            "autograde(c, 'hw9', [c.students('hw9')[0]], workers=1, progress=False)\n"
            "print(time.perf_counter() - t0)")
    proc = subprocess.run([sys.executable, "-c", code, str(course.root)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=str(ROOT))
    if proc.returncode:
        raise SystemExit(f"autograde() failed: {proc.stderr[-1500:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def one_by_cli(course: Course) -> float:
    """Seconds of ``python -m attnkit autograde`` for the course's first student alone, 1 worker."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde", "hw9", "--student",
                           course.students("hw9")[0], "--workers", "1", "--quiet"], capture_output=True, text=True,
                          cwd=str(ROOT))
    if proc.returncode:
        raise SystemExit(f"kit autograde --student failed ({proc.returncode}): {proc.stdout[-1500:]}")
    return time.perf_counter() - t0


def verdicts(course: Course) -> dict:
    from attnkit.reports import scores

    return {s: {nb: v["cells"] for nb, v in per.items()} for s, per in scores(course, "hw9")["students"].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students1", type=int, default=4, help="batch for the 1-worker figures")
    ap.add_argument("--students2", type=int, default=16, help="batch for the 2-worker figures")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--base", default="", help="git ref of a kit to compare (default: none)")
    ap.add_argument("--skip-nbgrader", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; sandbox: {sandbox.detect()}")
    floors = floor()
    for label, secs in floors.items():
        print(f"floor: {label:32s} {secs:5.2f} s")
    cold = floors["bwrap + python + import torch"]
    warm = floors.get("warm kernel (fork until ready)")
    print(f"floor per 4-notebook submission: cold 4 x {cold:.2f} = {4 * cold:.1f} s"
          + (f"; warm 4 x {warm:.2f} = {4 * warm:.2f} s (the interpreter itself started ahead)" if warm else ""))
    base = export_base(args.base) if args.base else None
    variants = []
    if not args.skip_nbgrader:
        variants.append(("nbgrader autograde (CLI)", 1, lambda c, w: run_nbgrader(c)))
    if base:  # on its own copies of the same submissions, made from its own notebooks and configuration
        variants.append((f"kit @{args.base}", None, lambda c, w: run_kit(base_courses[w], w, {}, base)))
    variants.append(("kit, warm start off", None, lambda c, w: run_kit(c, w, {sandbox.ENV_WARM: "0"})))
    variants.append(("kit now", None, lambda c, w: run_kit(c, w, {sandbox.ENV_WARM: "1"})))
    courses = {1: make_course(args.students1), 2: make_course(args.students2)}
    base_courses = {1: make_course(args.students1, base), 2: make_course(args.students2, base)} if base else {}
    n = {1: args.students1, 2: args.students2}
    got: dict = {}
    seen: dict = {}
    try:
        for _round in range(args.rounds):
            for workers in (1, 2):
                for name, only, fn in variants:
                    if only and workers != only:
                        continue
                    secs = fn(courses[workers], workers) / n[workers]
                    got.setdefault((name, workers), []).append(secs)
                    v = verdicts(base_courses[workers] if name.startswith("kit @") else courses[workers])
                    seen.setdefault(workers, v)
                    diff = sorted(f"{st}/{nb}/{cell}: {seen[workers][st][nb][cell]} -> {got_}"
                                  for st in v for nb in v[st] for cell, got_ in v[st][nb].items()
                                  if seen[workers].get(st, {}).get(nb, {}).get(cell) != got_)
                    same = "same verdicts" if not diff else f"VERDICTS DIFFER: {'; '.join(diff)[:600]}"
                    print(f"  round {_round + 1}: {name:28s} {workers} worker(s): {secs:5.2f} s/submission ({same})",
                          flush=True)
        ref = "kit now"
        print(f"\nseconds per submission (median of {args.rounds} round(s)); 1 worker: batch of {args.students1}, "
              f"2 workers: batch of {args.students2}")
        print(f"{'variant':30s} {'1 worker':>9s} {'2 workers':>10s} {'x now (1w)':>15s} {'x now (2w)':>15s}")
        for name, only, _fn in variants:
            row = [statistics.median(got[(name, w)]) if (name, w) in got else None for w in (1, 2)]
            ratio = [r / statistics.median(got[(ref, w)]) if r else None for r, w in zip(row, (1, 2))]
            fmt = lambda x, f: (f.format(x) if x is not None else "-")  # noqa: E731
            print(f"{name:30s} {fmt(row[0], '{:9.2f}'):>9s} {fmt(row[1], '{:10.2f}'):>10s} "
                  f"{fmt(ratio[0], '{:14.2f}x'):>15s} {fmt(ratio[1], '{:14.2f}x'):>15s}")
        alone = {name: [one_submission(courses[1], env) for _ in range(3 * args.rounds)]
                 for name, env in (("kit, warm start off", {sandbox.ENV_WARM: "0"}), ("kit now", {sandbox.ENV_WARM: "1"}))}
        print("\none submission alone, 1 worker (an autograde() call, the grading process's start included; "
              "median of 3 per round):")
        for name, secs in alone.items():
            print(f"{name:30s} {statistics.median(secs):9.2f} s")
        two = statistics.median(got[(ref, 2)])
        cli = statistics.median(one_by_cli(courses[1]) for _ in range(3 * args.rounds))
        print(f"one submission by the CLI (autograde hw9 --student student-00 --workers 1): {cli:.2f} s")
        targets = [("one submission by the CLI, s", cli, 7.0)]
        if (n1 := got.get(("nbgrader autograde (CLI)", 1))):
            targets.append(("one submission by the CLI / nbgrader's CLI per submission", cli / statistics.median(n1),
                             0.45))
        targets.append((f"per submission, 2 workers, batch of {args.students2}, s", two, 3.0))
        print(f"\n{'target (2 cores)':62s} {'figure':>8s} {'target':>7s} {'ratio':>6s}")
        for name, figure, target in targets:
            print(f"{name:62s} {figure:8.2f} {target:7.2f} {figure / target:6.2f} "
                  f"{'met' if figure <= target else 'NOT met'}")
    finally:
        for c in [*courses.values(), *base_courses.values()]:
            shutil.rmtree(c.root, ignore_errors=True)
        if base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
