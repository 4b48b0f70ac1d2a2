"""Seconds per submission, side by side in one run on the same submissions (issue 12):

* plain ``nbgrader autograde`` (nbgrader's own CLI with course_config.py; one process);
* the kit at a base commit (default: main, exported with git archive) - the "before";
* the kit now with the warm start off (the default) and on (ATTNKIT_WARM_START=1);

with 1 worker (``--students1`` submissions) and 2 workers (``--students2``), variants
interleaved round by round (the machine is shared: only ratios from one run mean much),
plus the start-up floor: bwrap + python + ``import torch`` in the sandbox.

    .venv/bin/python benchmarks/grading_speed.py [--students1 4] [--students2 8] [--rounds 1] [--base main]
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

from attnkit import notebooks as nbu  # noqa: E402
from attnkit import sandbox  # noqa: E402
from attnkit.course import Course  # noqa: E402
from attnkit.release import generate  # noqa: E402


def make_course(n: int) -> Course:
    course = Course(ROOT).scratch_copy()
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
    """Median seconds of a cold sandboxed interpreter: bwrap + python, and + import torch."""
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
    return out


def export_base(ref: str) -> Path | None:
    dest = Path(tempfile.mkdtemp(prefix="attnkit-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "attnkit"], capture_output=True)
    if archive.returncode:
        shutil.rmtree(dest)
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for name in sandbox.KERNEL_MODULES + ("",):  # the sandbox binds them: readable by its uid
        os.chmod(dest / "attnkit" / name, 0o755 if not name else 0o644) if (dest / "attnkit" / name).exists() else None
    os.chmod(dest, 0o755)
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


def verdicts(course: Course) -> dict:
    from attnkit.reports import scores

    return {s: {nb: v["cells"] for nb, v in per.items()} for s, per in scores(course, "hw9")["students"].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students1", type=int, default=4, help="batch for the 1-worker figures")
    ap.add_argument("--students2", type=int, default=8, help="batch for the 2-worker figures")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--base", default="main", help="git ref of the 'before' kit ('' to skip)")
    ap.add_argument("--skip-nbgrader", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; sandbox: {sandbox.detect()}")
    floors = floor()
    for label, secs in floors.items():
        print(f"floor: {label:32s} {secs:5.2f} s")
    print(f"floor per 4-notebook submission started cold: 4 x {floors['bwrap + python + import torch']:.2f} = "
          f"{4 * floors['bwrap + python + import torch']:.1f} s; warm: 1 x {floors['bwrap + python + import torch']:.2f} s")
    base = export_base(args.base) if args.base else None
    variants = []
    if not args.skip_nbgrader:
        variants.append(("nbgrader autograde (CLI)", 1, lambda c, w: run_nbgrader(c)))
    if base:
        variants.append((f"kit @{args.base}", None, lambda c, w: run_kit(c, w, {}, base)))
    variants.append(("kit now, warm start off", None, lambda c, w: run_kit(c, w, {sandbox.ENV_WARM: "0"})))
    variants.append(("kit now, warm start on", None, lambda c, w: run_kit(c, w, {sandbox.ENV_WARM: "1"})))
    courses = {1: make_course(args.students1), 2: make_course(args.students2)}
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
                    v = verdicts(courses[workers])
                    seen.setdefault(workers, v)
                    diff = sorted(f"{st}/{nb}/{cell}: {seen[workers][st][nb][cell]} -> {got_}"
                                  for st in v for nb in v[st] for cell, got_ in v[st][nb].items()
                                  if seen[workers].get(st, {}).get(nb, {}).get(cell) != got_)
                    same = "same verdicts" if not diff else f"VERDICTS DIFFER: {'; '.join(diff)[:600]}"
                    print(f"  round {_round + 1}: {name:28s} {workers} worker(s): {secs:5.2f} s/submission ({same})",
                          flush=True)
        ref = "kit now, warm start on"
        print(f"\nseconds per submission (median of {args.rounds} round(s)); 1 worker: batch of {args.students1}, "
              f"2 workers: batch of {args.students2}")
        print(f"{'variant':30s} {'1 worker':>9s} {'2 workers':>10s} {'x warm (1w)':>15s} {'x warm (2w)':>15s}")
        for name, only, _fn in variants:
            row = [statistics.median(got[(name, w)]) if (name, w) in got else None for w in (1, 2)]
            ratio = [r / statistics.median(got[(ref, w)]) if r else None for r, w in zip(row, (1, 2))]
            fmt = lambda x, f: (f.format(x) if x is not None else "-")  # noqa: E731
            print(f"{name:30s} {fmt(row[0], '{:9.2f}'):>9s} {fmt(row[1], '{:10.2f}'):>10s} "
                  f"{fmt(ratio[0], '{:14.2f}x'):>15s} {fmt(ratio[1], '{:14.2f}x'):>15s}")
    finally:
        for c in courses.values():
            shutil.rmtree(c.root, ignore_errors=True)
        if base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
