"""Where a submission's grading time goes, notebook by notebook (the warm-start work's profile).

Grades ``--students`` solved submissions with one worker through the CLI (the kit here, or the
kit at ``--base REF``), then splits each notebook's seconds (from the grading report) into:

* cells: the kernel's own execution time of every cell (nbclient's execution metadata);
* between cells: the round trips between one cell's end and the next one's start;
* outside cells: everything else: nbgrader's work before and after, the kernel's start until
  it answers, its shutdown;

and lists the slowest cells. Medians over the students after the first (the first also waits
for its worker and sandbox to start).

    .venv/bin/python benchmarks/grading_profile.py [--students 4] [--base REF] [--env ATTNKIT_WARM_START=0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nbformat  # noqa: E402

from grading_speed import export_base, make_course, run_kit  # noqa: E402


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def profile(course, students: list[str]) -> tuple[dict, dict]:
    """(notebook -> phase -> [seconds per student], "notebook cell" -> [seconds per student])."""
    report = {r["student"]: r for r in json.loads(course.path("reports", "hw9-autograde.json").read_text())}
    phases: dict = {}
    cells: dict = {}
    for student in students:
        for nb in report[student]["notebooks"]:
            path = course.path("autograded", student, "hw9", f"{nb['notebook']}.ipynb")
            book = nbformat.read(str(path), as_version=4)
            spans = []
            for i, cell in enumerate(book.cells):
                ex = cell.metadata.get("execution") or {}
                if "iopub.status.busy" in ex and "iopub.status.idle" in ex:
                    spans.append((_ts(ex["iopub.status.busy"]), _ts(ex["iopub.status.idle"])))
                    label = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {i}"
                    cells.setdefault(f"{nb['notebook']} {label}", []).append(spans[-1][1] - spans[-1][0])
            run = sum(b - a for a, b in spans)
            gaps = sum(spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1))
            total = nb.get("seconds") or 0.0
            row = phases.setdefault(nb["notebook"], {"total": [], "cells": [], "between cells": [],
                                                     "outside cells": []})
            row["total"].append(total)
            row["cells"].append(run)
            row["between cells"].append(gaps)
            row["outside cells"].append(total - run - gaps)
    return phases, cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=4)
    ap.add_argument("--base", default="", help="profile the kit at this git ref instead")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the grading processes")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    base = export_base(args.base) if args.base else None
    course = make_course(args.students * 2, base or ROOT)  # even students: solved (the ones profiled)
    try:
        solved = [f"student-{i:02d}" for i in range(0, 2 * args.students, 2)]
        for student in course.students("hw9"):
            if student not in solved:
                shutil.rmtree(course.path("submitted", student))
        run_kit(course, 1, env, base)
        phases, cells = profile(course, solved[1:] if len(solved) > 1 else solved)
        med = statistics.median
        what = f"kit @{args.base}" if base else "kit here"
        print(f"{what}{' with ' + ' '.join(args.env) if args.env else ''}: {len(solved)} solved submissions, "
              f"1 worker; medians over students 2..{len(solved)} (s)")
        print(f"{'notebook':28s} {'total':>7s} {'cells':>7s} {'between':>8s} {'outside':>8s}")
        sums = {k: 0.0 for k in ("total", "cells", "between cells", "outside cells")}
        for nb, row in phases.items():
            vals = {k: med(v) for k, v in row.items()}
            for k in sums:
                sums[k] += vals[k]
            print(f"{nb:28s} {vals['total']:7.2f} {vals['cells']:7.2f} {vals['between cells']:8.2f} "
                  f"{vals['outside cells']:8.2f}")
        print(f"{'submission':28s} {sums['total']:7.2f} {sums['cells']:7.2f} {sums['between cells']:8.2f} "
              f"{sums['outside cells']:8.2f}")
        print("\nslowest cells (median s):")
        for name, secs in sorted(cells.items(), key=lambda kv: -med(kv[1]))[:args.top]:
            print(f"  {med(secs):6.2f}  {name}")
    finally:
        shutil.rmtree(course.root, ignore_errors=True)
        if base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
