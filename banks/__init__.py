"""The course's fixture banks: submissions with the exact score of every test cell (graded by tests and
``./kit integrity``). Grader-side only: never released, never bound into the grading sandbox."""
