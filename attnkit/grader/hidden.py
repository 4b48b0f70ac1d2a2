"""Run a test cell's hidden region in the grader process.

The region is the instructor's code from the source notebook (restored from the gradebook), run
with ``exec`` in a fresh namespace of the grader's: torch, nn, F, math, the course helper modules that the
assignment's grader helper lists in its HELPERS (the grader's copies beside the notebook, never the kernel's),
``attnkit.grader.checks``, and the assignment's grader helper itself (a file beside the course, named in
course_config.py: ``CourseExecute.graders``). Every other name it reads (a class, a function or an answer of the
student's) is looked up in the student's kernel once, before the region runs, and stands for the kernel's
object (grader/remote.py).

What the region prints becomes the cell's stdout; what it raises becomes the cell's error output,
``ename: evalue``, written by the grader's own messages (a StudentError carries at most a short excerpt
of the student's message).
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import hashlib
import importlib.util
import io
import math
import sys
import time
from pathlib import Path

import torch

from attnkit.grader import checks, growth
from attnkit.kernel import wire
from attnkit.grader.remote import (Kernel, KernelDied, KernelGone, Remote, RequestTimeout, StudentError, is_kind,
                                   kind)

from attnkit.authoring.markup import GRADER_LINE, runs_in_grader  # noqa: F401 (the first line of a region run here)

MAX_STDOUT = 20_000               # characters of a hidden region's printed lines kept
MAX_MESSAGE = 2_000               # characters of its error message
_loaded: dict[str, str] = {}      # module name -> digest of the file(s) it was loaded from


def load_helpers(folder, names) -> dict:
    """The grader's copies of the course helper modules ``names`` found in ``folder``, imported (again when a
    file changed) under their own names, so that a grader helper's ``from <helper> import ...`` finds them."""
    mods = {}
    for name in names:
        path = Path(folder) / f"{name}.py"
        if path.is_file():
            mods[name] = _import(name, path)
    return mods


def helper_names(grader) -> tuple:
    """The course helper modules a grader helper file lists in ``HELPERS = (...)``, read without running it."""
    return _helper_names(Path(grader).read_bytes())


@functools.lru_cache(maxsize=16)
def _helper_names(text: bytes) -> tuple:
    # parsed once per file content, not once per hidden region (a 30 KB grader helper: 8 ms a parse)
    for node in ast.parse(text).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "HELPERS"):
            return tuple(ast.literal_eval(node.value))
    return ()


def load_grader(grader, folder):
    """(the course helpers it lists, loaded from ``folder``; the grader helper module at ``grader``), each
    imported again when its file or a helper's changed."""
    helpers = load_helpers(folder, helper_names(grader))
    salt = "".join(_loaded[name] for name in helpers)
    return helpers, _import(f"_attnkit_grader_{Path(grader).stem}", Path(grader), salt)


def _import(name: str, path: Path, salt: str = ""):
    digest = hashlib.sha256(path.read_bytes() + salt.encode()).hexdigest()
    if _loaded.get(name) != digest or name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _loaded[name] = digest
    return sys.modules[name]


def run_student(part, fn, args, kwargs, failure):
    """``fn(*args, **kwargs)``; a blank it meets is named for ``part``; any other error of the student's code
    raises ``failure(name of fn, the error)``."""
    try:
        return fn(*args, **kwargs)
    except StudentError as exc:
        if exc.blank or "_____" in str(exc):
            raise AssertionError(blank_words(part, exc.blank)) from None
        name = fn.__name__ if isinstance(fn, Remote) else getattr(fn, "__name__", "your code")
        raise failure(name, exc) from None


def call(part, fn, *args, **kwargs):
    """The course helper's ``call`` for the kernel's objects: an exception names the part (and the blank)."""
    return run_student(part, fn, args, kwargs,
                       lambda name, exc: AssertionError(f"{part}: {name} raised {type(exc).__name__}: {exc}"))


def blank_words(part, label=None) -> str:
    """"(d) is still a blank", never "a blank is still a blank". The course helper students receive has the same
    function (it must stand alone): tests/test_mirrors.py checks that the two agree."""
    if label in (None, "a blank"):
        return f"{part}: the code it runs still has a blank `_____`: fill it in"
    if part == label or part.startswith(label + " "):
        return f"{label} is still a blank `_____`: fill it in"
    return f"{part}: {label} is still a blank `_____`: fill it in"


