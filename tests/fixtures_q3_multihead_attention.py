"""Q3 fixtures: one submission per behaviour, each with the exact score it must get."""
from fixturelib import Fixture

NB = "q3_multihead_attention"
WL = "q3_whole_layer_check"  # the whole layer as written (2 points): any wrong blank fails it too

FIXTURES = [
    Fixture("q3-solution", NB, why="Does the full solution get full marks?"),
    Fixture("q3-untouched", NB, default="release", why="Does the untouched release score 0?"),
    Fixture("q3-wrong-a", NB, {"a": "self.W_k = nn.Linear(d_model, self.d_k)"},
            expected={"q3a_W_k": 0, WL: 0}, messages={"q3a_W_k": "(a) W_k"},
            why="Does a per-head-width W_k cost only (a)?"),
    Fixture("q3-wrong-b", NB, {"b": "self.W_v = nn.Linear(self.d_k, d_model)"},
            expected={"q3b_W_v": 0, WL: 0}, messages={"q3b_W_v": "(b) W_v"}, why="Does a wrong W_v input cost only (b)?"),
    Fixture("q3-wrong-c", NB, {"c": "self.W_o = nn.Linear(d_model, self.d_k)"},
            expected={"q3c_W_o": 0, WL: 0}, messages={"q3c_W_o": "(c) W_o"}, why="Does a wrong W_o output cost only (c)?"),
    Fixture("q3-wrong-d", NB, {"d": "attn_scores = torch.matmul(K, K.transpose(-2, -1))"},
            expected={"q3d_scores": 0, WL: 0}, messages={"q3d_scores": "(d)"}, why="Does K K^T cost only (d)?"),
    Fixture("q3-wrong-e", NB, {"e": "attn_probs = torch.log_softmax(attn_scores, dim=-1)"},
            expected={"q3e_softmax": 0, WL: 0}, messages={"q3e_softmax": "(e)"}, why="Does log_softmax cost only (e)?"),
    Fixture("q3-wrong-e-axis", NB, {"e": "attn_probs = torch.softmax(attn_scores, dim=-2)"},
            expected={"q3e_softmax": 0, WL: 0}, messages={"q3e_softmax": "normalised over the queries"},
            why="Is softmax over the queries caught, and named, in (e) alone?"),
    Fixture("q3-wrong-f", NB, {"f": "output = torch.matmul(attn_probs, K)"},
            expected={"q3f_weighted_values": 0, WL: 0}, messages={"q3f_weighted_values": "(f)"},
            why="Does weighting the keys instead of the values cost only (f)?"),
    Fixture("q3-wrong-g", NB, {"g": "return x.view(batch_size, seq_length, self.d_k, self.d_k).transpose(1, 2)"},
            expected={"q3g_split_heads": 0, WL: 0}, why="Does a wrong head count in split_heads cost only (g)?"),
    Fixture("q3-wrong-h", NB, {"h": "output = self.W_v(self.combine_heads(attn_output))"},
            expected={"q3h_output_projection": 0, WL: 0}, messages={"q3h_output_projection": "(h) forward"},
            why="Does projecting with W_v instead of W_o cost only (h)?"),
    Fixture("q3-wide-minimal-only", NB,
            {"wide-init": "self.W_o = nn.Linear(2 * d_model, d_model)", "wide-methods": "pass"},
            expected={"q3b_wide_value_test": 0}, messages={"q3b_wide_value_test": "Q3(b) forward raised"},
            why="Does the official one-line change, which does not run, fail Q3(b) and nothing else?"),
    Fixture("q3-right-einsum", NB, {
        "d": "attn_scores = torch.einsum('bhqd,bhkd->bhqk', Q, K)",
        "e": "attn_probs = torch.exp(attn_scores - attn_scores.amax(-1, keepdim=True)); "
             "attn_probs = attn_probs / attn_probs.sum(-1, keepdim=True)",
        "f": "output = torch.einsum('bhqk,bhkv->bhqv', attn_probs, V)",
        "g": "return x.reshape(batch_size, seq_length, self.num_heads, -1).permute(0, 2, 1, 3)",
    }, why="Do right answers written with einsum, a hand-written softmax and permute get full marks?"),
    Fixture("q3-hardcoded-visible", NB, {
        "a": "self.W_k = nn.Linear(d_model, 16)",
        "g": "return x.view(batch_size, seq_length, 3, self.d_k).transpose(1, 2)",
    }, expected={"q3a_W_k": 0, "q3g_split_heads": 0, WL: 0},
        why="Does hard-coding the visible tests' sizes fail the hidden tests?"),
    Fixture("q3-kernel-death", NB, {"g": "import os; os._exit(1)"},
            expected={"q3g_split_heads": 0, WL: 0},
            messages={"q3g_split_heads": "KernelDied"},
            why="Does a split_heads that kills the kernel cost only the parts that call it, with the rest graded?"),
]


