"""The tamper bank (issue 6): submissions that try to break or fool the grader.

Each case is graded through the real pipeline in ONE batch, next to the others, and must
get exactly the score it deserves: a tampered test cell is put back and graded, a patched
check is undone before the hidden tests run, a notebook that loops, dies, floods its output
or asks for too much memory costs only the parts it breaks, and nothing stops the batch.
Mostly Q3 (fast); Q4 and Q12 where their cell layout is what matters.

``status`` (not a Fixture field) is the grading status each case's notebook must end with.
"""
from __future__ import annotations

import copy

from nbformat.v4 import new_code_cell

from fixturelib import Fixture

Q3 = "q3_multihead_attention"
Q4 = "q4_multiquery_attention"
Q12 = "q12_scaled_dot_product"
Q3_TESTS = {"q3a_W_k": 1, "q3b_W_v": 1, "q3c_W_o": 1, "q3d_scores": 2, "q3e_softmax": 2, "q3f_weighted_values": 2,
            "q3g_split_heads": 2, "q3h_output_projection": 1, "q3_whole_layer_check": 2, "q3b_wide_value_test": 3}
BLANK_PARTS = {"q3a_W_k", "q3b_W_v", "q3c_W_o", "q3d_scores", "q3e_softmax", "q3f_weighted_values", "q3g_split_heads",
               "q3h_output_projection"}

# Realistic wrong answers (../shared/HOMEWORK.md) the tampering tries to hide.
WRONG_A = {"a": "self.W_k = nn.Linear(d_model, self.d_k)"}              # fails the visible test too
WRONG_D = {"d": "attn_scores = torch.matmul(K, K.transpose(-2, -1))"}
WRONG_E = {"e": "attn_probs = torch.softmax(attn_scores, dim=-2)"}       # softmax over the queries
WRONG_F = {"f": "output = torch.matmul(attn_probs, K)"}
HARDCODED_G = {"g": "return x.view(batch_size, seq_length, 4, self.d_k).transpose(1, 2)"}  # visible: 4 heads
GOOD_G = "return x.view(batch_size, seq_length, self.num_heads, self.d_k).transpose(1, 2)"


# ---------------------------------------------------------------------------- notebook edits
def _gid(cell):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _index(nb, gid):
    return next(i for i, c in enumerate(nb.cells) if _gid(c) == gid)


def compose(*edits):
    def mutate(nb):
        for edit in edits:
            nb = edit(nb)
        return nb
    return mutate


def set_source(gid, text):
    def edit(nb):
        nb.cells[_index(nb, gid)].source = text
        return nb
    return edit


def drop(gid):
    def edit(nb):
        del nb.cells[_index(nb, gid)]
        return nb
    return edit


def duplicate(gid, transform=None):
    """A copy of the cell (same metadata, same grade_id) right after it, optionally edited."""
    def edit(nb):
        i = _index(nb, gid)
        twin = copy.deepcopy(nb.cells[i])
        twin["id"] = f"{twin.get('id', 'cell')}-copy"
        if transform:
            twin.source = transform(twin.source)
        nb.cells.insert(i + 1, twin)
        return nb
    return edit


def split(gid, at_line):
    """Jupyter's 'split cell': two cells, both keeping the original metadata."""
    def edit(nb):
        i = _index(nb, gid)
        first = nb.cells[i]
        lines = first.source.split("\n")
        second = copy.deepcopy(first)
        second["id"] = f"{first.get('id', 'cell')}-split"
        first.source, second.source = "\n".join(lines[:at_line]), "\n".join(lines[at_line:])
        nb.cells.insert(i + 1, second)
        return nb
    return edit


def add_cell(after_gid, code):
    """A new, ungraded code cell of the student's right after a cell."""
    def edit(nb):
        i = _index(nb, after_gid)
        cell = new_code_cell(code)
        cell["id"] = f"student-extra-{abs(hash(code)) % 10 ** 8}"
        nb.cells.insert(i + 1, cell)
        return nb
    return edit


