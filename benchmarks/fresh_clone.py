"""The two commands' figures (README, docs/performance.md), from a fresh clone (a figure, not a test).

Clones this repository's HEAD (committed work only) into a temporary folder and times, there:

* ``./kit demo``: set-up (the venv and pinned requirements, from pip's cache where it has them)
  and the demo, and the demo itself (the time it prints);
* with ``--fast``: ``./kit test -m "not slow"`` (the fast tier);
* with ``--suite``: ``./kit test`` (the whole suite: minutes; on a shared machine run it alone).

    .venv/bin/python benchmarks/fresh_clone.py [--fast] [--suite] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def tail(proc) -> str:
    return (proc.stdout + proc.stderr).strip().splitlines()[-1] if (proc.stdout + proc.stderr).strip() else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="also time the fast tier")
    ap.add_argument("--suite", action="store_true", help="also time the whole suite")
    ap.add_argument("--keep", action="store_true", help="keep the clone")
    args = ap.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="attnkit-clone-"))
    clone = where / "kit"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    print(f"fresh clone of {head} in {clone}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    code = 0
    try:
        secs, proc = timed(["./kit", "demo"], clone)
        own = re.search(r"demo finished in (\d+)s", proc.stdout)
        print(f"./kit demo from the fresh clone (set-up included): {secs:.0f} s; the demo itself: "
              f"{own.group(1) + ' s' if own else '?'} (exit {proc.returncode})")
        code |= proc.returncode
        if args.fast:
            secs, proc = timed(["./kit", "test", "-m", "not slow", "-q"], clone)
            print(f'./kit test -m "not slow": {secs:.0f} s ({tail(proc)})')
            code |= proc.returncode
        if args.suite:
            secs, proc = timed(["./kit", "test", "-q"], clone)
            print(f"./kit test: {secs / 60:.1f} minutes ({tail(proc)})")
            code |= proc.returncode
    finally:
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
