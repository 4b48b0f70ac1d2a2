"""Fixture submissions for q12_scaled_dot_product (HW9 Q1: scaled dot product, Q2: argmax attention).

Test cells and points: q1a_test 2, q1b_test 2 (Var = d), q1b_general_test 1, q1c_test 1, q1_mc_test 2,
q2a_hand_test 2, q2_argmax_test 2, q2_softmax_test 2, q2_grad_test 2 (16 autograded points; 8 more are graded by hand).
"""
from fixturelib import Fixture

NB = "q12_scaled_dot_product"

FIXTURES = [
    Fixture("q12-solution", NB, why="the full solution scores full marks on every test cell"),
    Fixture("q12-release", NB, default="release", why="the untouched release scores 0 on every test cell"),

    # ---- Q1 ------------------------------------------------------------------------------------
    Fixture("q12-dmu2", NB,
            answers={"q1a_code": "return mu.numel() * float(mu.mean()) ** 2"},
            expected={"q1a_test": 0}, messages={"q1a_test": "unequal components"},
            why="E[q.k] = d*mu^2 (scalar mean) passes the visible check, fails for a mu with unequal components"),
    Fixture("q12-mean-plus-sigma", NB,
            answers={"q1a_code": "return float((mu * mu).sum()) + mu.numel() * sigma ** 2"},
            expected={"q1a_test": 0}, messages={"q1a_test": "for mu = 0 has the wrong value"},
            why="E[q.k] confused with E[|q|^2]"),
    Fixture("q12-var-is-d", NB,
            answers={"q1b_code": "return float(mu.numel())"},
            expected={"q1b_general_test": 0}, messages={"q1b_general_test": "when sigma != 1"},
            why="Var(q.k) = d whatever sigma and mu are: the homework's case (2 points) right, the general form wrong"),
    Fixture("q12-var-no-mean-term", NB,
            answers={"q1b_code": "return mu.numel() * sigma ** 4"},
            expected={"q1b_general_test": 0}, messages={"q1b_general_test": "for a nonzero mean vector"},
            why="Var(q.k) = d*sigma^4 forgets the 2 sigma^2 |mu|^2 term"),
    Fixture("q12-s-is-d", NB,
            answers={"q1c_code": "return float(d)"},
            expected={"q1c_test": 0}, messages={"q1c_test": "Q1(c) scaling_factor: wrong value"},
            why="s = d instead of sqrt(d)"),
    Fixture("q12-s-float32-tensor", NB,
            answers={"q1c_code": "return torch.sqrt(torch.tensor(d, dtype=torch.float32))"},
            why="a 0-d float32 tensor holding sqrt(d) is a right answer written another way"),
    Fixture("q12-mc-same-sample", NB,
            answers={"q1_mc_code": """
                d = mu.shape[0]
                q = mu + sigma * torch.randn(n_samples, d, generator=generator, dtype=mu.dtype, device=mu.device)
                k = q
                x = (q * k).sum(dim=1)
                return float(x.mean()), float(x.var())
            """},
            expected={"q1_mc_test": 0}, messages={"q1_mc_test": "standard errors away"},
            why="Monte Carlo that uses one sample for both q and k estimates E|q|^2, not E[q.k]"),
    Fixture("q12-mc-global-rng", NB,
            answers={"q1_mc_code": """
                d = mu.shape[0]
                q = mu + sigma * torch.randn(n_samples, d, dtype=mu.dtype, device=mu.device)
                k = mu + sigma * torch.randn(n_samples, d, dtype=mu.dtype, device=mu.device)
                x = (q * k).sum(dim=1)
                return float(x.mean()), float(x.var())
            """},
            expected={"q1_mc_test": 0}, messages={"q1_mc_test": "generator=generator"},
            why="Monte Carlo that ignores the generator is not reproducible"),
    Fixture("q12-mc-closed-form", NB,
            answers={"q1_mc_code": """
                m2 = float((mu.double() ** 2).sum())
                torch.randn(1, generator=generator, dtype=mu.dtype, device=mu.device)
                return m2, mu.numel() * sigma ** 4 + 2 * sigma ** 2 * m2
            """},
            expected={"q1_mc_test": 0}, messages={"q1_mc_test": "different seeds gave identical estimates"},
            why="returning the exact formulas instead of simulating fails the seed-variation check"),
    Fixture("q12-mc-loop-biased-var", NB,
            answers={"q1_mc_code": """
                d = mu.shape[0]
                q = torch.randn(n_samples, d, generator=generator, dtype=mu.dtype, device=mu.device) * sigma + mu
                k = torch.randn(n_samples, d, generator=generator, dtype=mu.dtype, device=mu.device) * sigma + mu
                x = torch.einsum("nd,nd->n", q, k)
                m = x.mean()
                return m, ((x - m) ** 2).mean()
            """},
            why="einsum, the 1/n variance and 0-d tensors instead of floats are right answers written another way"),

    # ---- Q2 ------------------------------------------------------------------------------------
    Fixture("q12-argmax-returns-key", NB,
            answers={"q2_argmax_code": "return K[torch.argmax(K @ q)]"},
            expected={"q2_argmax_test": 0}, messages={"q2_argmax_test": "Q2(a) argmax_attention"},
            why="argmax returns the best key instead of its value; the gradient part is unaffected"),
    Fixture("q12-argmax-last-tie", NB,
            answers={"q2_argmax_code": """
                scores = K @ q
                best = scores.max()
                return V[torch.nonzero(scores == best)[-1, 0]]
            """},
            expected={"q2_argmax_test": 0}, messages={"q2_argmax_test": "FIRST best key"},
            why="on ties the last best key wins instead of the first"),
    Fixture("q12-argmax-onehot", NB,
            answers={"q2_argmax_code": """
                weights = torch.nn.functional.one_hot(torch.argmax(torch.einsum("nd,d->n", K, q)), K.shape[0])
                return weights.to(V.dtype) @ V
            """},
            why="argmax as a one-hot weight vector times V is a right answer written another way"),
    Fixture("q12-argmax-hardcoded", NB,
            answers={"q2_argmax_code": "return torch.tensor([1., 4., 3.])"},
            expected={"q2_argmax_test": 0, "q2_grad_test": 0},
            messages={"q2_argmax_test": "not the value of the best-scoring key", "q2_grad_test": "not connected to K or V"},
            why="hard-coding the visible worked example passes the visible check and fails the hidden ones"),
    Fixture("q12-softmax-wrong-axis", NB,
            answers={"q2_softmax_code": """
                if scale is None:
                    scale = 1.0
                scores = q.unsqueeze(0) @ K.T * scale            # [1, n]
                weights = torch.softmax(scores, dim=0)           # over the size-1 axis: all ones
                return (weights @ V).squeeze(0)
            """},
            expected={"q2_softmax_test": 0, "q2_grad_test": 0},
            messages={"q2_softmax_test": "sum to 1", "q2_grad_test": "exactly zero"},
            why="softmax over dim=0 of a [1, n] score matrix gives weights 1 (sum of V); its output then does "
                "not depend on q, so the gradient part fails too"),
    Fixture("q12-softmax-scale-divides", NB,
            answers={"q2_softmax_code": """
                if scale is None:
                    scale = 1.0
                return torch.softmax((K @ q) / scale, dim=-1) @ V
            """},
            expected={"q2_softmax_test": 0}, messages={"q2_softmax_test": "with a given scale"},
            why="dividing by scale instead of multiplying is right only for scale None or 1"),
    Fixture("q12-softmax-float32", NB,
            answers={"q2_softmax_code": """
                s = 1.0 if scale is None else scale
                return torch.softmax(K.float() @ q.float() * s, dim=0) @ V.float()
            """},
            expected={"q2_softmax_test": 0}, messages={"q2_softmax_test": "dtype"},
            why="casting to float32 loses the float64 input's dtype"),
    Fixture("q12-softmax-manual", NB,
            answers={"q2_softmax_code": """
                s = (q * K).sum(-1) * (1 if scale is None else scale)
                e = torch.exp(s - s.max())
                return (e[:, None] * V).sum(0) / e.sum()
            """},
            why="softmax written by hand with broadcasting is a right answer written another way"),
    Fixture("q12-softmax-detached", NB,
            answers={"q2_softmax_code": """
                s = 1.0 if scale is None else scale
                return torch.softmax((K @ q).detach() * s, dim=0) @ V
            """},
            expected={"q2_grad_test": 0}, messages={"q2_grad_test": "no gradient path to q"},
            why="right values but scores detached: softmax passes no gradient to q"),
]