def append_to(gid, code):
    """Code added at the end of a cell (top level), e.g. after the class in the answer cell."""
    def edit(nb):
        cell = nb.cells[_index(nb, gid)]
        cell.source = cell.source.rstrip("\n") + "\n\n" + code.strip("\n") + "\n"
        return nb
    return edit


def kernelspec(spec):
    def edit(nb):
        if spec is None:
            nb.metadata.pop("kernelspec", None)
            nb.metadata.pop("language_info", None)
        else:
            nb.metadata["kernelspec"] = spec
        return nb
    return edit


def submit_nothing(nb):
    return None


# ---------------------------------------------------------------------------- patches
PATCH_ALLCLOSE = """
import torch
torch.allclose = lambda *args, **kwargs: True
torch.equal = lambda *args, **kwargs: True
"""

PATCH_TESTING = """
import torch, torch.testing
torch.testing.assert_close = lambda *args, **kwargs: None
torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
"""

# Redefine the checks the tests call, both in the notebook and in the helper module.
PATCH_CHECKS = """
import attention_checks
_ok = lambda *args, **kwargs: None
attention_checks.assert_close = attention_checks.check_tensor = attention_checks.expect = _ok
attention_checks.close = lambda *args, **kwargs: True
attention_checks.Intermediates.contains = lambda self, *args, **kwargs: True
assert_close = check_tensor = expect = _ok
def isinstance(obj, cls):
    return True
"""

# Patch torch, then reload the helper module so that it captures the patched functions.
PATCH_RELOAD = """
import importlib, torch, attention_checks
torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
torch.Tensor.all = lambda self, *args, **kwargs: torch.tensor(True)
attention_checks = importlib.reload(attention_checks)
from attention_checks import *
"""

# A global torch function mode that answers every comparison with "equal".
PATCH_MODE = """
import torch
class _Agree(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.isclose, torch.Tensor.__eq__, torch.eq):
            return torch.ones_like(out, dtype=torch.bool)
        if func in (torch.allclose, torch.equal):
            return True
        return out
_Agree().__enter__()
"""

PATCH_CLOCKS = """
import time, torch, torch.utils.flop_counter
time.perf_counter = lambda: 0.0
time.perf_counter_ns = lambda: 0
time.process_time_ns = lambda: 0
torch.utils.flop_counter.FlopCounterMode.get_total_flops = lambda self: 1
torch.set_default_dtype(torch.float64)
"""

# Errors never reach the grader: a custom exception handler swallows them.
SWALLOW_ERRORS = """
get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)
get_ipython().showtraceback = lambda *args, **kwargs: None
"""

MEMORY_LOOP = """
def _hog():
    chunks = []
    while True:
        chunks.append(torch.empty(2 ** 28))   # 1 GiB each, until the kernel's memory limit says no
try:
    _hog()
except (RuntimeError, MemoryError) as exc:
    print("out of memory, as expected:", str(exc)[:80])
"""

STDERR_FLOOD = """
import sys
for _i in range(100_000):
    print("warning: spam", _i, file=sys.stderr)
"""

OUTPUT_FLOOD = """
for _i in range(1_000_000):
    print("spam", _i)
"""


# The grading kernel can reach the course's gradebook (sqlite, same user): give itself extra credit.
GRADEBOOK_WRITE = """
import pathlib, sqlite3
for _p in pathlib.Path.cwd().resolve().parents:
    if (_p / "gradebook.db").exists():
        _con = sqlite3.connect(str(_p / "gradebook.db"), timeout=60)
        _con.execute("update grade set extra_credit = 1 where notebook_id in (select sn.id from submitted_notebook sn "
                     "join submitted_assignment sa on sn.assignment_id = sa.id where sa.student_id = 'tamper-gradebook-write')")
        _con.commit()
        break
"""

