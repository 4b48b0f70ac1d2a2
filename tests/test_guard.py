"""The integrity guard (attnkit.guard), alone: patches undone, a clean kernel untouched, every
hidden region guarded (fast tier)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnkit import markup
from attnkit import notebooks as nbu
from attnkit.guard import GUARD_LINE
from attnkit.release import unguarded_tests

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"


GUARD_PROBE = r'''
import os, sys, time, importlib, types
clock = time.perf_counter
os.chdir(sys.argv[1])                         # the kernel's folder, holding the grader's helper copy
sys.path.insert(0, sys.argv[1])
import attnkit.guard                          # the kernel's start-up: originals saved here
import attention_checks                       # the set-up cell's import
import torch, torch.testing, torch.utils.flop_counter as fc, builtins
real = {"allclose": torch.allclose, "isclose": torch.isclose, "equal": torch.equal,
        "assert_close": torch.testing.assert_close, "flops": fc.FlopCounterMode.get_total_flops,
        "FlopCounterMode": fc.FlopCounterMode, "isinstance": builtins.isinstance}
# --- what an answer cell might do
torch.allclose = lambda *a, **k: True
torch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
time.perf_counter = lambda: 0.0
time.perf_counter_ns = lambda: 0
time.process_time_ns = lambda: 0
import resource
real["getrusage"] = resource.getrusage
resource.getrusage = lambda *a: None          # the CPU clock of the timing verdict
fc.FlopCounterMode.get_total_flops = lambda self: 1
torch.Tensor.all = lambda self, *a, **k: torch.tensor(True)
builtins.isinstance = lambda *a: True
attention_checks.assert_close = lambda *a, **k: None
attention_checks.close = lambda *a, **k: True
class Agree(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, f, t, a=(), k=None):
        return f(*a, **(k or {}))
Agree().__enter__()
torch.set_default_dtype(torch.float64)
importlib.reload(attention_checks)
fc.FlopCounterMode = object
ns = {"assert_close": lambda *a, **k: None, "expect": lambda *a, **k: None, "torch": None,
      "isinstance": lambda *a: True, "answer_A": 1}
# --- what a hidden test does first
t0 = clock()
from attnkit.guard import guard
mod = guard(ns)["attention_checks"]
cost = clock() - t0
import torch.utils.flop_counter as fc2
ok = {
    "torch.allclose": torch.allclose is real["allclose"], "torch.isclose": torch.isclose is real["isclose"],
    "torch.equal": torch.equal is real["equal"],
    "torch.testing.assert_close": torch.testing.assert_close is real["assert_close"],
    "time.perf_counter": time.perf_counter() > 1 and isinstance(time.perf_counter, types.BuiltinFunctionType),
    "time.perf_counter_ns": time.perf_counter_ns() > 1, "time.process_time_ns": time.process_time_ns() > 0,
    "FlopCounterMode": fc2.FlopCounterMode is real["FlopCounterMode"]
                       and fc2.FlopCounterMode.get_total_flops is real["flops"],
    "Tensor.all": "all" not in vars(torch.Tensor), "builtins.isinstance": builtins.isinstance is real["isinstance"],
    "resource.getrusage": resource.getrusage is real["getrusage"],
    "function modes": torch._C._len_torch_function_stack() == 0,
    "default dtype": torch.get_default_dtype() == torch.float32,
    "module checks": mod.assert_close.__module__ == "attention_checks" and mod.close(torch.zeros(2), torch.ones(2)) is False,
    "namespace checks": ns["assert_close"] is mod.assert_close and ns["expect"] is mod.expect,
    "namespace torch": ns["torch"] is torch and "isinstance" not in ns and ns["answer_A"] == 1,
}
try:
    ns["assert_close"](torch.zeros(3), torch.ones(3), part="probe")
    ok["assert_close fails wrong values"] = False
except AssertionError:
    ok["assert_close fails wrong values"] = True
# A fake module in sys.modules is replaced by the grader's file.
sys.modules["attention_checks"] = types.ModuleType("attention_checks")
real_mod = guard({})["attention_checks"]
ok["fake module reloaded"] = hasattr(real_mod, "assert_close") and sys.modules["attention_checks"] is real_mod
print("RESULT", {k: bool(v) for k, v in ok.items()}, round(cost, 3))
'''


def test_guard_undoes_common_patches(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(GUARD_PROBE)
    out = subprocess.run([sys.executable, str(probe), str(SOURCE)], capture_output=True, text=True, timeout=120)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line, out.stdout + out.stderr
    result = eval(line.split(" ", 1)[1].rsplit(" ", 1)[0])
    failed = [k for k, v in result.items() if not v]
    assert not failed, f"the guard did not restore: {failed}"
    assert float(line.rsplit(" ", 1)[1]) < 2.0


def test_guard_is_a_no_op_on_a_clean_kernel(tmp_path):
    code = ("import os, sys; os.chdir(sys.argv[1]); sys.path.insert(0, sys.argv[1]); import attnkit.guard as g\n"
            "import attention_checks\nprint('CHANGED', g.restore_environment())")
    out = subprocess.run([sys.executable, "-c", code, str(SOURCE)], capture_output=True, text=True, timeout=120)
    assert "CHANGED []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("stem", sorted(p.stem for p in SOURCE.glob("*.ipynb")))
def test_every_hidden_region_starts_with_the_guard(stem):
    """Does every test cell of every notebook have a hidden region that calls the guard first?"""
    nb = nbu.read(SOURCE / f"{stem}.ipynb")
    tests = [c for c in nb.cells if nbu.is_test_cell(c)]
    assert tests
    assert unguarded_tests(nb) == [], f"{stem}: hidden regions without the guard line first"
    missing = [nbu.grade_id(c) for c in tests if not markup.regions(c.source, markup.HIDDEN)]
    assert not missing, f"{stem}: test cells without hidden tests: {missing}"


def test_a_hidden_region_without_the_guard_is_refused():
    nb = nbu.read(SOURCE / "q3_multihead_attention.ipynb")
    cell = next(c for c in nb.cells if nbu.is_test_cell(c))
    cell.source = cell.source.replace(GUARD_LINE, "pass")
    assert unguarded_tests(nb) == [nbu.grade_id(cell)]


def test_student_names_do_not_collide_with_the_checks():
    """guard() rebinds the helper modules' public names in the notebook: none may be a student's answer."""
    sys.path.insert(0, str(SOURCE))
    try:
        import attention_checks
        import attnkit.grader_checks as grader_checks
    finally:
        sys.path.remove(str(SOURCE))
    public = {n for m in (attention_checks, grader_checks) for n, v in vars(m).items()
              if not n.startswith("_") and getattr(v, "__module__", None) == m.__name__}
    for path in SOURCE.glob("*.ipynb"):
        nb = nbu.read(path)
        defined = set()
        for cell in nb.cells:
            if nbu.is_answer_cell(cell) and cell.cell_type == "code":
                for m in re.finditer(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", cell.source, re.M):
                    defined.add(m.group(1) or m.group(2))
        assert not (defined & public), f"{path.name}: {sorted(defined & public)}"


