"""How long autograding takes: one submission, then a batch with 1 worker and with 2.

    .venv/bin/python benchmarks/autograde_throughput.py [--notebook q3_multihead_attention] [--students 8]

Prints seconds side by side from one run (a figure, not a test). Uses a scratch course;
the real gradebook is never touched.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.batch.driver import autograde
from attnkit.authoring.release import generate
from attnkit.authoring.samples import partial

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebook", action="append", help="notebook stem(s); default: all")
    ap.add_argument("--students", type=int, default=8)
    args = ap.parse_args()
    course = Course(ROOT).scratch_copy(notebooks=args.notebook)
    try:
        generate(course, "hw9")
        stems = course.notebooks("hw9")
        for i in range(args.students):
            dest = course.path("submitted", f"student-{i:02d}", "hw9")
            dest.mkdir(parents=True)
            for stem in stems:
                src = nbu.read(course.path("source", "hw9", f"{stem}.ipynb"))
                nbu.write(nbu.fill(src) if i % 2 == 0 else partial(src), dest / f"{stem}.ipynb")
        students = course.students("hw9")
        print(f"notebooks: {', '.join(stems)}; machine: {os.cpu_count()} cores")
        t0 = time.perf_counter()
        autograde(course, "hw9", students[:1], workers=1, progress=False, allow_unsandboxed=True)
        one = time.perf_counter() - t0
        print(f"1 submission, 1 worker:            {one:6.1f} s")
        timings = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            autograde(course, "hw9", students, workers=workers, progress=False, allow_unsandboxed=True)
            timings[workers] = time.perf_counter() - t0
            print(f"{len(students)} submissions, {workers} worker(s):     {timings[workers]:6.1f} s "
                  f"({timings[workers] / len(students):.1f} s per submission)")
        print(f"speed-up with 2 workers: {timings[1] / timings[2]:.2f}x")
    finally:
        shutil.rmtree(course.root, ignore_errors=True)


if __name__ == "__main__":
    main()
