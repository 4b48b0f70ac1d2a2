"""Checks any assignment's hidden tests may use, in the grader process (never released to students).

Grader process only: hidden tests run in the grader (attnkit/grader/hidden.py), which puts these names in every
hidden region's namespace, after the course's helper modules and before the assignment's own grader helper
(``CourseExecute.graders`` in course_config.py). Nothing here knows an assignment. Nothing here prints an answer:
messages name the part and the symptom.
"""
from __future__ import annotations

import ast
import contextlib
import contextvars
import inspect
import sys
import textwrap
import warnings

import torch

_Tensor = torch.Tensor


def devices():
    """The devices the hidden tests run on: CPU always, CUDA when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextlib.contextmanager
def patched(obj, **attrs):
    """Temporarily replace attributes (e.g. methods of a class) and restore them after.

    Hidden tests use this to grade one part of a class alone: every other method is
    swapped for a reference version, so a mistake elsewhere does not cost these points.
    """
    missing = object()
    saved = {name: obj.__dict__.get(name, missing) if isinstance(obj, type) else getattr(obj, name, missing)
             for name in attrs}
    try:
        for name, value in attrs.items():
            setattr(obj, name, value)
        yield obj
    finally:
        for name, value in saved.items():
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)



def gradients(output, inputs):
    """Gradients of a fixed linear function of ``output`` w.r.t. each of ``inputs``.

    None for an input with no gradient path (also when the output does not require grad
    at all). The weights are fixed, not random, so the check is deterministic.
    """
    if not isinstance(output, _Tensor) or not output.requires_grad:
        return [None for _ in inputs]
    weights = torch.linspace(1.0, 2.0, output.numel(), dtype=output.dtype, device=output.device).reshape(output.shape)
    grads = torch.autograd.grad((output * weights).sum(), list(inputs), allow_unused=True)
    return [None if g is None else g.detach() for g in grads]


def is_zero_grad(grad):
    """True when there is no gradient (None) or it is exactly zero everywhere."""
    return grad is None or int(torch.count_nonzero(grad)) == 0




def with_lines(fn, *, part, record=None, replace=None, first_only=("attn_scores",)):
    """A copy of ``fn`` (a function or method defined in a notebook cell) with some assignments changed.

    ``replace`` maps a variable name to a Python expression: every assignment to that name (only the
    first one for the names in ``first_only``) gets that expression as its value, so a line of the
    student's that raises or is wrong cannot affect another part. ``record`` maps a key to
    ``(name, "before" | "after", expression)``: the expression's value just before the first
    assignment to ``name`` or just after it is stored in ``recorded[key]``. The expressions see the function's globals and
    ``__ref__`` (this module). Returns ``(new_fn, recorded)``. The given skeleton names the
    variables; if a name is missing the given code was changed and the part fails with a message.
    """
    func = getattr(fn, "__func__", fn)
    try:
        src = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise AssertionError(f"{part}: could not read the source of {func.__name__} ({exc})") from None
    tree = ast.parse(src)
    fdef = tree.body[0]
    fdef.decorator_list = []
    recorded = {}
    record = dict(record or {})
    replace = dict(replace or {})
    seen = set()

    def assigned(stmt):
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            return stmt.targets[0].id
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute)
                and isinstance(stmt.targets[0].value, ast.Name)):  # self.W_k = ...
            return f"{stmt.targets[0].value.id}.{stmt.targets[0].attr}"
        if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)) and isinstance(stmt.target, ast.Name):
            return stmt.target.id
        return None

    def rec_stmt(key, expr):
        return ast.parse(f"__recorded__[{key!r}] = {expr}").body[0]

    def rewrite(body):
        out = []
        for stmt in body:
            for field in ("body", "orelse", "finalbody"):
                if hasattr(stmt, field) and isinstance(getattr(stmt, field), list) and not isinstance(stmt, ast.FunctionDef):
                    setattr(stmt, field, rewrite(getattr(stmt, field)))
            name = assigned(stmt)
            first = name is not None and name not in seen
            if first:
                for key, (n, when, expr) in record.items():
                    if n == name and when == "before":
                        out.append(rec_stmt(key, expr))
            if name in replace and (first or name not in first_only):
                stmt = ast.Assign(targets=[ast.parse(name, mode="eval").body], value=ast.parse(replace[name], mode="eval").body)
                for node in ast.walk(stmt.targets[0]):
                    if hasattr(node, "ctx"):
                        node.ctx = ast.Load()
                stmt.targets[0].ctx = ast.Store()
            out.append(stmt)
            if first:
                seen.add(name)
                for key, (n, when, expr) in record.items():
                    if n == name and when == "after":
                        out.append(rec_stmt(key, expr))
        return out

    fdef.body = rewrite(fdef.body)
    missing = [n for n in list(replace) + [r[0] for r in record.values()] if n not in seen]
    if missing:
        raise AssertionError(f"{part}: the given code of {func.__name__} was changed: it no longer assigns "
                             f"{', '.join(sorted(set(missing)))}; restore the skeleton and fill in only the blanks")
    ast.fix_missing_locations(tree)
    import sys
    namespace = dict(func.__globals__)
    namespace["__recorded__"] = recorded
    namespace["__ref__"] = sys.modules[__name__]
    exec(compile(tree, inspect.getsourcefile(func) or "<answer>", "exec"), namespace)
    return namespace[func.__name__], recorded


# ---- Diagnoses: a failed part's output compared with known wrong variants (the assignment's grader helper).
# Only a sentence naming the mistake goes back to the student: never an input, a reference value or the answer.
DIAGNOSES = contextvars.ContextVar("diagnoses", default=True)   # the course's setting (CourseExecute.diagnoses)


def __getattr__(name):
    """A name that moved to an assignment's grader helper, for a hidden test written for the previous release
    (``from attnkit.grader.checks import q4_variants``): found in the grader helpers this process has loaded, with a
    warning. Goes away next release: a hidden region sees its grader helper's names without an import."""
    for key, module in list(sys.modules.items()):
        if key.startswith("_attnkit_grader_") and hasattr(module, name):
            warnings.warn(f"attnkit.grader.checks.{name} moved to the assignment's grader helper (graders/): use the "
                          "name without the import", DeprecationWarning, stacklevel=2)
            return getattr(module, name)
    raise AttributeError(f"attnkit.grader.checks has no {name}, and no grader helper loaded here has it")
