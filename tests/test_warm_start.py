"""Warm start (issue 12): a student's kernels fork from one pre-imported interpreter, yet each
notebook still starts from a clean interpreter and a clean sandbox, as far as its code can tell.
Graded through the real pipeline: a first notebook poisons what it can, the next one checks."""
from __future__ import annotations

import os
import shutil

import nbformat
import pytest

from attnkit import notebooks as nbu
from attnkit import sandbox
from attnkit.course import Course
from attnkit.grading import autograde
from attnkit.release import generate
from attnkit.reports import scores
from harness import ASSIGNMENT, ROOT

pytestmark = pytest.mark.slow
FIRST, SECOND = "q12_scaled_dot_product", "q3_multihead_attention"  # graded in this order (sorted)
WARM = sandbox.detect() == "bwrap" and os.geteuid() == 0  # warm_enabled() without the (default-off) flag

POISON = '''
import builtins, os, subprocess, sys, torch, attention_checks
torch.allclose = lambda *a, **k: True
torch._attnkit_poison = builtins._attnkit_poison = attention_checks._attnkit_poison = 1
sys.modules["attnkit_poison"] = sys
os.environ["ATTNKIT_POISON"] = "1"
open("poison.txt", "w").write("left behind")
open(".tmp/poison.txt", "w").write("left behind")
os.makedirs("pdir/sub")
os.chmod("pdir", 0)
try:
    open("/dev/shm/poison", "w").write("left behind")
except OSError:
    pass
subprocess.Popen(["sleep", "1000"], start_new_session=True)
print("POISONED")
'''

CHECK = '''
import builtins, os, sys, torch
bad = []
if hasattr(torch, "_attnkit_poison") or type(torch.allclose).__name__ != "builtin_function_or_method":
    bad.append("torch")
if hasattr(builtins, "_attnkit_poison"):
    bad.append("builtins")
if "attention_checks" in sys.modules:
    bad.append("attention_checks already imported")
if "attnkit_poison" in sys.modules or "ATTNKIT_POISON" in os.environ:
    bad.append("sys.modules/os.environ")
bad += [p for p in ("poison.txt", ".tmp/poison.txt", "pdir", "/dev/shm/poison") if os.path.lexists(p)]
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read() == b"sleep\\x001000\\x00":
                bad.append(f"process {pid} (sleep 1000)")
    except OSError:
        pass
print("PARENT", os.getppid())
assert not bad, f"NOT PRISTINE: {bad}"
print("ALL CLEAN")
'''


def _with_cell(nb, source):
    if source:
        nb.cells.insert(0, nbformat.v4.new_code_cell(source))
    return nb


def _outputs(course, stem):
    nb = nbu.read(course.path("autograded", "poisoner", ASSIGNMENT, f"{stem}.ipynb"))
    return "".join(o.get("text", "") + o.get("evalue", "") for o in nb.cells[0].get("outputs", []))


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_each_notebook_starts_pristine_after_a_poisoning_one(monkeypatch):
    monkeypatch.setenv(sandbox.ENV_WARM, "1")  # the grading processes inherit it
    course = Course(ROOT).scratch_copy(notebooks=[FIRST, SECOND])
    try:
        generate(course, ASSIGNMENT)
        for student, cells in (("poisoner", (POISON, CHECK)), ("control", ("", ""))):
            dest = course.path("submitted", student, ASSIGNMENT)
            dest.mkdir(parents=True)
            for stem, cell in zip((FIRST, SECOND), cells):
                src = nbu.read(course.path("source", ASSIGNMENT, f"{stem}.ipynb"))
                nbu.write(_with_cell(nbu.fill(src), cell), dest / f"{stem}.ipynb")
        results = autograde(course, ASSIGNMENT, ["poisoner", "control"], workers=1, progress=False)
        assert all(n.status.value == "graded" for r in results for n in r.notebooks), results
        assert "POISONED" in _outputs(course, FIRST), f"the poisoning cell did not run: {_outputs(course, FIRST)!r}"
        out = _outputs(course, SECOND)
        assert "ALL CLEAN" in out and "NOT PRISTINE" not in out, f"the second notebook saw the first one's leftovers: {out!r}"
        ppid = int(out.split("PARENT", 1)[1].split()[0])
        assert ppid != 1, "the kernel was started cold (its parent is bwrap's init): the warm path was not tested"
        # and the verdicts: cell by cell those of the same answers without the extra cells
        data = scores(course, ASSIGNMENT)["students"]
        for stem in (FIRST, SECOND):
            assert data["poisoner"][stem]["cells"] == data["control"][stem]["cells"], stem
        assert data["control"][SECOND]["score"] > 0, "the control scored nothing: the comparison proves nothing"
    finally:
        shutil.rmtree(course.root, ignore_errors=True)
