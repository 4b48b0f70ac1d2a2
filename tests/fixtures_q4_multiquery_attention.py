"""Fixture submissions for q4_multiquery_attention (HW9 Q4, multi-query attention).

Points per test cell: A 3, B 3, C 4, D 4, E 4, f 4, g 4 (multiple choice, 26);
MQA: qkv 3, cache 3, output 4, shared 2, cache_size 2, decode 3 (17); MHA: cache 2, output 3,
decode 2 (7). The written answer (h, 2 pts) is graded by hand.
"""
from fixturelib import Fixture

NB = "q4_multiquery_attention"

# MQA that keeps a per-head cache [b, h, n+1, k] (and accepts its own 4-D cache back):
# right outputs, a cache h times too big.
MQA_PER_HEAD_CACHE = '''
q = torch.einsum("bd,hdq->bhq", x, W_q)
h = W_q.shape[0]
k = torch.einsum("bd,dk->bk", x, W_k)
v = torch.einsum("bd,dv->bv", x, W_v)
K_heads = prev_K if prev_K.dim() == 4 else prev_K.unsqueeze(1).expand(-1, h, -1, -1)
V_heads = prev_V if prev_V.dim() == 4 else prev_V.unsqueeze(1).expand(-1, h, -1, -1)
K = torch.concat([K_heads, k[:, None, None, :].expand(-1, h, 1, -1)], dim=2)
V = torch.concat([V_heads, v[:, None, None, :].expand(-1, h, 1, -1)], dim=2)
logits = torch.einsum("bhk,bhnk->bhn", q, K)
weights = torch.softmax(logits, dim=-1)
o = torch.einsum("bhn,bhnv->bhv", weights, V)
y = torch.einsum("bhv,hvd->bd", o, W_o)
return y, K, V
'''

# Computes the new key but forgets to append it: new_K = prev_K (the value is appended).
MQA_NO_APPEND = '''
q = torch.einsum("bd,hdq->bhq", x, W_q)
k = torch.einsum("bd,dk->bk", x, W_k)
K = prev_K
V = torch.concat([prev_V, torch.einsum("bd,dv->bv", x, W_v).unsqueeze(1)], dim=1)
logits = torch.einsum("bhk,bnk->bhn", q, K)
weights = torch.softmax(logits, dim=-1)
o = torch.einsum("bhn,bnv->bhv", weights, V)
y = torch.einsum("bhv,hvd->bd", o, W_o)
return y, K, V
'''

# Softmax over the heads instead of over the n+1 cached positions.
MQA_SOFTMAX_AXIS = '''
q = torch.einsum("bd,hdq->bhq", x, W_q)
K = torch.concat([prev_K, torch.einsum("bd,dk->bk", x, W_k).unsqueeze(1)], dim=1)
V = torch.concat([prev_V, torch.einsum("bd,dv->bv", x, W_v).unsqueeze(1)], dim=1)
logits = torch.einsum("bhk,bnk->bhn", q, K)
weights = torch.softmax(logits, dim=1)
o = torch.einsum("bhn,bnv->bhv", weights, V)
y = torch.einsum("bhv,hvd->bd", o, W_o)
return y, K, V
'''

# Right answers written another way: per-head loop with matmuls, q kept as [h, b, k].
MQA_LOOP = '''
qs = x @ W_q                                  # [h, b, k] by broadcasting
K = torch.cat((prev_K, (x @ W_k)[:, None]), 1)
V = torch.cat((prev_V, (x @ W_v)[:, None]), 1)
y = 0
for i in range(W_q.shape[0]):
    w = torch.softmax(torch.bmm(K, qs[i].unsqueeze(-1)).squeeze(-1), dim=-1)
    y = y + torch.bmm(w.unsqueeze(1), V).squeeze(1) @ W_o[i]
return y, K, V
'''

MHA_LOOP = '''
ys, Ks, Vs = [], [], []
for i in range(W_q.shape[0]):
    K = torch.cat((prev_K[:, i], (x @ W_k[i]).unsqueeze(1)), 1)
    V = torch.cat((prev_V[:, i], (x @ W_v[i]).unsqueeze(1)), 1)
    w = ((K @ (x @ W_q[i]).unsqueeze(-1)).squeeze(-1)).softmax(-1)
    ys.append((w.unsqueeze(1) @ V).squeeze(1) @ W_o[i])
    Ks.append(K)
    Vs.append(V)
return sum(ys), torch.stack(Ks, 1), torch.stack(Vs, 1)
'''

MC_CELLS = {  # (f), (g): mqa_step_compute / mqa_step_memory, graded by growth exponents
   "A": 3, "B": 3, "C": 4, "D": 4, "E": 4, "f": 4, "g": 4}
MQA_CELLS = {"mqa_qkv": 3, "mqa_cache": 3, "mqa_output": 4, "mqa_shared": 2, "mqa_cache_size": 2, "mqa_decode": 3}