# Right answers written another way (issue 6: a fair grader fails no right answer).
FIXTURES += [
    Fixture("q12-right-loop-float64", NB, answers={
        "q1c_code": "return float(torch.tensor(float(d), dtype=torch.float64).sqrt())",
        "q2_argmax_code": """
            scores = K @ q
            best = 0
            for i in range(1, K.shape[0]):
                if scores[i] > scores[best]:
                    best = i
            return V[best]
        """},
        why="a float64 square root and an argmax written as a Python loop are right answers"),
]

# Issue 10: Q1(b)'s homework case apart from the general form; Q2(a) by hand.
FIXTURES += [
    Fixture("q12-var-wrong-at-d", NB, answers={"q1b_code": "return float(mu.numel()) ** 2"},
            expected={"q1b_test": 0, "q1b_general_test": 0}, messages={"q1b_test": "mu = 0, sigma = 1"},
            why="Var(q.k) = d^2 loses both the homework's case and the general form"),
    Fixture("q12-q2a-wrong-scores", NB, answers={"q2a": "q2a_scores = [3, 11, 5, 1]\nq2a_output = [1, 4, 3]"},
            expected={"q2a_hand_test": 0}, messages={"q2a_hand_test": "key(s) [4]"},
            why="a wrong hand-computed score loses Q2(a) by hand only"),
    Fixture("q12-q2a-wrong-output", NB, answers={"q2a": "q2a_scores = [3, 11, 5, 2]\nq2a_output = [0, 3, 4]"},
            expected={"q2a_hand_test": 0}, messages={"q2a_hand_test": "not the value of the best-scoring key"},
            why="the best key itself instead of its value loses Q2(a) by hand only"),
    Fixture("q12-q2a-tensors", NB,
            answers={"q2a": "q2a_scores = torch.tensor([3., 11., 5., 2.])\nq2a_output = (1.0, 4.0, 3.0)"},
            why="the hand computation as a tensor and a tuple of floats is a right answer written another way"),
    Fixture("q12-q2a-undefined", NB, answers={"q2a": "pass"},
            expected={"q2a_hand_test": 0}, messages={"q2a_hand_test": "`q2a_scores` is not defined"},
            why="an undefined hand answer gets a friendly message"),
]