# The same, hunting by absolute path: every scratch course and the kit's own checkout.
GRADEBOOK_HUNT = """
import glob, pathlib, sqlite3, attnkit
_dbs = glob.glob("/tmp/attnkit-*/gradebook.db") + [str(pathlib.Path(attnkit.__file__).parents[1] / "gradebook.db")]
for _db in _dbs:
    try:
        _con = sqlite3.connect(_db, timeout=5)
        _con.execute("update grade set extra_credit = 1 where notebook_id in (select sn.id from submitted_notebook sn "
                     "join submitted_assignment sa on sn.assignment_id = sa.id where sa.student_id = 'tamper-gradebook-hunt')")
        _con.commit()
    except Exception as _e:
        print("could not write", _db, type(_e).__name__)
"""

# Copy the instructor's solution out of source/ at grading time and run it.
SOURCE_HUNT = """
import glob, json, pathlib, attnkit
_paths = glob.glob("/tmp/attnkit-*/source/hw9/q3_multihead_attention.ipynb")
_paths.append(str(pathlib.Path(attnkit.__file__).parents[1] / "source/hw9/q3_multihead_attention.ipynb"))
for _p in _paths:
    try:
        _nb = json.load(open(_p))
    except Exception as _e:
        print("could not read", _p, type(_e).__name__)
        continue
    for _c in _nb["cells"]:
        if _c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "q3_mha":
            exec("".join(_c["source"]).replace("### ", "# "))
            print("used the instructor's solution")
            break
"""

# ... or read the hidden tests from it and print them into the notebook (and so into the feedback).
GRADEBOOK_READ = """
import pathlib, sqlite3
for _p in pathlib.Path.cwd().resolve().parents:
    if (_p / "gradebook.db").exists():
        _con = sqlite3.connect(str(_p / "gradebook.db"), timeout=60)
        for (_src,) in _con.execute("select source from source_cell where name = 'q3d_scores'"):
            print(_src)
        break
"""


def q3(student, answers=None, expected=None, messages=None, mutate=None, why="", status="graded"):
    fx = Fixture(student, Q3, dict(answers or {}), expected=dict(expected or {}), messages=dict(messages or {}),
                 mutate=mutate, why=why)
    # A wrong blank also breaks the whole layer as written (the graded whole-layer part).
    if any(fx.expected.get(g) == 0 for g in BLANK_PARTS):
        fx.expected.setdefault("q3_whole_layer_check", 0)
    fx.status = status
    return fx


def other(student, notebook, answers=None, expected=None, messages=None, mutate=None, raw=None, why="",
          status="graded"):
    fx = Fixture(student, notebook, dict(answers or {}), expected=dict(expected or {}),
                 messages=dict(messages or {}), mutate=mutate, raw=raw, why=why)
    fx.status = status
    return fx


ALL_ZERO_Q3 = {gid: 0 for gid in Q3_TESTS}

