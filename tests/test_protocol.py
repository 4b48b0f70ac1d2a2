"""Direction in the protocol (fast tier): what the kernel sends the grader carries values only, is measured
before anything is built from it, and breaks only the test it was sent for; the rule against torch's own
attention reads the submitted notebook, never the kernel; the grading process's own memory limit."""
from __future__ import annotations

import json
import linecache
import resource
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
import torch

from attnkit.grader import hidden
from attnkit.grader.remote import BadReply, Kernel
from attnkit.inprocess import in_process
from attnkit.kernel import agent, wire

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"
GRADER = ROOT / "graders" / "hw9.py"
_, hw9 = hidden.load_grader(GRADER, SOURCE)  # the assignment's grader helper, loaded as for a hidden region
RANDN = {"$randn": {"shape": [8192, 8192], "seed": 1, "dtype": "float64", "device": "cpu"}}  # 512 MiB if drawn


def student(src: str, name: str) -> dict:
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns: dict = {}
    exec(compile(src, name, "exec"), ns)
    return ns


def replying(text: str) -> Kernel:
    """A Kernel whose kernel answers every request with ``text``."""
    return Kernel(lambda _request: text)


def peak_mb(fn) -> float:
    """The most memory Python and torch's CPU allocator (through tracemalloc's view of Python objects) took in ``fn``."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2 ** 20


# ---------------------------------------------------------------------------- values only, from the kernel
@pytest.mark.parametrize("entry", [RANDN, {"$generator": {"device": "cpu", "state": wire.encode(torch.zeros(8, dtype=torch.uint8))}}])
def test_an_entry_that_makes_the_grader_compute_is_refused_from_the_kernel(entry):
    """Is a $randn or $generator entry refused in whatever the kernel sends, at any depth, and still read in a request?"""
    for data in (entry, [1, {"$tuple": [entry]}], {"$dict": [["k", entry]]}):
        with pytest.raises(wire.WireError, match="values only"):
            wire.decode(data, values_only=True)
    if "$randn" in entry:  # requests (grader -> kernel) keep the compact form
        small = {"$randn": {"shape": [2, 3], "seed": 1, "dtype": "float32"}}
        assert wire.decode(small).shape == (2, 3)


def test_the_randn_reply_bomb_fails_the_test_and_allocates_nothing():
    """Does a 300-byte reply of three 512 MiB $randn entries fail the lookup with a clear message, the grader taking
    under 1 MB for it?"""
    text = json.dumps({"ok": True, "value": {"MultiHeadAttention": {"$tuple": [RANDN] * 3}}}, separators=(",", ":"))
    assert len(text) < 300
    k = replying(text)
    with pytest.raises(BadReply, match="broke the grading protocol.*values only"):
        k.lookup({"MultiHeadAttention"})
    assert peak_mb(lambda: pytest.raises(BadReply, k.lookup, {"MultiHeadAttention"})) < 1


@pytest.mark.parametrize("text, why", [
    ('{"ok": true, "value": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"ok": true, "value": ' + "[" * 200 + "]" * 200 + "}", "nested too deeply"),
    ('{"ok": true, "value": [' + ",".join(["[]"] * 3_000_000) + "]}", "values in one message"),
    ('{"ok": true, "value": [' + ",".join(['{"$tensor": {"dtype": "float64", "shape": [4096, 4096], "data": ""}}'] * 2)
     + "]}", "larger than the message limit"),
])
def test_a_reply_too_deep_too_wide_or_too_large_is_refused_before_it_is_built(text, why):
    """Is a reply nested 100,000 deep, holding 3 million values, or claiming 256 MiB of tensors refused with a clear
    message before it is parsed or built (under 16 MB taken for a 9 MB reply)?"""
    k = replying(text)
    with pytest.raises(BadReply, match=why):
        k.request(op="noop")
    assert peak_mb(lambda: pytest.raises(BadReply, k.request, op="noop")) < 16


def test_an_honest_reply_of_thousands_of_tensors_still_crosses():
    """Does the largest honest reply (4096 recorded intermediates) stay well inside the value budget?"""
    k = in_process(student("import torch\ndef many(x):\n    for _ in range(5000):\n        x = x + 1\n    return x\n",
                           "<cell-many>"))
    value, error, tensors = k.call_recording(k.lookup({"many"})["many"], torch.zeros(2, 3), limit=4096)
    assert error is None and len(tensors) == 4096 and torch.equal(value, torch.full((2, 3), 5000.0))


def test_a_callback_called_with_randn_arguments_fails_the_test():
    """Are a callback's $randn arguments refused (nothing drawn), the student's code told, and the test failed at its
    next request?"""
    k = in_process(student("def uses(fn, x):\n    return fn(x)\n", "<cell-uses>"))
    uses = k.lookup({"uses"})["uses"]
    seen = []
    k.send(lambda *a: seen.append(a))  # the test's function is callback 0
    prompt = wire.CALLBACK_PROMPT + json.dumps({"callback": 0, "args": [RANDN] * 3})
    answer = json.loads(k.answer_callback(prompt))
    assert answer["ok"] is False and "values only" in answer["error"] and seen == []
    with pytest.raises(BadReply, match="a callback's arguments"):
        uses(lambda x: x, torch.ones(2))


def test_the_protocol_names_are_written_once():
    """Do the agent and the grader use wire.py's names, and does the agent serve exactly wire.REQUESTS?"""
    from attnkit.grader import channel, remote
    assert agent.CALLBACK_PROMPT is wire.CALLBACK_PROMPT and remote.CALLBACK_PROMPT is wire.CALLBACK_PROMPT
    assert channel.wire is wire and "wire.SESSION_CALL" in Path(channel.__file__).read_text()
    assert wire.SESSION_CALL.startswith("__import__('attnkit.kernel.line').kernel.line.session(")
    served = set(__import__("re").findall(r'op == "(\w+)"', Path(agent.__file__).read_text()))
    assert served == set(wire.REQUESTS)
    with pytest.raises(ValueError, match="no request"):
        in_process({}).request(op="exec")


