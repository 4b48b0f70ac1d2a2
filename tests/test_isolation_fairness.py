"""Grading one Q3 part alone never takes points from a right layer: stand-ins take keyword calls, parts run on the
student's own instance, a part that cannot run alone is graded whole, and a wrong output is told its likely mistake
(behind the course setting). The agent runs in this process (attnkit.inprocess): fast tier."""
from __future__ import annotations

import linecache
import sys
from pathlib import Path

import pytest
import torch

from attnkit.grader import hidden
from attnkit.inprocess import in_process

SOURCE = Path(__file__).resolve().parents[1] / "source" / "hw9"
GRADER = Path(__file__).resolve().parents[1] / "graders" / "hw9.py"
sys.path.insert(0, str(SOURCE))
_, hw9 = hidden.load_grader(GRADER, SOURCE)  # the assignment's grader helper, loaded as for a hidden region

LAYER = '''
import math, torch
import torch.nn as nn


def head_count(layer):
    return layer.n_head


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.n_head, self.head_dim = num_heads, d_model // num_heads
        self.scale = self.head_dim ** -0.5                 # read by scaled_dot_product_attention
        self.W_q, self.W_k = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.W_v, self.W_o = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def scaled_dot_product_attention(self, Q, K, V, mask=None):
        attn_scores = Q @ K.transpose(-2, -1) * self.scale
        if mask is not None:
            attn_scores = attn_scores.masked_fill(mask == 0, -1e9)
        attn_probs = attn_scores.softmax(dim=-1)
        output = attn_probs @ V
        return output

    def split_heads(self, x):
        b, l, d = x.shape
        return x.view(b, l, head_count(self), d // self.n_head).transpose(1, 2)

    def combine_heads(self, x):
        b, h, l, d = x.shape
        return x.transpose(1, 2).reshape(b, l, h * d)

    def forward(self, Q, K, V, mask=None):
        q, k, v = (self.split_heads(w(t)) for w, t in ((self.W_q, Q), (self.W_k, K), (self.W_v, V)))
        return self.W_o(self.combine_heads(self.scaled_dot_product_attention(q, k, v, mask=mask)))


class Broken(MultiHeadAttention):
    def __init__(self, d_model, num_heads):
        raise RuntimeError("no")


def calls_with_keywords(fn, x):
    return fn(x, scale=3.0)
'''


def kernel_of(src=LAYER, name="<cell-iso>"):
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns: dict = {}
    exec(compile(src, name, "exec"), ns)
    return in_process(ns, [src])


def test_a_grader_function_takes_keyword_arguments_from_the_students_code():
    """Does a stand-in the student's code calls with a keyword (as the API allows: mask=mask) get it?"""
    k = kernel_of()
    fn = k.lookup({"calls_with_keywords"})["calls_with_keywords"]
    assert fn(lambda x, scale=1.0: x * scale, torch.ones(2)).tolist() == [3.0, 3.0]


def test_a_part_runs_on_the_students_own_instance_and_a_bare_one_only_when_init_fails():
    """Does own_instance run the student's __init__ (its self.scale exists), and fall back to the API's attributes?"""
    k = kernel_of()
    found = k.lookup({"MultiHeadAttention", "Broken"})
    m = hw9.own_instance(k, found["MultiHeadAttention"], 8, 2, dtype=torch.float64)
    assert k.get(m, "scale", "n_head") == (0.5, 2)
    Q = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    out = m.scaled_dot_product_attention(Q, Q, Q)
    assert torch.allclose(out, hw9.sdpa_ref(Q, Q, Q))
    bare = hw9.own_instance(k, found["Broken"], 8, 2)
    assert k.get(bare, "d_model", "num_heads", "d_k") == (8, 2, 4)


