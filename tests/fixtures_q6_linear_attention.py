"""Fixture submissions for q6_linear_attention (HW9 Q6, kernelized linear attention).

Points per test cell: (a) choice 2; (b)(i) poly_kernel 2, (b)(ii) poly_feature_map 4;
kernel_attention_quadratic 3, softmax_attention_full 2, kernel_attention_linear: values 4,
counts 3, time 2; (c) softmax_time 2, softmax_memory 2; (d) kernel_time 2, kernel_memory 2
(autograded 30). The written justification of (a) (2 pts) is graded by hand.
"""
from fixturelib import Fixture

NB = "q6_linear_attention"

# (b) without the "+1": the homogeneous kernel (q.k)^2 and its feature map (x_i^2, sqrt(2) x_i x_j).
KERNEL_NO_PLUS_ONE = "return ((q * k).sum(dim=-1)) ** 2"
FEATURES_NO_PLUS_ONE = '''
D = x.shape[-1]
i, j = torch.triu_indices(D, D, offset=1, device=x.device)
return torch.cat([x * x, math.sqrt(2) * x[..., i] * x[..., j]], dim=-1)
'''

# (b)(ii) vec(x x^T): D^2 entries, the feature map of (q.k)^2 with every cross term twice.
FEATURES_VEC_OUTER = "return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)"

# Linear attention with the right values that builds the N x N matrix phi(Q) phi(K)^T.
LINEAR_BUILDS_NXN = '''
phi_Q, phi_K = feature_map(Q), feature_map(K)
A = phi_Q @ phi_K.transpose(-2, -1)          # [..., N, N]
return (A @ V) / A.sum(dim=-1, keepdim=True)
'''

# The same N x N matrix hidden in a broadcast-and-sum: no matrix product, so FLOP counters see nothing.
LINEAR_BROADCAST_SUM = '''
phi_Q, phi_K = feature_map(Q), feature_map(K)
A = (phi_Q.unsqueeze(-2) * phi_K.unsqueeze(-3)).sum(dim=-1)   # [..., N, N] without a matmul
return torch.einsum("...ij,...jm->...im", A, V) / A.sum(dim=-1, keepdim=True)
'''

# Linear in N, but the normaliser also sums over the queries.
LINEAR_WRONG_NORMALISER = '''
phi_Q, phi_K = feature_map(Q), feature_map(K)
S = phi_K.transpose(-2, -1) @ V
z = phi_K.sum(dim=-2)
return (phi_Q @ S) / (phi_Q @ z.unsqueeze(-1)).sum(dim=-2, keepdim=True)
'''

# Right answers written another way.
KERNEL_EINSUM = 'return (torch.einsum("...d,...d->...", q, k) + 1).pow(2)'
FEATURES_OTHER_ORDER = '''
D = x.shape[-1]
outer = x.unsqueeze(-1) * x.unsqueeze(-2)                        # [..., D, D]
rows, cols = torch.triu_indices(D, D, device=x.device)            # i <= j, in row order
scale = torch.ones(rows.shape, dtype=x.dtype, device=x.device)
scale[rows != cols] = 2 ** 0.5
quad = outer[..., rows, cols] * scale
return torch.cat([quad, x * 2 ** 0.5, torch.ones_like(x[..., :1])], dim=-1)
'''
QUADRATIC_LOOP = '''
rows = []
for i in range(Q.shape[-2]):
    w = sim(Q[..., i:i + 1, :], K)                                   # [..., N]
    rows.append((w.unsqueeze(-1) * V).sum(dim=-2) / w.sum(dim=-1, keepdim=True))
return torch.stack(rows, dim=-2)
'''
SOFTMAX_SDPA = "return F.scaled_dot_product_attention(Q, K, V)"
LINEAR_EINSUM = '''
pq, pk = feature_map(Q), feature_map(K)
kv = torch.einsum("...nc,...nm->...cm", pk, V)
num = torch.einsum("...nc,...cm->...nm", pq, kv)
den = torch.einsum("...nc,...c->...n", pq, pk.sum(dim=-2))
return num / den[..., None]
'''