# ---------------------------------------------------------------------------- the source the rule reads
FUSED_LAYER = '''
import math, torch, inspect
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):
    def scaled_dot_product_attention(self, Q, K, V, mask=None):
        return F.scaled_dot_product_attention(Q, K, V)

    def forward(self, Q, K, V, mask=None):
        return self.scaled_dot_product_attention(Q, K, V, mask)


inspect.getsource = lambda obj: "def harmless(self):\\n    return 1\\n"   # the kernel's tools, patched
'''


def test_torchs_attention_is_found_in_the_notebook_whatever_the_kernel_says():
    """Is F.scaled_dot_product_attention found from the notebook's source although the kernel's inspect.getsource
    was patched to hide it (and not found in a method that does not call it)?"""
    k = in_process(student(FUSED_LAYER, "<cell-hide>"), ["%matplotlib inline\n" + FUSED_LAYER])
    cls = k.lookup({"MultiHeadAttention"})["MultiHeadAttention"]
    assert hw9.fused_attention_calls(k, cls) == ["scaled_dot_product_attention"]
    assert hw9.fused_attention_calls(k, cls, ["forward"]) == []


@pytest.mark.parametrize("sources, why", [(None, "is not in your notebook"), (["x = 1\n"], "is not in your notebook"),
                                          (["class MultiHeadAttention:\n    pass\n"], "forward is not in your notebook")])
def test_unavailable_source_is_a_failure_never_a_pass(sources, why):
    """Does the rule fail (AssertionError) when the class or the method is not in the notebook the grader holds?"""
    k = in_process(student(FUSED_LAYER, "<cell-none>"), sources)
    cls = k.lookup({"MultiHeadAttention"})["MultiHeadAttention"]
    with pytest.raises(AssertionError, match=why):
        hw9.refuse_fused("(h)", k, cls, ["forward"])


