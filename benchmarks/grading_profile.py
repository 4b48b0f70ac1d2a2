"""Where a submission's grading time and memory go, through the CLI a user runs.

Grades ``--students`` solved submissions (default 1: one submission, its worker's and sandbox's
start included) with one worker by ``python -m attnkit autograde`` (the kit here, or the kit at
``--base REF``), sampling every process of the command's tree, and prints:

* the call's wall time split into: the CLI's own start (an interpreter and the kit's imports,
  timed alone), the batch's work outside grading (sandbox check, gradebook, starting the grading
  process, the report and table), and grading, notebook by notebook;
* each notebook's seconds (from the grading report) split into: cells (the kernel's own execution
  of every cell: the student's code and the visible checks; nbclient's execution metadata); the
  hidden tests (after each test cell, in the grader process: requests x mean round trip,
  callbacks, the cost-growth measurements, the grader's own work: ``ATTNKIT_PROFILE_HIDDEN``);
  the rest between cells; outside cells (nbgrader's work before and after, reading and writing the
  notebook and the gradebook, the kernel's start until it answers, its shutdown);
* feedback for the same students (``attnkit feedback``, a second command);
* the start-up floor: a cold kernel (bwrap + python + import torch) and a warm one (fork until ready);
* every process's peak resident memory (VmHWM), by role, and the tree's largest sampled total;

and lists the slowest cells. With more than one student, notebook figures are medians over the
students after the first (the first also waits for its worker and sandbox to start).

    .venv/bin/python benchmarks/grading_profile.py [--students 1] [--base REF] [--env ATTNKIT_WARM_START=0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nbformat  # noqa: E402

from grading_speed import export_base, floor, make_course  # noqa: E402


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


ROLES = (("attnkit.batch.workers", "grading process"), ("--zygote", "warm-start interpreter (zygote)"),
         ("attnkit.kernel", "kernel"), ("attnkit.lms.gradescope", "Gradescope runner"),
         ("-m attnkit", "CLI (batch) process"))


def role(cmdline: str, parent_role: str, comm: str = "") -> str:
    if comm == "attnkit-grading":  # a grading process forked from the batch: the batch's command line
        return "grading process"
    exe = cmdline.split(" ")[0].rsplit("/", 1)[-1]
    if exe in ("bwrap", "setpriv"):  # their argv names the interpreter they start
        return exe
    if parent_role.startswith("warm-start") and "--zygote" in cmdline:
        return "kernel (fork of the zygote)"
    other = " ".join([exe, *cmdline.split(" ")[1:3]])[:50]  # unknown: its first words
    return next((name for key, name in ROLES if key in cmdline), other or "?")


class TreeSampler(threading.Thread):
    """Every 50 ms: each process under ``pid`` (cmdline, VmHWM, VmRSS); keeps each process's last
    peak and the largest total resident memory of the tree."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.procs: dict = {}   # pid -> [role, peak kB]
        self.tree_peak_kb = 0

    def run(self):
        while not self.done.is_set():
            parents, info = {}, {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
                    with open(f"/proc/{entry}/status") as f:
                        st = {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("VmHWM", "VmRSS"))}
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    with open(f"/proc/{entry}/comm") as f:
                        comm = f.read().strip()
                    info[int(entry)] = (cmd, int(st.get("VmHWM", 0)), int(st.get("VmRSS", 0)), comm)
                except (OSError, IndexError, ValueError):
                    continue
            total, todo = 0, [(self.pid, "")]
            while todo:
                p, parent_role = todo.pop()
                if p not in info:
                    continue
                cmd, hwm, rss, comm = info[p]
                known = self.procs.setdefault(p, [role(cmd, parent_role, comm), 0])
                if known[0] != "grading process" and comm == "attnkit-grading":  # seen before it was named
                    known[0] = "grading process"
                known[1] = max(known[1], hwm)
                total += rss
                todo += [(c, known[0]) for c in parents.get(p, [])]
            self.tree_peak_kb = max(self.tree_peak_kb, total)
            self.done.wait(0.05)


