"""The small costs docs/ quotes (a figure, not a test): imports, and the grader's requests.

1. Imports, each in a fresh interpreter (median of ``--repeats``): ``import torch`` (seconds and
   the resident memory it adds: what the grading process pays once for running hidden tests),
   ``import matplotlib.pyplot``, the first use of torch's ``FlopCounterMode`` (it imports
   ``torch._dynamo`` and sympy), and jsonschema's optional ``rfc3987_syntax``.
2. The grader's requests to a sandboxed course kernel (``CourseKernelManager``, as autograde
   starts it), through attnkit/grader/channel.py as hidden tests send them: an execution (what each
   request once was), a request on the grading line (a frame on the Unix socket one execution serves),
   and a callback (the kernel calling a grader function, over the same socket).

    .venv/bin/python benchmarks/small_costs.py [--repeats 5] [--requests 200]
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

PROBE = """
import resource, sys, time
def mem_mb():  # (resident, private: the pages no other process shares)
    with open("/proc/self/smaps_rollup") as f:
        kb = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split(":")[0] in ("Rss", "Private_Clean", "Private_Dirty")}
    return kb["Rss"] / 1024, (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024
before, t0 = mem_mb(), time.perf_counter()
exec(sys.argv[1])
t, after = time.perf_counter() - t0, mem_mb()
print(t, after[0] - before[0], after[1] - before[1])
"""
IMPORTS = {
    "import torch": "import torch",
    "import matplotlib.pyplot": "import matplotlib.pyplot",
    "FlopCounterMode, first use (after import torch)": None,  # timed after torch is in
    "import rfc3987_syntax (jsonschema's optional URI formats)": "import rfc3987_syntax",
}
FLOP_SETUP = "import torch"
FLOP_CODE = ("from torch.utils.flop_counter import FlopCounterMode\n"
             "with FlopCounterMode(display=False):\n    torch.ones(4, 4) @ torch.ones(4, 4)")


def imports(repeats: int) -> None:
    print("== imports, each in a fresh interpreter (median of %d)" % repeats)
    for label, code in IMPORTS.items():
        secs, mbs, own = [], [], []
        for _ in range(repeats):
            if code is None:  # time only the first use, torch already imported
                probe = PROBE.replace("exec(sys.argv[1])", "exec(sys.argv[2])").replace(
                    "before, t0", FLOP_SETUP + "\nbefore, t0")
                args = ["", FLOP_CODE]
            else:
                probe, args = PROBE, [code]
            out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"  {label}: not available ({out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode})")
                break
            s, mb, private = map(float, out.stdout.split())
            secs.append(s)
            mbs.append(mb)
            own.append(private)
        else:
            print(f"  {label}: {statistics.median(secs):.2f} s, +{statistics.median(mbs):.0f} MB resident "
                  f"(+{statistics.median(own):.0f} MB private to the process)")


def requests(count: int) -> None:
    from attnkit import sandbox
    from attnkit.grader import channel
    from attnkit.grader.remote import Kernel

    import course_kernel  # benchmarks/

    workdir = tempfile.mkdtemp(prefix="attnkit-costs-")
    os.chmod(workdir, 0o755)
    print(f"== requests to a course kernel ({sandbox.describe(sandbox.detect())}), {count} each")
    ex, run = course_kernel.start(workdir)
    try:
        code = "def f(x):\n    return x\n\ndef g(h, n):\n    return sum(h(i) for i in range(n))\n"
        run(channel.execute(ex, code, time.monotonic() + 60))
        t0 = time.perf_counter()
        for _ in range(count // 10):
            run(channel.execute(ex, "None", time.monotonic() + 60))
        print(f"  an execution (what a request cost when each was one): {(time.perf_counter() - t0) / (count // 10) * 1000:.1f} ms")
        line = channel.Line(ex, ex.loop, time.monotonic() + 600)
        kernel = Kernel(line.send)
        line.answer = kernel.answer_callback
        f = kernel.lookup({"f"})["f"]
        kernel.call(f, 1)  # warm-up (the session opens)
        t0 = time.perf_counter()
        for i in range(count):
            kernel.call(f, i)
        print(f"  a request on the grading line: {(time.perf_counter() - t0) / count * 1000:.2f} ms")
        g = kernel.lookup({"g"})["g"]
        kernel.call(g, lambda x: x, 1)
        t0 = time.perf_counter()
        kernel.call(g, lambda x: x, 1)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        kernel.call(g, lambda x: x, count + 1)
        many = time.perf_counter() - t0
        print(f"  a callback (kernel -> grader function -> kernel): {(many - one) / count * 1000:.2f} ms")
        run(line.finished())
    finally:
        course_kernel.stop(ex, run)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args(argv)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    imports(args.repeats)
    requests(args.requests)


if __name__ == "__main__":
    main()
