"""The grading process's peak memory while it reads an output flood.

    .venv/bin/python benchmarks/flood_memory.py [print|image]

Runs one cell in a course kernel through CourseExecute (sandboxed, as autograde does) in a fresh
process per flood, and prints that process's peak RSS (VmHWM), the seconds and what the cell kept.
print: 1 GiB printed in 1 MiB lines; image: 16 images of 8 MiB, then one of 500 MiB. Figures, not a
test (tests/test_resources.py bounds the same floods through the CLI).
"""
from __future__ import annotations

import json
import subprocess
import sys

FLOODS = {
    "print": 'line = "x" * (1 << 20)\nfor i in range(1024):\n    print(line)\n',
    "image": ('from IPython.display import display\nsmall = "A" * (8 << 20)\nfor i in range(16):\n'
              '    display({"image/png": small}, raw=True)\ndisplay({"image/png": "A" * (500 << 20)}, raw=True)\n'),
}

ONE = '''
import json, sys, tempfile, time
import nbformat
from attnkit.preprocessors.execute import CourseExecute
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(sys.argv[1])])
t0 = time.perf_counter()
nb, _ = CourseExecute(timeout=600).preprocess(nb, {"metadata": {"path": tempfile.mkdtemp()}})
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
kept = len(json.dumps(nb.cells[0].outputs))
print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": hwm // 1024, "kept_bytes": kept}))
'''


def main() -> int:
    for name in sys.argv[1:] or list(FLOODS):
        out = subprocess.run([sys.executable, "-c", ONE, FLOODS[name]], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed: {out.stderr[-1000:]}")
            continue
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name} flood: grading process peak RSS {figures['peak_rss_mb']} MB, {figures['seconds']} s, "
              f"outputs kept {figures['kept_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