TAMPER = [
    # -- test cells edited, emptied, deleted, duplicated, split
    q3("tamper-edited-test", WRONG_D, {"q3d_scores": 0}, {"q3d_scores": "(d)"},
       mutate=set_source("q3d_scores", "print('all tests passed')"),
       why="A test cell rewritten to print 'passed' is put back and fails a wrong (d)"),
    q3("tamper-emptied-test", WRONG_E, {"q3e_softmax": 0}, {"q3e_softmax": "(e)"},
       mutate=set_source("q3e_softmax", ""), why="An emptied test cell is put back and graded"),
    q3("tamper-deleted-test", WRONG_F, {"q3f_weighted_values": 0}, {"q3f_weighted_values": "(f)"},
       mutate=drop("q3f_weighted_values"), why="A deleted test cell is put back and fails a wrong (f)"),
    q3("tamper-duplicated-tests", mutate=compose(duplicate("q3d_scores"), duplicate("q3h_output_projection")),
       why="Duplicated test cells are graded once: a right answer scores 15, not more"),
    q3("tamper-duplicated-test-wrong", WRONG_D, {"q3d_scores": 0}, mutate=duplicate("q3d_scores"),
       why="A duplicated test cell does not add a passing copy for a wrong (d)"),
    q3("tamper-duplicated-answer", expected={"q3a_W_k": 0},
       mutate=duplicate("q3_mha", lambda s: s.replace("self.W_k = nn.Linear(d_model, d_model)",
                                                     "self.W_k = nn.Linear(d_model, self.d_k)")),
       why="With two copies of the answer cell, the one that runs last (a wrong (a)) is graded"),
    other("tamper-split-answer", Q4, mutate=split("q4_answer_A", 1),
          why="An answer cell split in two (both halves keep the metadata) still defines the answer"),
    other("tamper-split-test", Q4, mutate=split("q4_test_mqa_output", 3),
          why="A test cell split in two is graded once, from the course's copy"),
    # -- kernels
    q3("tamper-no-kernelspec", mutate=kernelspec(None), why="A notebook without kernelspec is graded"),
    q3("tamper-python2-kernelspec", WRONG_E, {"q3e_softmax": 0},
       mutate=kernelspec({"name": "python2", "display_name": "Python 2", "language": "python"}),
       why="A notebook naming Python 2 runs in the course kernel and is graded as it deserves"),
    # -- hard-coding what the visible tests show
    q3("tamper-hardcoded-heads", HARDCODED_G, {"q3g_split_heads": 0},
       why="A split_heads hard-coded to the visible test's 4 heads fails the hidden tests"),
    other("tamper-hardcoded-sqrt16", Q12, {"q1c_code": "return 4.0"}, {"q1c_test": 0},
          {"q1c_test": "wrong value for d"}, why="scaling_factor hard-coded to the visible d = 16 fails"),
    # -- monkeypatching what the tests rely on
    q3("tamper-patch-allclose", WRONG_E, {"q3e_softmax": 0}, {"q3e_softmax": "(e)"},
       mutate=append_to("q3_mha", PATCH_ALLCLOSE),
       why="torch.allclose/equal patched to True (fools the visible check) does not fool the hidden one"),
    q3("tamper-patch-testing", WRONG_F, {"q3f_weighted_values": 0}, {"q3f_weighted_values": "(f)"},
       mutate=append_to("q3_mha", PATCH_TESTING),
       why="torch.testing.assert_close and torch.isclose patched to always agree"),
    q3("tamper-patch-checks", {**WRONG_A, **WRONG_D}, {"q3a_W_k": 0, "q3d_scores": 0},
       {"q3a_W_k": "(a)", "q3d_scores": "(d)"}, mutate=append_to("q3_mha", PATCH_CHECKS),
       why="attention_checks' checks and isinstance redefined, in the module and in the notebook"),
    q3("tamper-patch-reload", WRONG_D, {"q3d_scores": 0}, mutate=append_to("q3_mha", PATCH_RELOAD),
       why="torch.isclose patched, then attention_checks reloaded so that it captures the patch"),
    q3("tamper-patch-mode", WRONG_E, {"q3e_softmax": 0}, mutate=append_to("q3_mha", PATCH_MODE),
       why="a TorchFunctionMode left on that answers every comparison with 'equal'"),
    q3("tamper-patch-clocks", mutate=add_cell("q3_mha", PATCH_CLOCKS),
       why="patched clocks, FLOP counter and default dtype do not cost a right answer anything"),
    q3("tamper-swallow-hidden", HARDCODED_G, {"q3g_split_heads": 0}, mutate=add_cell("q3_mha", SWALLOW_ERRORS),
       why="an IPython handler that swallows exceptions cannot hide a hidden test's failure"),
    q3("tamper-swallow-visible", WRONG_A, {"q3a_W_k": 0}, mutate=add_cell("q3_mha", SWALLOW_ERRORS),
       why="an IPython handler that swallows exceptions cannot hide a visible test's failure"),
    # -- loops, deaths, memory, floods
    q3("tamper-loop-cell", mutate=add_cell("q3_mha", "while True:\n    pass"),
       why="an infinite loop in an extra cell is interrupted; every part keeps its points"),
    q3("tamper-segfault-cell", mutate=add_cell("q3_mha", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"),
       why="a cell that kills the kernel (SIGSEGV): the kernel restarts, every part is graded"),
    q3("tamper-exit-in-answer", expected=ALL_ZERO_Q3, messages={"q3a_W_k": "MultiHeadAttention"},
       mutate=append_to("q3_mha", "import os\nos._exit(0)"),
       why="an answer cell that kills the kernel never defines the class: 0, the batch goes on"),
    q3("tamper-sys-exit", {"g": "import sys\nsys.exit(1)"}, {"q3g_split_heads": 0},
       {"q3g_split_heads": "SystemExit"}, why="sys.exit inside split_heads costs only (g)"),
    q3("tamper-memory-bomb", {"g": "torch.empty(10 ** 11)\n" + GOOD_G}, {"q3g_split_heads": 0},
       {"q3g_split_heads": "memory"},
       why="split_heads asks for 400 GB: a clean error in (g), every other part keeps its points"),
    q3("tamper-memory-loop", mutate=add_cell("q3_mha", MEMORY_LOOP),
       why="a cell that allocates 1 GiB tensors until it fails: every part keeps its points"),
    q3("tamper-stderr-flood", {"g": "import sys\nprint('debug', x.shape, file=sys.stderr)\n" + GOOD_G},
       mutate=add_cell("q3_mha", STDERR_FLOOD),
       why="100k lines of stderr (also from inside the tests) cost nothing"),
    q3("tamper-output-flood", {"g": "print('\\n'.join(['spam'] * 2000))\n" + GOOD_G},
       mutate=add_cell("q3_mha", OUTPUT_FLOOD),
       why="a million printed lines are graded; the feedback stays small"),
    # -- the grading kernel reaching for the gradebook
    q3("tamper-gradebook-write", WRONG_D, {"q3d_scores": 0}, mutate=add_cell("q3_mha", GRADEBOOK_WRITE),
       why="a notebook that writes itself extra credit into the gradebook while it is graded"),
    q3("tamper-gradebook-hunt", WRONG_D, {"q3d_scores": 0}, mutate=add_cell("q3_mha", GRADEBOOK_HUNT),
       why="a notebook that looks for every gradebook by absolute path to give itself extra credit"),
    q3("tamper-source-hunt", WRONG_D, {"q3d_scores": 0}, mutate=add_cell("q3_mha", SOURCE_HUNT),
       why="a notebook that copies the instructor's solution out of source/ while it is graded"),
    q3("tamper-gradebook-read", mutate=add_cell("q3_mha", GRADEBOOK_READ),
       why="a notebook that prints the hidden tests from the gradebook: graded, but no feedback page shows them"),
    # -- files that are not notebooks, or not there
    q3("tamper-malformed-json", expected=ALL_ZERO_Q3, status="malformed",
       why="a truncated .ipynb scores 0 with a reason"),
    q3("tamper-empty-file", expected=ALL_ZERO_Q3, status="malformed", why="an empty .ipynb scores 0"),
    q3("tamper-not-a-notebook", expected=ALL_ZERO_Q3, status="malformed",
       why="valid JSON that is not a notebook scores 0"),
    q3("tamper-missing", expected=ALL_ZERO_Q3, mutate=submit_nothing, status="missing",
       why="no notebook at all scores 0"),
    # -- student ids
    q3("Zoë Müller-Łukasz 3", why="a student id with spaces and non-ASCII letters is graded"),
    q3("学生 王 wrong-d", WRONG_D, {"q3d_scores": 0}, {"q3d_scores": "(d)"},
       why="a non-Latin student id with a wrong (d) gets the exact score"),
]

_RAW = {"tamper-malformed-json": b'{"cells": [{"cell_type": "code", "sou',
        "tamper-empty-file": b"",
        "tamper-not-a-notebook": b'{"hello": "world", "nbformat": 4}'}
for _fx in TAMPER:
    if _fx.student in _RAW:
        _fx.raw = _RAW[_fx.student]

FIXTURES = TAMPER
NOTEBOOKS = sorted({fx.notebook for fx in TAMPER})
