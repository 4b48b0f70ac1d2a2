"""Q4's input helper hands out no answer: the student gives the weight shapes, and the visible checks
try every option's shape (fast tier, no grading)."""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ac():
    spec = importlib.util.spec_from_file_location("attention_checks_q4_test", ROOT / "source" / "hw9" / "attention_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mqa(x, prev_K, prev_V, W_q, W_k, W_v, W_o):
    q = torch.einsum("bd,hdq->bhq", x, W_q)
    K = torch.concat([prev_K, torch.einsum("bd,dk->bk", x, W_k).unsqueeze(1)], dim=1)
    V = torch.concat([prev_V, torch.einsum("bd,dv->bv", x, W_v).unsqueeze(1)], dim=1)
    w = torch.softmax(torch.einsum("bhk,bnk->bhn", q, K), dim=-1)
    return torch.einsum("bhv,hvd->bd", torch.einsum("bhn,bnv->bhv", w, V), W_o), K, V


def test_q4_inputs_has_no_default_weight_shapes(ac):
    """Must the caller name every projection's shape (no W_q or W_k in the answer's shape by default)?"""
    params = inspect.signature(ac.q4_inputs).parameters
    assert all(params[n].default is inspect.Parameter.empty for n in ("W_q", "W_k", "W_v"))
    with pytest.raises(TypeError):
        ac.q4_inputs(2, 3, 12, 3)
    with pytest.raises(AssertionError, match="letters"):
        ac.q4_inputs(2, 3, 12, 3, W_q="[h, d, z]", W_k="[d, k]", W_v="[d, v]")
    shapes = [tuple(t.shape) for t in ac.q4_inputs(2, 3, 12, 3, W_q="[d, q]", W_k="hdk", W_v=("d", "v"))]
    assert shapes == [(2, 12), (2, 3, 4), (2, 3, 4), (12, 4), (3, 12, 4), (12, 4), (3, 4, 12)]


def test_a_visible_check_passes_whatever_the_answers(ac):
    """Does a right step pass the visible check with wrong answers to (A) and (B), and is the check's verdict the
    same for every answer (so that trying answers against it tells nothing)?"""
    def check(*args):
        y, K, V = ac.q4_step(mqa, args, part="MQA")
        ac.check_tensor(y, part="MQA", shape=(2, 12))
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            got = ac.q4_check_any(check, 2, 3, 12, 3, part="MQA", answers={"answer_A": a, "answer_B": b})
            assert got == {"W_q": "[h, d, q]", "W_k": "[d, k]", "W_v": "[d, v]"}


def test_a_step_written_for_wrong_shapes_passes_with_those_shapes(ac):
    """Does a step written for W_q: [d, q] pass the shape check too (the visible check does not single out the right
    shape), and does a step that fails everywhere show the failure for the student's own shapes?"""
    def wrong(x, prev_K, prev_V, W_q, W_k, W_v, W_o):
        q = (x @ W_q).unsqueeze(1).expand(-1, W_o.shape[0], -1)
        K = torch.concat([prev_K, (x @ W_k).unsqueeze(1)], dim=1)
        V = torch.concat([prev_V, (x @ W_v).unsqueeze(1)], dim=1)
        w = torch.softmax(torch.einsum("bhk,bnk->bhn", q, K), dim=-1)
        return torch.einsum("bhv,hvd->bd", torch.einsum("bhn,bnv->bhv", w, V), W_o), K, V

    def check(*args):
        y, K, V = ac.q4_step(wrong, args, part="MQA")
        ac.check_tensor(y, part="MQA", shape=(2, 12))
    assert ac.q4_check_any(check, 2, 3, 12, 3, part="MQA")["W_q"] == "[d, q]"

    def broken(x, prev_K, prev_V, W_q, W_k, W_v, W_o):
        raise ValueError(f"W_q has {W_q.dim()} axes")
    with pytest.raises(AssertionError, match="W_q has 2 axes"):
        ac.q4_check_any(lambda *a: ac.q4_step(broken, a, part="MQA"), 2, 3, 12, 3, part="MQA",
                        answers={"answer_A": 3, "answer_B": 2})