def hidden_profile(path: Path, course) -> tuple[dict, dict]:
    """(notebook -> {requests, callbacks, seconds, waited, growth, regions} summed over the test cells,
    "notebook grade_id" -> that cell's figures); a cell's last profile line (its figures are cumulative)."""
    owner = {}
    for stem in course.notebooks("hw9"):
        book = nbformat.read(str(course.path("source", "hw9", f"{stem}.ipynb")), as_version=4)
        owner.update({c.metadata.get("nbgrader", {}).get("grade_id"): stem for c in book.cells})
    cells = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        gid, secs, *kv = line.split()
        cells[gid] = {"seconds": float(secs), **{k: float(v) for k, v in (x.split("=") for x in kv)}}
    out: dict = {}
    for gid, row in cells.items():
        acc = out.setdefault(owner.get(gid, "?"), {"regions": 0, "seconds": 0.0, "requests": 0, "callbacks": 0,
                                                 "waited": 0.0, "growth": 0.0})
        acc["regions"] += 1
        for k in ("seconds", "requests", "callbacks", "waited", "growth"):
            acc[k] += row.get(k, 0)
    return out, {f"{owner.get(gid, '?')} {gid}": row for gid, row in cells.items()}


def timed(argv, env, cwd) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:6])} failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=1)
    ap.add_argument("--base", default="", help="profile the kit at this git ref instead")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the grading processes")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--no-floor", action="store_true", help="skip the start-up floor (about 10 s)")
    args = ap.parse_args()
    base = export_base(args.base) if args.base else None
    course = make_course(args.students * 2, base or ROOT)  # even students: solved (the ones profiled)
    prof = Path(tempfile.mkdtemp(prefix="attnkit-profile-")) / "hidden.txt"
    env = {**os.environ, **dict(e.split("=", 1) for e in args.env), "ATTNKIT_PROFILE_HIDDEN": str(prof)}
    if base:
        env["PYTHONPATH"] = str(base)
    cwd = str(base or ROOT)
    kit = [sys.executable, "-m", "attnkit", "--root", str(course.root)]
    try:
        solved = [f"student-{i:02d}" for i in range(0, 2 * args.students, 2)]
        for student in course.students("hw9"):
            if student not in solved:
                shutil.rmtree(course.path("submitted", student))
        cli_start = statistics.median(timed(kit + ["autograde", "--help"], env, cwd) for _ in range(3))
        t0 = time.perf_counter()
        proc = subprocess.Popen(kit + ["autograde", "hw9", "--workers", "1", "--quiet"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        out, _ = proc.communicate()
        wall = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
        if proc.returncode:
            raise SystemExit(f"kit autograde failed ({proc.returncode}): {out[-3000:]}")
        fb = timed(kit + ["feedback", "hw9"], env, cwd)
        report = {r["student"]: r for r in json.loads(course.path("reports", "hw9-autograde.json").read_text())}
        grading = sum(r.get("seconds") or 0.0 for r in report.values())
        profiled = solved[1:] if len(solved) > 1 else solved
        phases, cells = profile(course, profiled)
        hidden, by_cell = hidden_profile(prof, course)
        med, n = statistics.median, len(solved)
        what = f"kit @{args.base}" if base else "kit here"
        print(f"{what}{' with ' + ' '.join(args.env) if args.env else ''}: {n} solved submission(s) through the CLI, "
              f"1 worker; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the end")
        print(f"\n{'the CLI call (seconds)':62s} {wall:7.2f}")
        print(f"  {'CLI start: interpreter + kit imports (timed alone)':60s} {cli_start:7.2f}")
        print(f"  {'batch outside grading: sandbox check, gradebook, worker start, report':60s} "
              f"{wall - grading - cli_start:7.2f}")
        print(f"  {'grading (the grading process, all notebooks)':60s} {grading:7.2f}")
        print(f"{'feedback for the same submissions (a second command)':62s} {fb:7.2f}")
        note = "" if n == 1 else f" (medians over students 2..{n}; hidden tests: totals / {n})"
        print(f"\nby notebook (s){note}:")
        print(f"{'notebook':26s} {'total':>6s} {'cells':>6s} {'hidden':>7s} {'requests':>9s} {'x mean ms':>9s} "
              f"{'callbk':>6s} {'growth':>6s} {'grader':>6s} {'rest':>6s}")
        sums: dict = {}
        for nb, row in phases.items():
            vals = {k: med(v) for k, v in row.items()}
            h = {k: v / n if isinstance(v, (int, float)) else v for k, v in hidden.get(nb, {}).items()}
            hs, req = h.get("seconds", 0.0), h.get("requests", 0)
            own = hs - h.get("waited", 0.0) - h.get("growth", 0.0)  # growth checks wait on the kernel too
            rest = vals["total"] - vals["cells"] - hs
            cols = {"total": vals["total"], "cells": vals["cells"], "hidden": hs, "requests": req,
                    "callbacks": h.get("callbacks", 0), "growth": h.get("growth", 0.0), "grader": max(own, 0.0),
                    "rest": rest}
            for k, v in cols.items():
                sums[k] = sums.get(k, 0) + v
            mean_ms = 1000 * h.get("waited", 0.0) / req if req else 0.0
            print(f"{nb:26s} {cols['total']:6.2f} {cols['cells']:6.2f} {hs:7.2f} {req:9.0f} {mean_ms:9.2f} "
                  f"{cols['callbacks']:6.0f} {cols['growth']:6.2f} {cols['grader']:6.2f} {rest:6.2f}")
        print(f"{'submission':26s} {sums['total']:6.2f} {sums['cells']:6.2f} {sums['hidden']:7.2f} "
              f"{sums['requests']:9.0f} {'':9s} {sums['callbacks']:6.0f} {sums['growth']:6.2f} {sums['grader']:6.2f} "
              f"{sums['rest']:6.2f}")
        print("  cells: the kernel's execution of every cell (the student's code, the visible checks);\n"
              "  hidden = requests x mean round trip (the student's code they run and the callbacks answered\n"
              "  inside them) + cost-growth checks + the grader's own work; rest: the kernel's start (the first\n"
              "  notebook waits for the zygote's imports) and shutdown, nbgrader reading and writing the notebook\n"
              "  and the gradebook, round trips between cells")
        print("\nslowest hidden tests (s, requests, callbacks):")
        for name, row in sorted(by_cell.items(), key=lambda kv: -kv[1]["seconds"])[:args.top]:
            print(f"  {row['seconds']:6.2f}  {row.get('requests', 0):5.0f}  {row.get('callbacks', 0):5.0f}  {name}")
        if not args.no_floor:
            floors = floor()
            print("\nstart-up floor (median of 3): " + "; ".join(f"{k} {v:.2f} s" for k, v in floors.items()))
        print("\npeak resident memory by process (VmHWM, MB):")
        by_role: dict = {}
        for r, kb in sampler.procs.values():
            by_role.setdefault(r, []).append(kb)
        for r, kbs in sorted(by_role.items(), key=lambda kv: -max(kv[1])):
            print(f"  {r:34s} {len(kbs):3d} process(es), largest {max(kbs) / 1024:6.0f} MB")
        print(f"  {'largest sampled total of the tree (RSS, shared pages counted per process)':74s} "
              f"{sampler.tree_peak_kb / 1024:6.0f} MB")
        print("\nslowest cells (median s, kernel execution only):")
        for name, secs in sorted(cells.items(), key=lambda kv: -med(kv[1]))[:args.top]:
            print(f"  {med(secs):6.2f}  {name}")
    finally:
        shutil.rmtree(course.root, ignore_errors=True)
        shutil.rmtree(prof.parent, ignore_errors=True)
        if base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
