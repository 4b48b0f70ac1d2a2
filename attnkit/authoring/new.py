"""``kit new ASSIGNMENT``: scaffold a working assignment in the course folder, with no change to the kit.

Instructor side. It writes, beside the course's other assignments:

* ``source/<A>/q1_mean.ipynb``: one written answer with its mark scheme, one solution region with its stub, a
  visible test (runs in the student's kernel) and a hidden test (its region starts with the grader line, so it
  runs in the grader process);
* ``source/<A>/<A>_checks.py``: the helper students receive (the visible tests' checks);
* ``graders/<A>.py``: the grader-only helper (references and checks of the hidden tests), named for ``<A>`` in
  course_config.py (``CourseExecute.graders``): never released, never bound into the sandbox;
* ``banks/<A>/q1_mean.py``: a fixture bank (the solution, the release as is, a wrong answer that passes the
  visible test and fails the hidden one), each with the exact score of every test cell, listed in
  ``banks/__init__.py`` for ``kit integrity``.

docs/new-assignment.md walks through what to change next.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from attnkit.course import CONFIG_FILE, Course
from attnkit.authoring.markup import GRADER_LINE

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
NOTEBOOK = "q1_mean"


def _nbgrader(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
            "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _cell(kind, source: str, **nbgrader):
    make = new_code_cell if kind == "code" else new_markdown_cell
    cell = make(textwrap.dedent(source).strip("\n") + "\n")
    if nbgrader:
        cell.metadata.update(_nbgrader(**nbgrader))
    return cell


def notebook(a: str) -> nbformat.NotebookNode:
    """The scaffold's source notebook for assignment ``a``."""
    nb = new_notebook(cells=[
        _cell("markdown", f"""
            # {a} · Q1: the mean of a tensor

            A scaffold written by `./kit new {a}`: replace this question with yours (docs/new-assignment.md).
            Each test cell grades one part; its visible check runs here, its hidden tests at grading time.
            """),
        _cell("code", f"""
            import torch

            from {a}_checks import assert_close, call
            """, grade_id="q1_setup", locked=True),
        _cell("markdown", """
            ### Q1(a) — Why the order does not matter (written, 1 point)

            In one sentence: why does the mean of a tensor not depend on the order of its entries?

            ### BEGIN MARK SCHEME
            Q1(a), 1 point.
            - 1 pt: the mean is the sum divided by the count, and a sum does not depend on the order of its terms.
            ### END MARK SCHEME
            """, grade_id="q1a_question", locked=True),
        _cell("markdown", """
            **Your answer:**

            ### BEGIN SOLUTION
            The mean is $(x_1 + \\dots + x_n) / n$; addition is commutative, so every order gives the same sum.
            ### END SOLUTION
            """, grade_id="q1a_written", grade=True, solution=True, points=1),
        _cell("markdown", """
            ### Q1(b) — The mean in code (3 points)

            Write `mean_of(x)`: the mean of every entry of the tensor `x` (any shape, float32 or float64), as a
            Python `float`. *About 1 line.*
            """),
        _cell("code", """
            def mean_of(x):
                \"\"\"The mean of every entry of the tensor x, as a Python float.\"\"\"
                ### BEGIN SOLUTION
                return float(x.double().sum() / x.numel())
                ### STUB: return float(_____)  # (b)
                ### END SOLUTION
            """, grade_id="q1b_code", solution=True),
        _cell("code", """
            part = "Q1(b) mean_of"
            got = call(part, mean_of, torch.tensor([1.0, 2.0, 3.0, 6.0]))
            assert_close(got, 3.0, part=part, what="the mean of [1, 2, 3, 6]")
            """, grade_id="q1b_visible", grade=True, locked=True, points=1),
        _cell("code", f"""
            part = "Q1(b) mean_of, any shape and dtype"
            print(f"{{part}}: checked by the hidden tests when grading")

            ### BEGIN HIDDEN TESTS
            {GRADER_LINE}
            check_mean(mean_of, part=part)
            ### END HIDDEN TESTS
            """, grade_id="q1b_hidden", grade=True, locked=True, points=2),
    ])
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "attnkit": {"parts": {"q1a_written": "Q1(a) written: why the order does not matter",
                              "q1b_visible": "Q1(b) code: mean_of", "q1b_hidden": "Q1(b) code: mean_of, any shape"}},
    })
    return nb


def helper(a: str) -> str:
    """The helper students receive (the visible tests' checks); it must stand alone."""
    return textwrap.dedent(f'''\
        """Checks of {a}'s visible tests. Students receive this file; grading uses the course's copy, not theirs."""
        from __future__ import annotations

        DIAGNOSES = True   # ./kit release writes the course's setting here


        def call(part, fn, *args, **kwargs):
            """fn(*args, **kwargs); an error becomes one line that names the part (and a blank still left)."""
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # the message carries the error
                if "_____" in str(exc):
                    raise AssertionError(f"{{part}}: the code it runs still has a blank `_____`: fill it in") from None
                raise AssertionError(f"{{part}}: {{getattr(fn, '__name__', 'your code')}} raised "
                                     f"{{type(exc).__name__}}: {{exc}}") from None


        def assert_close(got, want, *, part, what, rtol=1e-5, atol=1e-6):
            """``got`` (a number) within rtol * |want| + atol of ``want``; the message names the part, never the answer."""
            if not isinstance(got, (int, float)) or isinstance(got, bool):
                raise AssertionError(f"{{part}}: {{what}} should be a Python number, got {{type(got).__name__}}")
            if not abs(got - want) <= atol + rtol * abs(want):
                raise AssertionError(f"{{part}}: {{what}} has the wrong value")
            print(f"ok  {{part}}: {{what}}")
        ''')


