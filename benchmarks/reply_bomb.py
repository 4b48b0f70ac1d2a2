"""The grading process's peak memory and CPU while it reads hostile replies from a kernel.

    .venv/bin/python benchmarks/reply_bomb.py            # this checkout
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/reply_bomb.py   # another tree's attnkit (e.g. git archive of main)

Each reply is read by the grader's own code (grader/remote.py Kernel.lookup, the request every hidden region
starts with) in a fresh process, the kernel replaced by a function that returns that reply; prints the reply's
size, the process's peak RSS above its baseline, its CPU seconds, and what the grader made of it. Figures, not
a test (tests/test_protocol.py bounds the same replies; tests/test_protocol_attacks.py grades them through the CLI).
"""
from __future__ import annotations

import json
import subprocess
import sys

RANDN = {"$randn": {"shape": [8192, 8192], "seed": 1, "dtype": "float64", "device": "cpu"}}   # 2^26 elements
REPLIES = {
    "randn x3 (the reply bomb)": {"ok": True, "value": {"MultiHeadAttention": {"$tuple": [RANDN] * 3}}},
    "randn x1": {"ok": True, "value": {"MultiHeadAttention": RANDN}},
    "3M empty lists": None,   # built as text below
    "nested 100k deep": None,
}
TEXTS = {"3M empty lists": '{"ok":true,"value":{"MultiHeadAttention":[' + ",".join(["[]"] * 3_000_000) + "]}}",
         "nested 100k deep": '{"ok":true,"value":{"MultiHeadAttention":' + "[" * 100_000 + "]" * 100_000 + "}}"}

ONE = '''
import json, resource, sys, time
from attnkit.grader.remote import Kernel
text = sys.stdin.read()
k = Kernel(lambda request: text)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.process_time()
try:
    found = k.lookup({"MultiHeadAttention"})
    outcome = "accepted: " + repr(found)[:60]
except BaseException as exc:
    outcome = f"{type(exc).__name__}: {exc}"[:110]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"above_mb": (peak - base) / 1024, "cpu_s": time.process_time() - t0, "outcome": outcome}))
'''


def main() -> int:
    for name, reply in REPLIES.items():
        text = TEXTS.get(name) or json.dumps(reply, separators=(",", ":"))
        proc = subprocess.run([sys.executable, "-c", ONE], input=text, capture_output=True, text=True, timeout=600,
                              cwd="/")  # not this checkout: PYTHONPATH may name another tree
        if proc.returncode != 0:
            print(f"{name:28s} {len(text):>9,d} B  the process failed: {proc.stderr.strip().splitlines()[-1][:120]}")
            continue
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name:28s} {len(text):>9,d} B  peak +{got['above_mb']:8.1f} MB  cpu {got['cpu_s']:6.2f} s  "
              f"{got['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
