"""Peak memory of `./kit collect` on zip bombs (a figure, not a test; docs/running-a-course.md quotes it).

A Canvas download of about 0.6 MB: student 1001 uploads two notebooks of 300 MB of zeros each, student
1002 a zip of two zips of four 45 MB notebooks (360 MB), student 1004 a zip four levels deep, student
1003 a plain notebook. Prints the download's size, what it inflates to, the peak resident memory of the
collect process (ru_maxrss of the child), the largest file written, and the problems collect reported.

    .venv/bin/python benchmarks/collect_bomb.py [--kit PATH]   # PATH: another checkout's attnkit parent, to compare
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from banks.attacks.archives import canvas_bomb  # noqa: E402 (after the sys.path line)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kit", default=None, help="put this folder first on PYTHONPATH (an older attnkit to compare)")
    args = p.parse_args()
    from attnkit.course import Course

    tmp = Path(tempfile.mkdtemp(prefix="attnkit-bomb-"))
    course = Course(ROOT).scratch_copy(parent=str(tmp))
    try:
        export = tmp / "canvas.zip"
        export.write_bytes(canvas_bomb())
        env = dict(os.environ)
        if args.kit:
            env["PYTHONPATH"] = args.kit + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-m", "attnkit", "--root", str(course.root), "collect", "hw9",
                               str(export)], capture_output=True, text=True, env=env, cwd=tmp)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        sub = course.path("submitted")
        files = [f for f in sub.rglob("*") if f.is_file()] if sub.exists() else []
        largest = max((f.stat().st_size for f in files), default=0)
        print(f"download {export.stat().st_size / 1e6:.2f} MB, inflating to 960 MB of notebooks (2 x 300 + 2 x 4 x 45)")
        print(f"collect exit {proc.returncode}; peak RSS {peak:.0f} MB; largest file written {largest / 1e6:.0f} MB")
        for line in proc.stdout.splitlines():
            if line.startswith("problem:"):
                print(" ", line)
        if proc.returncode:
            print(proc.stderr[-2000:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