FIXTURES = [
    Fixture("q4-solution", NB, why="the instructor's solution scores full marks"),
    Fixture("q4-release", NB, default="release",
            messages={"q4_test_A": "`answer_A` is not defined", "q4_test_f": "is not defined", "q4_test_mqa_output": "name '_____' is not defined",
                      "q4_test_mha_decode": "name '_____' is not defined"},
            why="the untouched release scores 0 everywhere"),
    Fixture(
        "q4-wrong-choices", NB,
        answers={"A": "answer_A = 2", "B": "answer_B = 1", "C": "answer_C = 1", "D": "answer_D = 2",
                 "E": "answer_E = 1", "f": "return b * d ** 2 + b * n * d / h", "g": "return d ** 2 + b * d + b * n * d"},
        expected={f"q4_test_{p}": 0 for p in MC_CELLS},
        messages={**{f"q4_test_{p}": "is not the correct" for p in "ABCDE"},
                  "q4_test_f": "the growth in h does not match", "q4_test_g": "the growth in h does not match"},
        why="a wrong but well-formed answer in every part of Part 1 costs exactly that part "
            "((f) with the attention divided by h, (g) without the cache divided by h)",
    ),
    Fixture(
        "q4-bad-format", NB,
        answers={"A": 'answer_A = "1"', "f": 'return "b*d**2 + b*n*d"', "g": "return 0 * d"},
        expected={"q4_test_A": 0, "q4_test_f": 0, "q4_test_g": 0},
        messages={"q4_test_A": "must be the number of an option", "q4_test_f": "should return a number",
                  "q4_test_g": "should be a positive"},
        why="the visible format check rejects a string option, a string expression and a zero cost",
    ),
    Fixture(
        "q4-mqa-per-head-cache", NB, answers={"mqa": MQA_PER_HEAD_CACHE},
        expected={"q4_test_mqa_cache": 0, "q4_test_mqa_cache_size": 0},
        messages={"q4_test_mqa_cache": "new_K has the wrong shape", "q4_test_mqa_cache_size": "1/h of it"},
        why="an MQA that keeps a per-head [b, h, n, k] cache loses only the cache points",
    ),
    Fixture(
        "q4-mqa-no-append", NB, answers={"mqa": MQA_NO_APPEND},
        expected={f"q4_test_{p}": 0 for p in MQA_CELLS if p != "mqa_qkv"},
        messages={"q4_test_mqa_cache": "raised RuntimeError", "q4_test_mqa_decode": "raised RuntimeError"},
        why="forgetting to append the new key (new_K = prev_K) fails every MQA test except the projections",
    ),
    Fixture(
        "q4-mqa-softmax-axis", NB, answers={"mqa": MQA_SOFTMAX_AXIS},
        expected={"q4_test_mqa_output": 0, "q4_test_mqa_shared": 0, "q4_test_mqa_decode": 0},
        messages={"q4_test_mqa_output": "y (b=", "q4_test_mqa_shared": "has wrong values",
                  "q4_test_mqa_decode": "compared with full causal attention"},
        why="softmax over the heads instead of the positions: right cache, wrong outputs",
    ),
    Fixture(
        "q4-mha-stub", NB, answers={"mha": "# YOUR CODE HERE\nraise NotImplementedError()"},
        expected={"q4_test_mha_cache": 0, "q4_test_mha_output": 0, "q4_test_mha_decode": 0},
        messages={"q4_test_mha_cache": "NotImplementedError"},
        why="an unfinished multi-head baseline costs no multi-query points",
    ),
    Fixture(
        "q4-loops", NB, answers={"mqa": MQA_LOOP, "mha": MHA_LOOP},
        why="right answers written with loops and matmuls (q kept as [h, b, k]) score full marks",
    ),
]

# Right answers written another way (issue 6): broadcast matmuls instead of einsum.
MQA_MATMUL = '''
q = (x[:, None, None, :] @ W_q[None]).squeeze(-2)          # [b, h, k]
K = torch.cat([prev_K, (x @ W_k)[:, None]], dim=1)          # [b, n+1, k]
V = torch.cat([prev_V, (x @ W_v)[:, None]], dim=1)          # [b, n+1, v]
weights = (q @ K.transpose(1, 2)).softmax(-1)               # [b, h, n+1]
y = ((weights @ V)[:, :, None, :] @ W_o[None]).squeeze(-2).sum(1)
return y, K, V
'''
FIXTURES.append(Fixture("q4-mqa-matmul", NB, answers={"mqa": MQA_MATMUL},
                        why="multi-query attention with broadcast matmuls instead of einsum scores full marks"))

# Issue 10: (f), (g) are expressions graded by growth exponents (constants and lower-order terms are free).
FIXTURES += [
    Fixture("q4-memory-no-h", NB, answers={"g": "return d ** 2 + b * d + b * n * d"},
            expected={"q4_test_g": 0}, messages={"q4_test_g": "the growth in h does not match"},
            why="(g) without the cache shrinking by h (multi-head's memory) loses (g) only"),
    Fixture("q4-compute-per-head", NB, answers={"f": "return b * d ** 2 + b * n * d // h"},
            expected={"q4_test_f": 0}, messages={"q4_test_f": "the growth in h does not match"},
            why="(f) with the attention arithmetic divided by h loses (f) only"),
    Fixture("q4-compute-projections-per-head", NB, answers={"f": "return b * d ** 2 / h + b * n * d"},
            expected={"q4_test_f": 0}, messages={"q4_test_f": "the growth in h does not match"},
            why="(f) with the projections divided by h loses (f) only"),
    Fixture("q4-complexity-other-forms", NB,
            answers={"f": "return 3 * b * d * d + 2 * b * n * d + b * d + n",
                     "g": "k = d // h\nreturn 2 * d * d + b * d + b * n * k + n + h"},
            why="constants, lower-order terms and k = d/h written out keep full marks in (f) and (g)"),
    Fixture("q4-undefined-answer", NB, answers={"B": "pass"},
            expected={"q4_test_B": 0}, messages={"q4_test_B": "Part (B): `answer_B` is not defined"},
            why="an answer cell that defines nothing gets a friendly message and costs only its part"),
]
