"""The course's fixture banks: submissions with the exact score of every test cell (graded by tests and
``./kit integrity``). Grader-side only: never released, never bound into the grading sandbox."""

# Banks `kit integrity` grades (modules of this package). The hostile bank is not among them: it attacks the
# grading machine and only runs inside the sandbox's own tests.
BANKS = ("hw9.q12_scaled_dot_product", "hw9.q3_multihead_attention", "hw9.q4_multiquery_attention",
         "hw9.q6_linear_attention", "attacks.tamper", "hw9.public_code")