def test_a_method_of_a_base_class_in_the_notebook_is_read():
    """Is torch's attention in a method the class inherits from a base class of the notebook caught, and a right one
    there not?"""
    for body, found in (("F.scaled_dot_product_attention(q, q, q)", ["forward"]), ("q.softmax(-1) @ q", [])):
        src = ("import torch.nn as nn, torch.nn.functional as F\nclass Base(nn.Module):\n    def forward(self, q):\n"
               f"        return {body}\nclass MultiHeadAttention(Base):\n    pass\n")
        k = in_process(student(src, f"<cell-base-{len(found)}>"), [src])
        cls = k.lookup({"MultiHeadAttention"})["MultiHeadAttention"]
        assert hw9.fused_attention_calls(k, cls, ["forward"]) == found


def test_a_method_assigned_from_outside_the_class_is_read_too():
    """Is ``MultiHeadAttention.forward = f`` (f in another cell, calling torch's attention) caught?"""
    plain = "import torch.nn as nn\nclass MultiHeadAttention(nn.Module):\n    def forward(self, x):\n        return x\n"
    later = "import torch.nn.functional as F\ndef f(self, q):\n    return F.scaled_dot_product_attention(q, q, q)\n" \
            "MultiHeadAttention.forward = f\n"
    k = in_process(student(plain + later, "<cell-assign>"), [plain, later])
    cls = k.lookup({"MultiHeadAttention"})["MultiHeadAttention"]
    assert hw9.fused_attention_calls(k, cls, ["forward"]) == ["forward"]


# ---------------------------------------------------------------------------- the grader's own memory limit
OVER_LIMIT = textwrap.dedent('''
    import sys, resource
    from attnkit.batch.workers import limit_own_memory
    from attnkit.grader import hidden
    from attnkit.inprocess import in_process
    data_kb = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmData:")))
    limit_own_memory(data_kb // 1024 + 256)   # 256 MiB above what this process holds now
    region = hidden.GRADER_LINE + "\\nx = torch.ones(2 ** 28)\\n"   # 1 GiB: a decoding bug's allocation
    try:
        hidden.run(region, in_process({}), sys.argv[1])
    except hidden.GraderOutOfMemory as exc:
        print("OUT OF MEMORY:", exc)
    print("soft", resource.getrlimit(resource.RLIMIT_DATA)[0] >> 20, "hard", resource.getrlimit(resource.RLIMIT_DATA)[1])
''')


def test_the_grading_process_runs_out_of_its_own_memory_cleanly():
    """Does a grading process over its memory limit (soft RLIMIT_DATA, the hard one left for the kernels) stop the
    notebook with a could-not-be-graded message, instead of taking the memory or failing only the test?"""
    proc = subprocess.run([sys.executable, "-c", OVER_LIMIT, str(SOURCE)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OUT OF MEMORY: the grading process ran out of its memory limit" in proc.stdout, proc.stdout
    assert f"hard {resource.getrlimit(resource.RLIMIT_DATA)[1]}" in proc.stdout  # as this process has it
    from attnkit.batch.student import _first_error
    log = "[AutogradeApp | ERROR] There was an error processing assignment\nTraceback ...\n" \
          f"attnkit.grader.hidden.GraderOutOfMemory: {hidden.GraderOutOfMemory()}\n"
    assert _first_error(log).startswith("the grading process ran out of its memory limit")


def test_a_kernel_that_dies_as_it_starts_is_said_to_have_died_before_any_cell():
    """When a notebook's kernel dies before it answers (a container too small for a kernel beside the grader: every
    notebook then fails alike), does the could-not-be-graded message say that, not nbclient's client error?"""
    from attnkit.batch.student import _first_error

    log = ("[AutogradeApp | ERROR] Error occurred while starting new kernel client for kernel 0f2c: Kernel died "
           "before replying to kernel_info\n[AutogradeApp | ERROR] There was an error processing assignment\n")
    said = _first_error(log)
    assert said.startswith("the notebook's kernel died as it started, before any cell ran") and "memory" in said
    assert _first_error("[AutogradeApp | ERROR] Timeout waiting for execute reply\n").startswith("[AutogradeApp")