def _drop_cell(grade_id):
    def mutate(nb):
        nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != grade_id]
        return nb
    return mutate


def _foreign_kernel(nb):
    nb.metadata["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia 1.9", "language": "julia"}
    return nb


# nbgrader's traps (../shared/NBGRADER_NOTES.md), each closed by the kit.
TRAPS = [
    Fixture("q3-stderr-noise", NB, {"g": """
        import sys, warnings
        print("some library chatter", file=sys.stderr)
        warnings.warn("a harmless warning")
        return x.view(batch_size, seq_length, self.num_heads, self.d_k).transpose(1, 2)"""},
            why="Does a right answer that writes to stderr keep its points?"),
    Fixture("q3-deleted-test-cell", NB, mutate=_drop_cell("q3d_scores"),
            why="Is a deleted test cell put back and graded?"),
    Fixture("q3-foreign-kernelspec", NB, mutate=_foreign_kernel,
            why="Is a notebook that names another kernel still run in the course's kernel?"),
    Fixture("q3-infinite-loop", NB, {"g": "while True:\n    pass"},
            expected={"q3g_split_heads": 0, WL: 0}, messages={"q3g_split_heads": "Timeout"},
            why="Is an infinite loop interrupted, costing only the part that calls it?"),
]
FIXTURES = FIXTURES + TRAPS

# Right answers written another way (issue 6: a fair grader fails no right answer).
RIGHT_ANOTHER_WAY = [
    Fixture("q3-right-operators-loop", NB, {
        "a": "self.W_k = nn.Linear(d_model, self.num_heads * self.d_k)",
        "b": "self.W_v = nn.Linear(self.num_heads * self.d_k, d_model)",
        "d": "attn_scores = Q @ K.mT",
        "e": "attn_probs = torch.stack([nn.functional.softmax(s, dim=-1) for s in attn_scores.unbind(1)], dim=1)",
        "f": "output = attn_probs @ V",
        "g": "return x.unflatten(-1, (self.num_heads, self.d_k)).permute(0, 2, 1, 3)",
    }, why="Do @, .mT, F.softmax in a loop over heads, num_heads * d_k and unflatten get full marks?"),
]
FIXTURES = FIXTURES + RIGHT_ANOTHER_WAY


def _edit_given(old, new):
    """An edit of the given code OUTSIDE the blanks (in the answer cell)."""
    def mutate(nb):
        for c in nb.cells:
            if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "q3_mha":
                assert old in c.source
                c.source = c.source.replace(old, new)
        return nb
    return mutate


# Issue 10: each part on its own, and a whole-layer part for edits outside the blanks.
FIXTURES += [
    Fixture("q3-e-raises", NB, {"e": "attn_probs = torch.softmax(attn_scores)"},
            expected={"q3e_softmax": 0, WL: 0}, messages={"q3e_softmax": "(e)", WL: "whole layer"},
            why="An (e) that raises costs (e) and the whole layer only: (d) and (f) keep their points"),
    Fixture("q3-d-raises", NB, {"d": "attn_scores = torch.matmul(Q, K.transpose(-2, -1), 3)"},
            expected={"q3d_scores": 0, WL: 0}, messages={"q3d_scores": "(d)"},
            why="A (d) that raises costs (d) and the whole layer only: (e) and (f) keep their points"),
    Fixture("q3-blank-f-only", NB, {"f": "output = torch.matmul(attn_probs, _____)  # (f)"},
            expected={"q3f_weighted_values": 0, WL: 0},
            messages={"q3f_weighted_values": "(f) is still a blank `_____`: fill it in"},
            why="A blank left in (f) is named in one line and costs (f) and the whole layer only"),
    Fixture("q3-edited-outside-blanks", NB,
            mutate=_edit_given("attn_scores = attn_scores / math.sqrt(self.d_k)", "attn_scores = attn_scores / self.d_k"),
            expected={WL: 0}, messages={WL: "whole layer"},
            why="Every blank right but the given scaling edited: only the whole-layer part loses"),
]
