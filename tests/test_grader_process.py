"""The two processes, alone (fast tier): the data format, the kernel's agent and the grader's view of it,
the hidden-region runner, the outside meter. The agent runs in this process here (attnkit.inprocess): the
same requests and replies as through a kernel, without the kernel."""
from __future__ import annotations

import json
import linecache
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from attnkit.authoring import markup
from attnkit.kernel import agent, wire
from attnkit.authoring import notebooks as nbu
from attnkit.grader import growth, hidden
from attnkit.grader.meter import KernelMeter
from attnkit.grader.remote import Remote, StudentError
from attnkit.inprocess import in_process
from attnkit.authoring.release import hidden_regions_outside_grader

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"
GRADER = ROOT / "graders" / "hw9.py"


def student(src: str, name: str = "<cell-1>") -> dict:
    """A namespace as the student's kernel would have after running ``src`` (source kept for tracing)."""
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns: dict = {}
    exec(compile(src, name, "exec"), ns)
    return ns


# ---------------------------------------------------------------------------- the data format
@pytest.mark.parametrize("value", [torch.randn(2, 3), torch.randn(()), torch.zeros(0, 4, dtype=torch.float64),
                                   torch.tensor([True, False]), torch.randn(3, dtype=torch.bfloat16),
                                   torch.randn(4, 5)[:, ::2], torch.arange(6, dtype=torch.int64).reshape(2, 3)])
def test_tensors_cross_by_value_exactly(value):
    """Does every tensor come back with its dtype, shape and values, a strided view included?"""
    back = wire.loads(wire.dumps(value))
    assert back.dtype == value.dtype and back.shape == value.shape and torch.equal(back, value)


def test_other_values_cross_and_objects_do_not():
    """Do numbers, nan, tuples, dicts, dtypes and generator states cross, and an object refuse to?"""
    g = torch.Generator().manual_seed(5)
    torch.randn(3, generator=g)
    back = wire.loads(wire.dumps((1, 2.5, float("nan"), "x", [1, {"a": torch.float32}], torch.Size([2, 3]), g)))
    assert back[:2] == (1, 2.5) and back[2] != back[2] and back[4] == [1, {"a": torch.float32}] and back[5] == (2, 3)
    assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=back[6]))
    with pytest.raises(wire.WireError):
        wire.dumps(object())
    with pytest.raises(wire.WireError):
        wire.dumps(lambda x: x)


@pytest.mark.parametrize("bad", [
    {"$tensor": {"dtype": "float32", "shape": [4], "data": "AAAA"}},          # 3 bytes for 16
    {"$tensor": {"dtype": "object", "shape": [1], "data": ""}},                # no such dtype
    {"$tensor": {"dtype": "float32", "shape": [-1], "data": ""}},
    {"$pickle": "gASVAAAAAAAAAACMCGJ1aWx0aW5zlIwEZXZhbJSTlC4="},                # nothing is unpickled
    {"$ref": 1},                                                               # no references without a resolver
    {"$randn": {"shape": [1 << 20, 1 << 20], "seed": 1, "dtype": "float32"}},  # too large to draw
])
def test_malformed_or_unknown_entries_are_refused(bad):
    """Is every entry that is not exactly in the format refused, with no code run and nothing unpickled?"""
    with pytest.raises(wire.WireError):
        wire.decode(bad)


def test_the_message_limit_holds():
    """Is a reply whose tensors exceed the limit refused before they are built?"""
    big = wire.encode(torch.zeros(1000))
    with pytest.raises(wire.WireError):
        wire.decode([big] * 5, limit=16000)


# ---------------------------------------------------------------------------- agent and proxies
SDPA = '''
import math, torch
import torch.nn as nn


class MHA(nn.Module):
    def sdpa(self, Q, K, V, mask=None):
        attn_scores = torch.matmul({d}, K.transpose(-2, -1))  # (d)
        attn_scores = attn_scores / math.sqrt(self.d_k)
        attn_probs = torch.softmax(attn_scores, dim=-1)  # (e)
        output = torch.matmul(attn_probs, V)  # (f)
        return output


def twice(x):
    return 2 * x


def uses(fn, x):
    return fn(x) + 1


answer_A = 2
'''