def test_a_failure_outside_the_parts_own_line_means_the_part_is_graded_whole():
    """Is an error of the student's code in an isolated run NotIsolable (so the whole layer decides), a blank not?"""
    k = kernel_of(LAYER.replace("return layer.n_head", "return layer.heads"))
    cls = k.lookup({"MultiHeadAttention"})["MultiHeadAttention"]
    m = hw9.own_instance(k, cls, 8, 2)
    with pytest.raises(hw9.NotIsolable, match="AttributeError"):
        hw9.isolated_call("(g) split_heads", m.split_heads, torch.randn(1, 3, 8))
    k = kernel_of(LAYER.replace("return layer.n_head", "return _____  # (g)"))
    m = hw9.own_instance(k, k.lookup({"MultiHeadAttention"})["MultiHeadAttention"], 8, 2)
    with pytest.raises(AssertionError, match=r"\(g\) is still a blank") as err:
        hw9.isolated_call("(g) split_heads", m.split_heads, torch.randn(1, 3, 8))
    assert not isinstance(err.value, hw9.NotIsolable)


def test_a_right_layer_that_fails_a_check_alone_keeps_the_part():
    """Does alone_or_whole give (g) to a right layer whose forward runs split_heads, and refuse a wrong one?"""
    k = kernel_of()
    cls = k.lookup({"MultiHeadAttention"})["MultiHeadAttention"]

    def fails():
        raise AssertionError("(g) split_heads: wrong values")
    hw9.alone_or_whole("(g) split_heads", k, cls, fails)   # no raise: the whole layer is right and runs it
    wrong = kernel_of(LAYER.replace("* self.scale", "* 1.0"))
    with pytest.raises(AssertionError, match="wrong values"):
        hw9.alone_or_whole("(g) split_heads", wrong, wrong.lookup({"MultiHeadAttention"})["MultiHeadAttention"], fails)

    def blank():
        raise AssertionError("(g) is still a blank `_____`: fill it in")
    with pytest.raises(AssertionError, match="blank"):
        hw9.alone_or_whole("(g) split_heads", k, cls, blank)


REGION = hidden.GRADER_LINE + '''
_g = torch.Generator().manual_seed(0)
_x = torch.randn(2, 5, 8, generator=_g, dtype=torch.float64)
_w = [torch.randn(8, 8, generator=_g, dtype=torch.float64) if i % 2 == 0 else torch.randn(8, generator=_g, dtype=torch.float64)
      for i in range(8)]
_right = mha_variants(_x, _x, None, _w, 2)
_got = dict((s, v) for s, v in _right)["the scores are QKᵀ without the 1/√d_k scaling"]
_want = _got + 1
assert_layer(_got, _want, part="whole layer", what="output", x=_x, kv=_x, mask=None, weights=_w, heads=2)
'''


@pytest.mark.parametrize("on", [True, False])
def test_a_wrong_output_is_told_its_likely_mistake_unless_the_course_turns_diagnoses_off(on, tmp_path):
    """Does a whole layer without 1/sqrt(d_k) get "likely: ... without the 1/√d_k scaling" only when diagnoses are on?"""
    (tmp_path / "attention_checks.py").write_text((SOURCE / "attention_checks.py").read_text())
    _, error = hidden.run(REGION, kernel_of(), tmp_path, {"diagnoses": on}, grader=GRADER)
    assert error is not None and error["ename"] == "AssertionError" and "wrong values" in error["evalue"]
    assert ("likely: the scores are QKᵀ without the 1/√d_k scaling" in error["evalue"]) is on


def test_each_classic_variant_is_recognised_and_a_right_output_is_not():
    """Is every wrong variant named by its own sentence, and a right layer's output by none?"""
    g = torch.Generator().manual_seed(1)
    x, kv = torch.randn(2, 5, 12, generator=g, dtype=torch.float64), torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    w = [torch.randn(12, 12, generator=g, dtype=torch.float64) if i % 2 == 0 else torch.randn(12, generator=g, dtype=torch.float64)
         for i in range(8)]
    mask = torch.rand(5, 7, generator=g) > 0.3
    mask[:, 0] = True
    variants = hw9.mha_variants(x, kv, mask, w, 3)
    for sentence, value in variants:
        assert hw9.likely_mistake(value, variants) == f" (likely: {sentence})"
    import attention_checks
    assert attention_checks.likely_mistake(attention_checks._mha_variant(x, kv, mask, w, 3), variants) == ""
