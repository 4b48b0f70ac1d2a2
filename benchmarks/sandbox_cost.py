"""What the grading sandbox costs per notebook: the same submissions graded with and without it.

    .venv/bin/python benchmarks/sandbox_cost.py [--notebook q3_multihead_attention] [--rounds 3]

Each round grades the same submission (the instructor's solution) once in bubblewrap and once
unsandboxed, interleaved, one worker, in a scratch course; prints seconds per notebook and the
ratio (a figure, not a test), then the kernel start alone (bwrap + setpriv vs. plain).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from attnkit import notebooks as nbu
from attnkit import sandbox
from attnkit.course import Course
from attnkit.grading import autograde
from attnkit.release import generate

ROOT = Path(__file__).resolve().parents[1]


def grade_once(course: Course, student: str, mode: str) -> float:
    os.environ[sandbox.ENV_MODE] = mode
    t0 = time.perf_counter()
    res = autograde(course, "hw9", [student], workers=1, progress=False, allow_unsandboxed=True)
    took = time.perf_counter() - t0
    assert all(n.status == "graded" for n in res[0].notebooks), res
    return took


def start_once(mode: str) -> float:
    """A kernel-sized interpreter start: python -c 'import torch' alone vs. inside the sandbox."""
    inner = [sys.executable, "-c", "import torch, ipykernel"]
    argv = sandbox.bwrap_argv(inner, uid=sandbox.uid_slot(), workfiles={}, run_dir=None, env={}) \
        if mode == "bwrap" else inner
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebook", default="q3_multihead_attention")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if sandbox.probe("bwrap"):
        raise SystemExit(f"bwrap does not work here: {sandbox.probe('bwrap')}")
    course = Course(ROOT).scratch_copy(notebooks=[args.notebook])
    try:
        generate(course, "hw9")
        src = nbu.read(course.path("source", "hw9", f"{args.notebook}.ipynb"))
        for sid in ("bench",):
            dest = course.path("submitted", sid, "hw9")
            dest.mkdir(parents=True)
            nbu.write(nbu.fill(src), dest / f"{args.notebook}.ipynb")
        grade_once(course, "bench", "none")  # warm the page cache and the gradebook
        times = {"bwrap": [], "none": []}
        for r in range(args.rounds):
            for mode in (("bwrap", "none") if r % 2 == 0 else ("none", "bwrap")):
                times[mode].append(grade_once(course, "bench", mode))
        starts = {"bwrap": [], "none": []}
        for r in range(5):
            for mode in ("bwrap", "none"):
                starts[mode].append(start_once(mode))
    finally:
        shutil.rmtree(course.root, ignore_errors=True)
    sb, un = statistics.median(times["bwrap"]), statistics.median(times["none"])
    print(f"{args.notebook}, {args.rounds} interleaved rounds, 1 worker, median seconds per notebook "
          f"(a batch of one student, grading process start included):")
    print(f"  sandboxed (bwrap)  {sb:6.2f} s   {' '.join(f'{t:.2f}' for t in times['bwrap'])}")
    print(f"  unsandboxed        {un:6.2f} s   {' '.join(f'{t:.2f}' for t in times['none'])}")
    print(f"  cost               {sb - un:+6.2f} s   ratio {sb / un:.3f}")
    s1, s0 = statistics.median(starts["bwrap"]), statistics.median(starts["none"])
    print(f"interpreter start (python -c 'import torch, ipykernel'), median of 5: bwrap {s1:.3f} s, "
          f"plain {s0:.3f} s, cost {s1 - s0:+.3f} s")


if __name__ == "__main__":
    main()