def kernel_of(d="Q"):
    return in_process(student(SDPA.replace("{d}", d)))


def test_names_come_as_values_or_references():
    """Is a number the student defined sent by value, a class or function by reference, a missing name left out?"""
    found = kernel_of().lookup({"answer_A", "MHA", "twice", "nothere"})
    assert found["answer_A"] == 2 and set(found) == {"answer_A", "MHA", "twice"}
    assert isinstance(found["MHA"], Remote) and isinstance(found["twice"], Remote)
    assert found["twice"](torch.ones(2)).tolist() == [2.0, 2.0]


def test_a_student_error_is_its_type_and_a_capped_excerpt():
    """Does a student's exception come back as its type name and at most 300 bytes of its message?"""
    k = in_process(student("def f():\n    raise ValueError('x' * 5000)\n"))
    with pytest.raises(StudentError) as err:
        k.lookup({"f"})["f"]()
    assert type(err.value).__name__ == "ValueError" and len(str(err.value).encode()) <= agent.ERROR_BYTES + 3


def test_a_grader_function_reaches_the_kernel_only_as_a_callback_by_value():
    """Can the student's code call a test's function, and does it get values, never the function itself?"""
    k = kernel_of()
    uses = k.lookup({"uses"})["uses"]
    seen = []
    assert uses(lambda x: seen.append(type(x).__name__) or x * 3, torch.ones(2)).tolist() == [4.0, 4.0]
    assert seen == ["Tensor"]
    with pytest.raises(wire.WireError):  # a proxy's own method is not the student's
        k.send(k.lookup({"MHA"})["MHA"].__init__)


def sdpa_run(d, **options):
    k = kernel_of(d)
    cls = k.lookup({"MHA"})["MHA"]
    fn = k.getattr(cls, "sdpa")
    m = k.bare(cls, d_k=4)
    Q = torch.randn(2, 3, 5, 4)
    return Q, k.call_traced(fn, m, Q, Q, Q, functions=[fn], watch=agent_names(), **options)


def agent_names():
    return ["attn_scores", "attn_probs", "output"]


def test_a_traced_call_records_each_local_the_code_binds():
    """Does a traced call record attn_scores, attn_probs and output in the order the code binds them?"""
    Q, t = sdpa_run("Q")
    assert [n for n, _ in t.history] == ["attn_scores", "attn_scores", "attn_probs", "output"]
    assert torch.allclose(t.first("attn_scores"), Q @ Q.transpose(-2, -1))
    assert torch.allclose(t.value, t.first("output"))


def test_a_failing_line_is_skipped_and_its_stand_in_bound():
    """Is a blank line (d) skipped with its label, a neutral stand-in bound, and the lines after it graded?"""
    stand_in = torch.randn(2, 3, 5, 5)
    Q, t = sdpa_run("_____", standins={"attn_scores": stand_in}, skip_failures=True)
    assert t.error is None and t.skipped_for("attn_scores").blank == "(d)"
    assert torch.allclose(t.last_before("attn_scores", "attn_probs"), stand_in / 2)
    assert torch.allclose(t.first("attn_probs"), torch.softmax(stand_in / 2, -1))


def test_a_replaced_line_is_never_run():
    """Does ``replace`` put the stand-in in place of line (e) even when (e) runs fine?"""
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    Q, t = sdpa_run("Q", standins={"attn_probs": probs}, replace=["attn_probs"])
    assert torch.allclose(t.value, probs @ Q)


def test_intermediates_are_recorded():
    """Are the floating-point tensors a call computes sent back, in order?"""
    k = kernel_of()
    _, err, tensors = k.call_recording(k.lookup({"twice"})["twice"], torch.ones(3))
    assert err is None and any(torch.equal(t, 2 * torch.ones(3)) for t in tensors)