FIXTURES = [
    Fixture(
        "q6-solution", NB, default="solution",
        why="the instructor's solution scores full marks",
    ),
    Fixture(
        "q6-release", NB, default="stub",
        why="the untouched release scores 0 on every test",
    ),
    Fixture(
        "q6-dropped-plus-one", NB, answers={"q6_b_kernel": KERNEL_NO_PLUS_ONE, "q6_b_features": FEATURES_NO_PLUS_ONE},
        expected={"q6_b_kernel_test": 0, "q6_b_features_test": 0},
        messages={"q6_b_kernel_test": "dropped the +1", "q6_b_features_test": "dropped the +1"},
        why="the homogeneous kernel (q.k)^2 and its feature map lose (b) only, with a message naming the +1",
    ),
    Fixture(
        "q6-vec-outer", NB, answers={"q6_b_features": FEATURES_VEC_OUTER},
        expected={"q6_b_features_test": 0},
        messages={"q6_b_features_test": "looks like vec(xxᵀ)"},
        why="phi = vec(x x^T) (D^2 entries) fails (b)(ii) and is named",
    ),
    Fixture(
        "q6-linear-builds-nxn", NB, answers={"q6_linear": LINEAR_BUILDS_NXN},
        expected={"q6_linear_counts_test": 0, "q6_linear_timing_test": 0},
        messages={"q6_linear_counts_test": "quadratic, not linear in N",
                  "q6_linear_timing_test": "quadratic, not linear in N"},
        why="a 'linear' attention that builds phi(Q) phi(K)^T has the right values but fails the counts and the clock",
    ),
    Fixture(
        "q6-linear-broadcast-sum", NB, answers={"q6_linear": LINEAR_BROADCAST_SUM},
        expected={"q6_linear_counts_test": 0, "q6_linear_timing_test": 0},
        messages={"q6_linear_counts_test": "largest intermediate tensor grows like N^2.00"},
        why="an N x N matrix built by broadcast-and-sum (0 FLOPs for the counter) is still caught",
    ),
    Fixture(
        "q6-wrong-normaliser", NB, answers={"q6_linear": LINEAR_WRONG_NORMALISER},
        expected={"q6_linear_test": 0},
        messages={"q6_linear_test": "your normaliser (the denominator) does not match"},
        why="a linear-time attention with the wrong normaliser loses only the values test",
    ),
    Fixture(
        "q6-complexity-c-equals-d", NB,
        answers={"d_time": "return N * D * M", "d_memory": "return N * D + N * M + D * M"},
        expected={"q6_kernel_time_test": 0, "q6_kernel_memory_test": 0},
        messages={"q6_kernel_time_test": "the growth in D does not match",
                  "q6_kernel_memory_test": "the growth in D does not match"},
        why="treating C as D (not D^2) in (d) loses both (d) cells",
    ),
    Fixture(
        "q6-complexity-other-forms", NB,
        answers={"c_time": "return N * N * max(D, M) + N * D", "c_memory": "return N ** 2",
                 "d_time": "return N * ((D + 1) * (D + 2) // 2) * M + N * D ** 2",
                 "d_memory": "return (N + M) * D ** 2"},
        why="other correct big-O forms (max, lower-order terms, C written out, factored) score full marks",
    ),
    Fixture(
        "q6-other-ways", NB,
        answers={"q6_b_kernel": KERNEL_EINSUM, "q6_b_features": FEATURES_OTHER_ORDER,
                 "q6_quadratic": QUADRATIC_LOOP, "q6_softmax": SOFTMAX_SDPA, "q6_linear": LINEAR_EINSUM},
        why="right answers written another way (einsum, another order of phi, a loop, F.sdpa) score full marks",
    ),
]


# Issue 10: one tolerance rule; (b)(i) asked, not given; (a) with a friendly message.
FEATURES_FLOAT32_CONSTANT = '''
D = x.shape[-1]
i, j = torch.triu_indices(D, D, offset=1, device=x.device)
r2 = torch.tensor(2.0).sqrt()            # a float32 constant (0-dim: x keeps its dtype)
return torch.cat([torch.ones_like(x[..., :1]), r2 * x, x * x, r2 * x[..., i] * x[..., j]], dim=-1)
'''
FIXTURES += [
    Fixture("q6-float32-constant", NB, answers={"q6_b_features": FEATURES_FLOAT32_CONSTANT},
            why="a right phi with sqrt(2) computed in float32 (relative error 3e-8) keeps full marks on float64 inputs"),
    Fixture("q6-kernel-no-plus-one", NB, answers={"q6_b_kernel": KERNEL_NO_PLUS_ONE},
            expected={"q6_b_kernel_test": 0}, messages={"q6_b_kernel_test": "dropped the +1"},
            why="(b)(i) without the +1 loses (b)(i) only"),
    Fixture("q6-kernel-plus-one-outside", NB, answers={"q6_b_kernel": "return ((q * k).sum(dim=-1)) ** 2 + 1"},
            expected={"q6_b_kernel_test": 0}, messages={"q6_b_kernel_test": "the +1 belongs inside the square"},
            why="(q.k)^2 + 1 loses (b)(i) only"),
    Fixture("q6-a-undefined", NB, answers={"q6_a_choice": "pass"},
            expected={"q6_a_choice_test": 0}, messages={"q6_a_choice_test": "Part (a): `answer_a` is not defined"},
            why="an undefined answer_a gets a friendly message, not a bare NameError"),
    Fixture("q6-a-nonnegative", NB, answers={"q6_a_choice": "answer_a = 2"},
            expected={"q6_a_choice_test": 0}, messages={"q6_a_choice_test": "not the right option"},
            why="the plausible distractor sim >= 0 loses (a)"),
    Fixture("q6-kernel-raises", NB, answers={"q6_b_kernel": "return (q @ k.T + 1) ** 2"},
            expected={"q6_b_kernel_test": 0}, messages={"q6_b_kernel_test": "(b)(i) poly_kernel"},
            why="a poly_kernel that raises on batched inputs costs (b)(i) only, with the part named"),
]