def namespace(kernel: Kernel, folder, grader=None) -> dict:
    """The names a hidden region starts with (the student's are added by ``resolve``): the course helpers the
    grader helper ``grader`` lists, the kit's general checks, then the grader helper's own public names."""
    ns = {"__name__": "__hidden_tests__", "__builtins__": builtins, "torch": torch, "nn": torch.nn,
          "F": torch.nn.functional, "math": math}
    helpers, module = load_grader(grader, folder) if grader else ({}, None)
    for helper in helpers.values():
        ns.update({k: v for k, v in vars(helper).items() if not k.startswith("__")})
    ns.update({k: v for k, v in vars(checks).items() if not k.startswith("_")})
    if module is not None:
        ns.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    ns.update(wire=wire, kernel=kernel, kind=kind, is_kind=is_kind, StudentError=StudentError, call=call,
              check_linear_time=_timed(kernel, growth.check_linear_time),
              check_linear_memory=_timed(kernel, growth.check_linear_memory))
    return ns


def _timed(kernel: Kernel, check):
    """``check`` adding the seconds it takes to ``kernel.growth`` (the profile's cost-growth figure)."""
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return check(*args, **kwargs)
        finally:
            kernel.growth += time.perf_counter() - t0
    timed.__name__, timed.__doc__ = check.__name__, check.__doc__
    return timed


@functools.lru_cache(maxsize=256)
def free_names(source: str) -> frozenset[str]:
    """Names the region reads but never binds (candidates for the student's objects); the same regions come
    back for every student, so each is parsed once."""
    tree = ast.parse(source)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(loaded - bound)


class GraderOutOfMemory(Exception):
    """The grading process reached its own memory limit (CourseExecute.grader_memory_mb) in a hidden test."""

    def __init__(self):
        super().__init__("the grading process ran out of its memory limit (CourseExecute.grader_memory_mb) while "
                         "a hidden test ran; this notebook could not be graded")


def out_of_memory(exc: BaseException) -> bool:
    """Is ``exc`` an allocation this process was refused (Python's MemoryError, torch's CPU allocator)?"""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def run(source: str, kernel: Kernel, folder, extras: dict | None = None, grader=None) -> tuple[str, dict | None]:
    """(what the region printed, its error as ``{ename, evalue}`` or None). ``extras``: more names for the
    region (``meter``: the kernel's KernelMeter, for verdicts on time and memory); ``grader``: the assignment's
    grader helper file (None: the kit's general checks only)."""
    ns = namespace(kernel, folder, grader)
    ns.update(extras or {})
    checks.DIAGNOSES.set(bool((extras or {}).get("diagnoses", True)))  # this thread's context only (the course setting)
    out = io.StringIO()
    error = None
    try:
        wanted = {n for n in free_names(source) if n not in ns and not hasattr(builtins, n)}
        if wanted:
            ns.update(kernel.lookup(wanted))
        code = compile(source, "<hidden tests>", "exec")
        with contextlib.redirect_stdout(out):
            exec(code, ns)
    except RequestTimeout as exc:
        error = {"ename": "CellTimeoutError", "evalue": str(exc)}
    except KernelDied as exc:
        error = {"ename": "KernelDied", "evalue": str(exc), "cause": "died"}
    except KernelGone as exc:
        error = {"ename": "KernelGone", "evalue": str(exc)}
    except AssertionError as exc:
        error = {"ename": "AssertionError", "evalue": str(exc)}
    except NameError as exc:
        error = {"ename": "NameError", "evalue": f"{exc.name or exc} is not defined in your notebook: run the cell "
                                                 "that defines it, or check its name"}
    except StudentError as exc:
        error = {"ename": type(exc).__name__, "evalue": f"your code raised {type(exc).__name__}: {exc}"}
    except Exception as exc:  # a hidden test that could not finish: reported, never a pass
        if out_of_memory(exc):  # this process's own limit: the notebook cannot be graded (not only this test)
            raise GraderOutOfMemory() from None
        error = {"ename": type(exc).__name__, "evalue": str(exc)}
    text = out.getvalue()
    if len(text) > MAX_STDOUT:
        text = text[:MAX_STDOUT] + "\n[... output cut]\n"
    if error is not None:
        error["evalue"] = error["evalue"][:MAX_MESSAGE]
    return text, error