# ---------------------------------------------------------------------------- the hidden-region runner
def test_a_hidden_region_sees_the_students_names_and_the_graders_helpers(tmp_path):
    """Does a region read the student's objects from the kernel and the helpers from the grader's copy?"""
    (tmp_path / "attention_checks.py").write_text((SOURCE / "attention_checks.py").read_text())
    region = hidden.GRADER_LINE + "\nexpect(answer_A == 2, 'A')\nprint('ok', twice(torch.ones(1)).item())\n"
    printed, error = hidden.run(region, kernel_of(), tmp_path, grader=GRADER)
    assert error is None and printed == "ok 2.0\n"
    printed, error = hidden.run(region.replace("answer_A", "answer_B"), kernel_of(), tmp_path, grader=GRADER)
    assert error["ename"] == "NameError" and "answer_B is not defined in your notebook" in error["evalue"]


def test_every_hidden_region_runs_in_the_grader():
    """Does every hidden region of every source notebook start with the grader line?"""
    for path in SOURCE.glob("*.ipynb"):
        assert hidden_regions_outside_grader(nbu.read(path)) == [], path.name


def test_a_region_that_would_run_in_the_kernel_is_refused():
    """Is a hidden region without the grader line reported by the release check?"""
    nb = nbu.read(SOURCE / "q12_scaled_dot_product.ipynb")
    cell = next(c for c in nb.cells if markup.regions(c.source, markup.HIDDEN))
    cell.source = cell.source.replace(hidden.GRADER_LINE, "pass")
    assert hidden_regions_outside_grader(nb) == [nbu.grade_id(cell)]


