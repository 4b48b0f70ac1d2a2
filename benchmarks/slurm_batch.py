"""The Slurm batch against the local batch, on the same machine and the same submissions.

    sudo .venv/bin/python benchmarks/slurm_batch.py [--notebook q12_scaled_dot_product] [--students 4]
                                                    [--workers 2] [--tasks 2]

Brings up a single-node Slurm from Debian's packages (attnkit/fixtures/slurm_cluster.py: root and apt-get),
grades one scratch course with ``./kit autograde`` (the local batch, ``--workers``) and a copy of it with
``./kit autograde --on slurm`` (``--tasks`` array tasks of one CPU each), prints the Slurm command's output
(progress, merge, the score table), whether the per-part scores are equal, and seconds per submission side by
side; stops every daemon it started. A figure, not a test; the real gradebook is never touched.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.fixtures import slurm_cluster
from attnkit.authoring.release import generate
from attnkit.authoring.samples import partial

ROOT = Path(__file__).resolve().parents[1]


def _kit(root, *args, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attnkit", "--root", str(root), *args], capture_output=True,
                          text=True, env=env)
    return proc, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebook", action="append", help="notebook stem(s); default: q12_scaled_dot_product")
    ap.add_argument("--students", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="the local batch's workers")
    ap.add_argument("--tasks", type=int, default=2, help="the Slurm array's tasks (one CPU each)")
    args = ap.parse_args()
    why = slurm_cluster.why_not()
    if why:
        print(f"skipped: {why}")
        return 0
    slurm_cluster.install()
    course = Course(ROOT).scratch_copy(notebooks=args.notebook or ["q12_scaled_dot_product"])
    other = course.root.parent / (course.root.name + "-slurm")
    try:
        generate(course, "hw9")
        for i in range(args.students):
            dest = course.path("submitted", f"student-{i:02d}", "hw9")
            dest.mkdir(parents=True)
            for stem in course.notebooks("hw9"):
                src = nbu.read(course.path("source", "hw9", f"{stem}.ipynb"))
                nbu.write(nbu.fill(src) if i % 2 == 0 else partial(src), dest / f"{stem}.ipynb")
        shutil.copytree(course.root, other, symlinks=True)
        with slurm_cluster.Cluster() as cluster:
            env = {**os.environ, **cluster.env, "ATTNKIT_SLURM_POLL": "1"}
            local, t_local = _kit(course.root, "autograde", "hw9", "--workers", str(args.workers), env=env)
            remote, t_slurm = _kit(other, "autograde", "hw9", "--on", "slurm", "--tasks", str(args.tasks), env=env)
        print(remote.stderr[-3000:] + remote.stdout[-3000:])
        exports = []
        for root in (course.root, other):
            out = Path(root) / "grades.csv"
            subprocess.run([sys.executable, "-m", "attnkit", "--root", str(root), "export", "hw9", "-o", str(out)],
                           check=True, capture_output=True)
            exports.append(out.read_text())
        n = args.students
        print(f"exit codes: local {local.returncode}, slurm {remote.returncode}; per-part scores equal: "
              f"{exports[0] == exports[1]}")
        print(f"local batch ({args.workers} workers): {t_local:.1f} s, {t_local / n:.2f} s per submission")
        print(f"slurm batch ({args.tasks} tasks x 1 CPU, same machine): {t_slurm:.1f} s, {t_slurm / n:.2f} s per "
              f"submission")
        print(f"load: {os.getloadavg()}")
        return 0 if exports[0] == exports[1] and local.returncode == remote.returncode == 0 else 1
    finally:
        shutil.rmtree(course.root, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