def grader(a: str) -> str:
    """The grader-only helper: never released, never in the sandbox."""
    return textwrap.dedent(f'''\
        """{a}'s grader-only helpers: the references and checks of its hidden tests.

        Grader process only, never released (it lives beside source/, not in it) and never bound into the grading
        sandbox. course_config.py names this file for {a} (CourseExecute.graders); the kit puts its public names in
        every hidden region of {a}, after the course helpers listed in HELPERS (the grader's copies, from beside the
        notebook) and the kit's general checks (attnkit.grader.checks: devices, patched, gradients, with_lines).
        In a hidden region the student's names stand for their kernel's objects: call them with values.
        """
        from __future__ import annotations

        import torch

        from attnkit.grader.checks import devices
        from attnkit.grader.hidden import call

        HELPERS = ("{a}_checks",)   # the course helper modules (beside the notebooks) imported below

        from {a}_checks import assert_close  # noqa: E402


        def check_mean(fn, *, part):
            """The student's ``fn`` against the mean in float64 on several shapes, both dtypes and every device."""
            g = torch.Generator().manual_seed(1)
            n = 0
            for dev in devices():
                for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
                    for shape in ((7,), (3, 5), (2, 3, 4)):
                        x = torch.randn(*shape, generator=g, dtype=torch.float64)
                        got = call(part, fn, x.to(dtype=dtype, device=dev))
                        what = f"the mean of a {{list(shape)}} tensor ({{str(dtype)[6:]}}, {{dev}})"
                        assert_close(got, float(x.mean()), part=part, what=what, rtol=rtol, atol=rtol)
                        n += 1
            print(f"ok  {{part}}: matches on {{n}} hidden cases")
        ''')


def bank(a: str) -> str:
    """The fixture bank: each submission with the exact score of every test cell."""
    return textwrap.dedent(f'''\
        """{a} fixtures: one submission per behaviour, each with the exact score it must get (kit integrity, tests)."""
        from attnkit.fixtures import Fixture

        ASSIGNMENT = "{a}"   # the assignment whose notebooks these fixtures submit
        NB = "{NOTEBOOK}"

        FIXTURES = [
            Fixture("{a}-solution", NB, why="does the instructor's solution score full marks?"),
            Fixture("{a}-untouched", NB, default="release", why="does the release as is score 0?"),
            Fixture("{a}-wrong-len", NB, answers={{"q1b_code": "return float(x.sum() / len(x))"}},
                    expected={{"q1b_hidden": 0}},
                    messages={{"q1b_hidden": "has the wrong value"}},
                    why="does a mean right only for 1-D tensors pass the visible test and fail the hidden one?"),
        ]
        ''')


def create(course: Course, a: str) -> list[Path]:
    """Write the scaffold of assignment ``a`` into ``course``; the files written. Refuses to overwrite anything."""
    if not NAME.fullmatch(a):
        raise ValueError(f"{a!r}: an assignment name is a letter then letters, digits or _ (it names a module)")
    files = {course.path("source", a, f"{NOTEBOOK}.ipynb"): None,
             course.path("source", a, f"{a}_checks.py"): helper(a),
             course.path("graders", f"{a}.py"): grader(a),
             course.path("banks", a, "__init__.py"): f'"""Fixture banks of the {a} assignment."""\n',
             course.path("banks", a, f"{NOTEBOOK}.py"): bank(a)}
    taken = [p for p in [course.path("source", a), *files] if p.exists()]
    if taken:
        raise ValueError(f"{a} exists already ({taken[0].relative_to(course.root)}): nothing written")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            nbformat.write(notebook(a), str(path))
        else:
            path.write_text(text)
    written = list(files)
    banks = course.path("banks", "__init__.py")
    if not banks.exists():
        banks.write_text('"""The course\'s fixture banks (kit integrity grades those in BANKS)."""\nBANKS = ()\n')
        written.append(banks)
    with banks.open("a") as out:
        out.write(f'BANKS = globals().get("BANKS", ()) + ("{a}.{NOTEBOOK}",)   # added by ./kit new {a}\n')
    with course.path(CONFIG_FILE).open("a") as out:
        out.write(f'\n# added by ./kit new {a}: its grader-only helper\n'
                  f'c.CourseExecute.graders.update({{"{a}": "graders/{a}.py"}})  # noqa: F821\n')
    return written + [course.path(CONFIG_FILE)]