def test_student_names_do_not_collide_with_the_graders_names():
    """A region's helper names win over the student's: none may be a name a student's answer defines."""
    sys.path.insert(0, str(SOURCE))
    try:
        import attention_checks
        import attnkit.grader.checks as grader_checks
        _, hw9 = hidden.load_grader(GRADER, SOURCE)
    finally:
        sys.path.remove(str(SOURCE))
    public = {n for m in (attention_checks, grader_checks, hw9) for n in vars(m) if not n.startswith("_")}
    public |= {"kernel", "kind", "is_kind", "call", "meter", "wire", "check_linear_time", "check_linear_memory"}
    for path in SOURCE.glob("*.ipynb"):
        defined = set()
        for cell in nbu.read(path).cells:
            if nbu.is_answer_cell(cell) and cell.cell_type == "code":
                for m in re.finditer(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", cell.source, re.M):
                    defined.add(m.group(1) or m.group(2))
        assert not (defined & public), f"{path.name}: {sorted(defined & public)}"


# ---------------------------------------------------------------------------- the outside meter
BUSY = "import sys, time\nsys.stdin.readline()\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\nprint(1, flush=True)\nsys.stdin.readline()\n"


def test_the_meter_reads_another_processes_cpu_time():
    """Does the meter see a child's 0.3 s of CPU, read from outside, to within a few ms?"""
    proc = subprocess.Popen([sys.executable, "-c", BUSY.format(s=0.3)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        meter = KernelMeter(root_pid=proc.pid)
        time.sleep(0.2)
        before = meter.cpu_ns()
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdout.readline()
        spent = (meter.cpu_ns() - before) / 1e9
        assert 0.29 <= spent <= 0.36, spent
    finally:
        proc.kill()


def test_a_linear_and_a_quadratic_function_get_their_verdicts_in_process():
    """Does the grader's time statistic call an O(N) function linear and an O(N^2) one quadratic?"""
    torch.set_num_threads(1)
    ns = student("import torch\ndef lin(x):\n    return torch.tanh(x).sum()\ndef quad(x):\n    return (x @ x.T).sum()\n")
    k = in_process(ns)
    found = k.lookup({"lin", "quad"})
    meter = KernelMeter(root_pid=__import__("os").getpid(), watch_forks=False)  # (the grader's own process)
    vector, rows = (lambda n: (wire.Randn((n,), n),)), (lambda n: (wire.Randn((n, 32), n),))
    # (1 MB at most: past 2 MB, fresh allocations in every call here cost page faults that grow faster than N)
    r = growth.measure_time_growth(k, meter, found["lin"], vector, start=2 ** 12, max_n=2 ** 18, floor_s=1e-4)
    assert r["verdict"] == "linear", r
    assert growth.measure_time_growth(k, meter, found["quad"], rows, start=64, max_n=2 ** 12)["verdict"] == "quadratic"



def test_a_quadratic_function_with_a_30ms_constant_is_quadratic_in_process():
    """Does 30 ms of busy work in every call, most of each small size's cost, leave an O(N^2) function quadratic?"""
    torch.set_num_threads(1)
    ns = student("import time, torch\ndef quad(x):\n    t = time.process_time()\n"
                 "    while time.process_time() - t < 0.03:\n        pass\n    return (x @ x.T).sum()\n")
    k = in_process(ns)
    meter = KernelMeter(root_pid=__import__("os").getpid(), watch_forks=False)
    r = growth.measure_time_growth(k, meter, k.lookup({"quad"})["quad"], lambda n: (wire.Randn((n, 32), n),),
                                   start=64, max_n=2 ** 13)
    assert r["verdict"] == "quadratic" and len(r["sizes"]) >= 3, r


def test_the_fit_finds_the_growth_under_a_constant_larger_than_it():
    """Does the fit a + b1 N + b2 N^2 call a linear cost 1 and a quadratic one (with a linear part) near 2 when 30 ms
    of every size's cost is a constant?"""
    sizes = [256 * 2 ** i for i in range(5)]
    top = sizes[-1]
    linear = growth.fit_cost(sizes, [0.03 + 0.02 * n / top for n in sizes])
    quadratic = growth.fit_cost(sizes, [0.03 + 0.005 * n / top + 0.02 * (n / top) ** 2 for n in sizes])
    assert abs(linear[0] - 0.03) < 1e-4 and growth.growth_exponent(linear, top) < 1.01, linear
    assert abs(quadratic[0] - 0.03) < 1e-4 and abs(growth.growth_exponent(quadratic, top) - 1.8) < 0.01, quadratic


MEASURED = dict(meter=KernelMeter(root_pid=__import__("os").getpid(), watch_forks=False),
                make_args=lambda n: (wire.Randn((n, 4), 1),), reference=lambda x: x * 2, part="part")


def test_measured_calls_get_inputs_no_call_saw_before():
    """Does every measured call get new inputs (new objects, new values), so a cache of earlier calls never hits?"""
    ns = student("seen, values, hits = [], set(), []\ndef memo(x):\n    key = tuple(x[0].tolist())\n"
                 "    if any(x is s for s in seen) or key in values:\n        hits.append(1)\n"
                 "    seen.append(x)\n    values.add(key)\n    return x * 2\n")
    k = in_process(ns)
    m = growth.Measured(k, fn=k.lookup({"memo"})["memo"], **MEASURED)
    for n in (64, 64, 64, 128, 128):
        m.time(n)
    m.peak(64)
    assert len(ns["seen"]) == 6 and ns["hits"] == []


@pytest.mark.parametrize("timed, message", [("None", "the output has shape None"), ("x * 3", "wrong values")])
def test_a_function_that_behaves_only_when_checked_fails_its_timed_calls(timed, message):
    """Does a function that finds it is timed (the request it serves) and returns something else fail there?"""
    ns = student(f"import sys\ndef sly(x):\n    f = sys._getframe(1)\n    while f is not None:\n"
                 f"        r = f.f_locals.get('request')\n"
                 f"        if isinstance(r, dict) and (r.get('keep') or r.get('discard')):\n"
                 f"            return {timed}\n        f = f.f_back\n    return x * 2\n")
    k = in_process(ns)
    sly = k.lookup({"sly"})["sly"]
    assert torch.equal(sly(torch.ones(3, 4)), torch.full((3, 4), 2.0))  # an ordinary call: the right value
    with pytest.raises(AssertionError, match=re.escape(message) + ".*every call whose time or memory is measured"):
        growth.Measured(k, fn=sly, **MEASURED).time(64)


def test_a_fork_during_a_measured_call_fails_the_measurement_where_no_cgroup_counts_it():
    """Without a cgroup, is a measured call that starts a process a failed measurement (never free)?"""
    ns = student("import os\ndef forks(x):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
                 "    os.waitpid(pid, 0)\n    return x * 2\n")
    k = in_process(ns)
    meter = KernelMeter(root_pid=__import__("os").getpid())  # forks watched (this process: the host's count)
    m = growth.Measured(k, fn=k.lookup({"forks"})["forks"], **{**MEASURED, "meter": meter})
    with pytest.raises(growth.Inconclusive, match="a process or thread was started during every try"):
        m.time(64)
    with pytest.raises(growth.Inconclusive):
        m.peak(64)


GRANDCHILD = """
import os, sys, time
print("ready", flush=True)
sys.stdin.readline()
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:  # the grandchild: reparented when its parent exits, 256 MiB written and 0.3 s of CPU
        os.close(r)
        block = b"x" * (256 << 20)
        t = time.process_time()
        while time.process_time() - t < 0.3:
            pass
        os._exit(0)
    os._exit(0)
os.close(w)
os.wait()
os.read(r, 1)  # EOF: the grandchild has exited
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not __import__("attnkit.sandbox").sandbox.meter_cgroups(), reason="no per-kernel cgroup here")
def test_the_cgroup_meter_counts_a_reparented_grandchild_that_has_exited():
    """Does the kernel's cgroup meter count the CPU time and peak memory of a grandchild that was reparented and
    has exited by the time the meter is read?"""
    from attnkit import sandbox
    from attnkit.grader.meter import CgroupMeter
    kind, parent = sandbox.memory_cgroups()
    cg = sandbox.KernelCgroup(2048, kind, parent)
    proc = subprocess.Popen(cg.wrap([sys.executable, "-c", GRANDCHILD]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        meter = CgroupMeter.of(cg)
        base, before = meter.reset_peak(), meter.cpu_ns()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        cpu, peak = (meter.cpu_ns() - before) / 1e9, meter.peak_bytes() - base
        assert cpu >= 0.29 and peak >= 250 << 20, (cpu, peak / 2 ** 20)
    finally:
        proc.kill()
        proc.wait()
        cg.remove()

# ---------------------------------------------------------------------------- isolation that never punishes
INIT = '''
import torch
import torch.nn as nn


class Base(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.d = d
        self.W_k = nn.Linear(d, _____)  # (a)
        self.W_v = nn.Linear(_____, d)  # (b)
        self.W_o = nn.Linear(d, _____)  # (c)


class Wide(Base):
    def __init__(self, d):
        super().__init__(d)
        self.W_v = nn.Linear(d, 2 * d)
'''


def test_consecutive_failing_lines_are_all_skipped():
    """Are three failing lines in a row all jumped over (the line a jump lands on gets no line event of its own)?"""
    k = in_process(student(INIT, "<cell-init>"))
    base = k.lookup({"Base"})["Base"]
    init = k.getattr(base, "__init__")
    m = k.new(base)
    t = k.call_traced(init, m, 4, functions=[init], skip_failures=True)
    labels = [s["error"].blank for s in t.skipped] + ([t.error.blank] if t.error is not None else [])
    assert labels == ["(a)", "(b)", "(c)"] and m.d == 4


def test_a_failing_last_line_of_a_parent_init_lets_the_child_init_go_on():
    """When the last line of the parent's __init__ fails, is the child's super().__init__ call jumped over so that
    the child's own lines still run (and what the parent set stays set)?"""
    k = in_process(student(INIT, "<cell-init2>"))
    wide, base = (k.lookup({"Wide", "Base"})[n] for n in ("Wide", "Base"))
    inits = [k.getattr(wide, "__init__"), k.getattr(base, "__init__")]
    m = k.new(wide)
    t = k.call_traced(inits[0], m, 4, functions=inits, skip_failures=True)
    assert t.error is None and m.d == 4 and k.get(m, "W_v.out_features") == (8,)


def test_the_pieces_of_a_three_operand_einsum_are_recorded():
    """Is x W_q recorded when it exists only inside one einsum over three operands (recorded at the dispatcher)?"""
    k = in_process(student("import torch\ndef f(x, W, K):\n    return torch.einsum('bd,hdk,bnk->bhn', x, W, K)\n"))
    x, W, K = torch.randn(2, 12), torch.randn(3, 12, 4), torch.randn(2, 5, 4)
    _, err, tensors = k.call_recording(k.lookup({"f"})["f"], x, W, K)
    want = torch.einsum("bd,hdk->bhk", x, W)
    assert err is None and any(t.shape == want.shape and torch.allclose(t, want, atol=1e-5) for t in tensors)


def test_a_blank_message_names_the_blank_once():
    """Does a blank read "(e) is still a blank", never "(e): a blank is still a blank" or "(d): (d) is still"?"""
    error = StudentError("name '_____' is not defined")
    for label, want in [("(e)", "(e) is still a blank `_____`: fill it in"),
                        ("a blank", "(e): the code it runs still has a blank `_____`: fill it in")]:
        error.blank = label
        with pytest.raises(AssertionError) as caught:
            hidden.call("(e)", lambda: (_ for _ in ()).throw(error))
        assert str(caught.value) == want


LAYER = '''
import math, torch
import torch.nn as nn


class Attend(nn.Module):
    def forward(self, q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s.masked_fill(mask == 0, -1e9)
        return s.softmax({axis}) @ v


class MultiHeadAttention(nn.Module):  # no scaled_dot_product_attention, split_heads or combine_heads
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.d_model, self.h = d_model, num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.attend = Attend()

    def forward(self, Q, K, V, mask=None):
        b = Q.shape[0]
        q, k, v = (w(t).unflatten(-1, (self.h, -1)).transpose(1, 2) for w, t in ((self.W_q, Q), (self.W_k, K), (self.W_v, V)))
        return self.W_o(self.attend(q, k, v, mask).transpose(1, 2).reshape(b, -1, self.d_model))
'''


@pytest.mark.parametrize("axis, passes", [(-1, True), (-2, False)])
def test_a_part_that_cannot_be_isolated_is_graded_with_the_whole_layer(tmp_path, axis, passes):
    """Does a part whose method is gone pass when the rewritten layer is right, and fail (that part only) when not?"""
    (tmp_path / "attention_checks.py").write_text((SOURCE / "attention_checks.py").read_text())
    region = (hidden.GRADER_LINE + "\npart = '(d)'\n\ndef _alone():\n"
              "    kernel.getattr(MultiHeadAttention, 'scaled_dot_product_attention')\n\n"
              "alone_or_whole(part, kernel, MultiHeadAttention, _alone)\n")
    src = LAYER.replace("{axis}", str(axis))
    printed, error = hidden.run(region, in_process(student(src, f"<cell-l{axis}>"), [src]), tmp_path, grader=GRADER)
    assert (error is None) == passes, error
    if passes:
        assert "graded with your whole layer" in printed


BLANK_SDPA = '''
import math, torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):  # (d) still a blank; forward {how}
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.d_model, self.h = d_model, num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def scaled_dot_product_attention(self, Q, K, V, mask=None):
        attn_scores = torch.matmul(_____, K.transpose(-2, -1))  # (d)
        return attn_scores

    def forward(self, Q, K, V, mask=None):
        b = Q.shape[0]
        q, k, v = (w(t).unflatten(-1, (self.h, -1)).transpose(1, 2) for w, t in ((self.W_q, Q), (self.W_k, K), (self.W_v, V)))
        {attend}
        return self.W_o(o.transpose(1, 2).reshape(b, -1, self.d_model))
'''
OWN = ("by hand", "s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
       "        s = s if mask is None else s.masked_fill(mask == 0, -1e9)\n        o = s.softmax(-1) @ v")
FUSED = ("with torch's fused attention", "o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)")


@pytest.mark.parametrize("how, attend", [OWN, FUSED])
def test_a_blank_in_a_method_that_is_still_there_is_not_rescued_by_the_layer(tmp_path, how, attend):
    """Does a (d) left blank in a scaled_dot_product_attention that still exists score 0, even when forward computes
    the whole layer without it (by hand, or with F.scaled_dot_product_attention)?"""
    (tmp_path / "attention_checks.py").write_text((SOURCE / "attention_checks.py").read_text())
    region = (hidden.GRADER_LINE + "\npart = '(d)'\n\ndef _alone():\n"
              "    _m = kernel.bare(MultiHeadAttention, d_model=4, h=1)\n"
              "    call(part, _m.scaled_dot_product_attention, torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4), "
              "torch.ones(1, 1, 2, 4))\n\n"
              "alone_or_whole(part, kernel, MultiHeadAttention, _alone)\n")
    src = BLANK_SDPA.replace("{how}", how).replace("{attend}", attend)
    printed, error = hidden.run(region, in_process(student(src, f"<cell-blank-{len(how)}>"), [src]), tmp_path, grader=GRADER)
    assert error is not None and "is still a blank" in str(error), (printed, error)
    assert "graded with your whole layer" not in printed


def test_a_layer_built_on_torchs_own_attention_earns_nothing_on_the_whole_path(tmp_path):
    """Is a rewritten layer (its methods gone) that calls F.scaled_dot_product_attention refused the whole-layer
    credit, with a message saying to write your own?"""
    (tmp_path / "attention_checks.py").write_text((SOURCE / "attention_checks.py").read_text())
    src = (BLANK_SDPA.replace("{how}", FUSED[0]).replace("{attend}", FUSED[1])
           .replace("def scaled_dot_product_attention", "def _unused"))
    region = (hidden.GRADER_LINE + "\npart = '(d)'\n\ndef _alone():\n"
              "    kernel.getattr(MultiHeadAttention, 'scaled_dot_product_attention')\n\n"
              "alone_or_whole(part, kernel, MultiHeadAttention, _alone)\n")
    printed, error = hidden.run(region, in_process(student(src, "<cell-fused-layer>"), [src]), tmp_path, grader=GRADER)
    assert error is not None and "graded with your whole layer" not in printed
    assert "use torch's built-in attention; write your own" in printed


SEALED = """
import sys
from attnkit.kernel.seal import load_no_processes
if sys.argv[1:] == ["seal"]:
    load_no_processes()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_kernel_that_can_start_no_process_is_not_watched_for_forks():
    """Where the kernel loaded the filter that refuses new processes (as it does where no cgroup counts them), does
    the /proc meter see it from outside (its count of filters) and stop watching the host's fork count, whose
    moves by other processes would fail every measurement on a busy host; and without it, does it still watch?"""
    from attnkit.sandbox import seccomp
    if seccomp.unavailable():
        pytest.skip(seccomp.unavailable())
    for how, watched in (("seal", False), ("plain", True)):
        proc = subprocess.Popen([sys.executable, "-c", SEALED, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            meter = KernelMeter(root_pid=proc.pid, sealed_filters=seccomp.filters_of("self") + 1)
            assert meter.sealed() is not watched and (meter.forks() is not None) is watched, how
        finally:
            proc.kill()
            proc.wait()


def test_a_grading_process_loads_torch_before_its_first_student():
    """Does a grading process load the hidden tests' torch while it waits for its first student (not at its first
    test cell, with the kernel idle), and still exit cleanly when no student comes?"""
    import os

    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "attnkit.batch.workers", "/nonexistent-course", "hw9", str(write_fd)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=(write_fd,), cwd=ROOT, text=True)
    os.close(write_fd)
    try:
        deadline, loaded = time.monotonic() + 90, False
        while not loaded and time.monotonic() < deadline and proc.poll() is None:
            with open(f"/proc/{proc.pid}/maps") as maps:
                loaded = "libtorch" in maps.read()
            time.sleep(0.2)
        assert loaded, "no student sent, and torch not loaded after 90 s"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        proc.wait()
        os.close(read_fd)


def test_a_grading_process_computes_on_one_torch_thread():
    """Does the grading process's torch run on one thread (its idle pool threads would spin on the cores the
    kernels need), whatever it was before?"""
    code = ("import torch; torch.set_num_threads(4)\n"
            "from attnkit.batch.workers import GRADER_THREADS, _import_grader\n"
            "_import_grader(); print(torch.get_num_threads(), GRADER_THREADS)")
    out = _python(code)
    assert out.returncode == 0 and out.stdout.split() == ["1", "1"], (out.stdout, out.stderr[-2000:])


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter of the kit's, its output captured."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_grading_process_ends_as_python_would_without_its_teardown(tmp_path):
    """Does ``exit_now`` (how a grading process ends, skipping the interpreter's freeing of torch and nbgrader)
    still finish the threads that are not daemons, run the exit handlers in order, flush what was printed and exit
    with the status given?"""
    log = tmp_path / "log"
    code = ("import atexit, threading, time, sys\n"
            "from attnkit.quick_exit import exit_now\n"
            f"log = open({str(log)!r}, 'a', buffering=1)\n"
            "atexit.register(lambda: log.write('first registered, last run\\n'))\n"
            "atexit.register(lambda: log.write('last registered, first run\\n'))\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), log.write('thread finished\\n'))).start()\n"
            "print('unflushed', end=''); sys.stderr.write('unflushed too')\n"
            "exit_now(3)\n"
            "log.write('never\\n')")
    out = _python(code)
    assert out.returncode == 3, out.stderr[-2000:]
    assert (out.stdout, out.stderr) == ("unflushed", "unflushed too")
    assert log.read_text().splitlines() == ["thread finished", "last registered, first run",
                                            "first registered, last run"]


def test_a_grading_process_never_collects_what_its_imports_made():
    """Once a grading process has loaded the hidden tests' modules (torch), are their objects frozen, so that the
    collector's full passes (50-75 ms each over torch's objects, a few a student) never walk them, with the
    collector on again and no full pass while they loaded?"""
    out = _python(textwrap.dedent("""
        import gc
        passes = []
        gc.callbacks.append(lambda phase, info: phase == "stop" and passes.append(info["generation"]))
        from attnkit.batch.workers import _import_grader
        _import_grader()
        import torch
        print(gc.get_freeze_count(), gc.isenabled(), passes.count(2), torch.get_num_threads())
    """))
    assert out.returncode == 0, out.stderr[-2000:]
    frozen, enabled, full_passes, threads = out.stdout.split()
    assert int(frozen) > 100_000 and enabled == "True" and full_passes == "0" and threads == "1", out.stdout


def test_only_a_hidden_region_needs_the_grader_modules():
    """Do the execution step, `./kit new` and `./kit release` know a hidden region's process from its first line
    without loading the grader's modules (torch: about a second), so that a grading process runs its first cells
    while they load in the background, and only a hidden region waits for them?"""
    code = ("import sys\n"
            "from attnkit.authoring import markup, new, release\n"
            "from attnkit.preprocessors import execute\n"
            "assert markup.runs_in_grader(markup.GRADER_LINE + '\\nx = 1') and not markup.runs_in_grader('x = 1')\n"
            "print(sorted(m for m in ('torch', 'attnkit.grader.hidden', 'attnkit.grader.channel') if m in sys.modules))")
    out = _python(code)
    assert out.returncode == 0 and out.stdout.split() == ["[]"], (out.stdout, out.stderr[-2000:])
    from attnkit.authoring import markup
    from attnkit.grader import hidden

    assert hidden.GRADER_LINE == markup.GRADER_LINE and hidden.runs_in_grader is markup.runs_in_grader


def test_a_grading_process_that_cannot_be_forked_starts_as_a_new_interpreter(monkeypatch):
    """Where the batch cannot fork (no memory or process left for one), does it still get its grading process, a
    new interpreter, with no pipe of the failed fork left open?"""
    import errno
    import os

    from attnkit.batch import workers

    def pipes():
        return sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                      if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"))

    def no_fork():
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    before = pipes()
    monkeypatch.setattr(workers.os, "fork", no_fork)
    worker = workers.Worker("/nonexistent-course", "hw9", 0, {}, fork=True)
    monkeypatch.undo()
    try:
        assert isinstance(worker.proc, subprocess.Popen), type(worker.proc)
    finally:
        worker.close()
        worker.log.close()
    assert worker.proc.returncode == 0
    assert pipes() == before
