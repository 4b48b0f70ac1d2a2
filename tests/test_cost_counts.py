"""The Q6 counting test's FLOP count (attention_checks.OpRecorder) against torch's own FLOP counter.

The recorder counts matrix products itself so that counting never imports torch._dynamo (torch's
FlopCounterMode does, over a second of every grading kernel's time); these tests hold it to the
same numbers as FlopCounterMode on products written every way a student might write them."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import ASSIGNMENT, ROOT

sys.path.insert(0, str(ROOT / "source" / ASSIGNMENT))
import attention_checks as ac  # noqa: E402

PROGRAMS = {  # q [n, d], k [m, d], v [m, e]
    "matmul": lambda q, k, v: (q @ k.T) @ v,
    "einsum": lambda q, k, v: torch.einsum("nd,md,me->ne", q, k, v),
    "linear-attention order": lambda q, k, v: q @ (k.T @ v),
    "linear with bias": lambda q, k, v: torch.nn.functional.linear(q, k, torch.ones(k.shape[0])),
    "addmm": lambda q, k, v: torch.addmm(torch.zeros(q.shape[0], k.shape[0]), q, k.T),
    "batched matmul": lambda q, k, v: q.expand(3, -1, -1) @ k.T.expand(3, -1, -1),
    "baddbmm": lambda q, k, v: torch.baddbmm(torch.zeros(2, q.shape[0], k.shape[0]), q.expand(2, -1, -1),
                                             k.T.expand(2, -1, -1)),
    "batched einsum": lambda q, k, v: torch.einsum("bnd,bmd->bnm", q.expand(4, -1, -1), k.expand(4, -1, -1)),
    "vector products (no matrix product)": lambda q, k, v: q[0] @ k[0] + (q * q).sum(),
    "broadcast-and-sum (no matrix product)": lambda q, k, v: (q[:, None, :] * k[None, :, :]).sum(-1),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_recorder_counts_the_flops_torch_counts(name):
    """Does the recorder count exactly the FLOPs of torch's FlopCounterMode, on several sizes?"""
    g = torch.Generator().manual_seed(sorted(PROGRAMS).index(name))
    for n, m, d, e in [(7, 9, 5, 3), (16, 4, 8, 11), (1, 13, 2, 6)]:
        q, k, v = (torch.randn(*s, generator=g) for s in ((n, d), (m, d), (m, e)))
        with FlopCounterMode(display=False) as counter:
            PROGRAMS[name](q, k, v)
        got = ac.count_costs(PROGRAMS[name], (q, k, v))["flops"]
        assert got == counter.get_total_flops(), f"{name} at n={n} m={m} d={d} e={e}: recorder {got}, torch " \
                                                 f"{counter.get_total_flops()}"


def test_counting_does_not_import_torch_dynamo():
    """Does a whole counting check run without importing torch._dynamo (and sympy)?"""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import attention_checks as ac\n"
            "ac.check_linear_cost(lambda Q, K, V: ac.elu_feature_map(Q) @ (ac.elu_feature_map(K).T @ V),\n"
            "                     ac.attention_inputs(4, 4), [64, 128], part='t')\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "source" / ASSIGNMENT)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
