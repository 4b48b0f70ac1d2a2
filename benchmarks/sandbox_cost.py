"""What the grading sandbox costs per notebook: the same submissions graded with and without it.

    .venv/bin/python benchmarks/sandbox_cost.py [--notebook q3_multihead_attention] [--rounds 3]

Each round grades the same submission (the instructor's solution) once in bubblewrap and once
unsandboxed, interleaved, one worker, in a scratch course; prints seconds per notebook and the
ratio (a figure, not a test), then the kernel start alone (bwrap + setpriv vs. plain), then what the
syscall filter (attnkit/seccomp.py) adds: the same sandboxed starts with and without it, interleaved, and
the time of 200k system calls inside. ``--filter-only`` measures that last part alone (under a minute;
``--torch``: also a start that imports torch, minutes on a loaded machine).
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

from attnkit.authoring import notebooks as nbu
from attnkit import sandbox
from attnkit.sandbox import seccomp
from attnkit.course import Course
from attnkit.batch.driver import autograde
from attnkit.authoring.release import generate

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


SYSCALLS = "import os, time; t = time.perf_counter()\nfor _ in range(200_000): os.getppid()\nprint(time.perf_counter() - t)"


def filter_cost(rounds: int = 5, torch: bool = False) -> None:
    """Sandboxed starts (bwrap + setpriv + python, bare and importing numpy; with ``torch``, torch and
    ipykernel too) and 200k getppid() calls inside, with the syscall filter and without, interleaved; medians."""
    if seccomp.unavailable():
        raise SystemExit(f"no syscall filter here: {seccomp.unavailable()}")
    t0 = time.perf_counter()
    size = len(seccomp.compile_filter()) // 8
    compile_s = time.perf_counter() - t0
    uid = sandbox.uid_slot()
    cases = {"python": "pass", "python + import numpy": "import numpy"}
    if torch:
        cases["python + import torch, ipykernel"] = "import torch, ipykernel"
    times = {(label, on): [] for label in cases for on in (True, False)}
    calls = {True: [], False: []}
    for r in range(rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            seccomp.disable("" if on else "benchmark: without")
            for label, code in cases.items():
                argv = sandbox.bwrap_argv([sys.executable, "-c", code], uid=uid, workfiles={}, run_dir=None, env={})
                assert ("--seccomp" in argv) == on
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
                times[label, on].append(time.perf_counter() - t0)
            argv = sandbox.bwrap_argv([sys.executable, "-c", SYSCALLS], uid=uid, workfiles={}, run_dir=None, env={})
            calls[on].append(float(subprocess.run(argv, check=True, capture_output=True, text=True).stdout))
    seccomp.disable("")
    print(f"syscall filter ({seccomp.describe()}; {size} BPF instructions, compiled in {compile_s * 1e3:.1f} ms "
          f"once per grading process), {rounds} interleaved rounds, median seconds:")
    for label in cases:
        on, off = statistics.median(times[label, True]), statistics.median(times[label, False])
        print(f"  sandboxed start, {label:33s} with {on:.3f}  without {off:.3f}  cost {on - off:+.3f}")
    on, off = statistics.median(calls[True]), statistics.median(calls[False])
    print(f"  200k getppid() in the sandbox                     with {on:.3f}  without {off:.3f}  "
          f"cost {(on - off) / 200_000 * 1e9:+.0f} ns a call")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebook", default="q3_multihead_attention")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--filter-only", action="store_true", help="only the syscall filter's cost")
    ap.add_argument("--torch", action="store_true", help="the filter's cost on a start that imports torch too")
    args = ap.parse_args()
    if sandbox.probe("bwrap"):
        raise SystemExit(f"bwrap does not work here: {sandbox.probe('bwrap')}")
    if args.filter_only:
        filter_cost(torch=args.torch)
        return
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
    filter_cost(torch=args.torch)


if __name__ == "__main__":
    main()
