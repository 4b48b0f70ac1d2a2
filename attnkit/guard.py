"""The integrity guard of the grading kernel: hidden tests call ``guard(globals())`` first.

A test can only be as trustworthy as the functions it calls. A student's answer cell runs in
the same Python process as the tests and could redefine what they rely on (torch.allclose,
torch.testing.assert_close, time.perf_counter, torch's FLOP counter, the helper modules'
checks, IPython's error display). The grading kernel (``attnkit.kernel``) imports this module
and saves the originals before any notebook cell runs; every hidden test starts with
``GUARD_LINE``, which puts the originals back and reloads the helper modules from the
grader's read-only copies. This stops the common patches; the sandbox (attnkit.sandbox), not
this module, is what keeps the answers out of reach.

Grader-side only: students never receive this file.
"""
from __future__ import annotations

import builtins as _builtins
import importlib as _importlib
import importlib.util as _importlib_util
import math
import os as _os
import sys as _sys
import types as _types

import torch
from torch.utils._python_dispatch import TorchDispatchMode as _GuardTorchDispatchMode

# The first line of every hidden-test region (release and the tests check it).
GUARD_LINE = "from attnkit.guard import guard; guard(globals())  # integrity guard"
# Modules whose public checks a notebook's tests import, reloaded (in this order) from the files
# seen at start-up: the helper beside the notebook, then the kit's grader-only checks.
HELPER_MODULES = ("attention_checks", "attnkit.grader_checks")

_ORIGINALS_KEY = "_attnkit_guard_originals"   # kept in sys.modules: survives reloads of this module
_MISSING = object()
_GUARDED_BUILTINS = ("isinstance", "issubclass", "len", "abs", "float", "int", "bool", "str", "repr", "tuple",
                     "range", "round", "print", "getattr", "hasattr", "setattr", "type", "callable", "all", "any",
                     "AssertionError", "Exception", "BaseException", "KeyboardInterrupt", "__import__", "exec")
_GUARDED_TIME = ("perf_counter", "perf_counter_ns", "process_time", "process_time_ns", "monotonic",
                 "monotonic_ns", "time", "time_ns", "thread_time", "thread_time_ns", "sleep")
_GUARDED_TORCH = ("allclose", "isclose", "equal", "eq", "ne", "abs", "all", "any", "isfinite", "isnan", "max", "min",
                  "sum", "count_nonzero", "linspace", "randn", "rand", "zeros", "ones", "tensor", "matmul", "softmax")
_MODULE_ALIASES = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional", "math": "math", "time": "time",
                   "np": "numpy", "importlib": "importlib", "sys": "sys"}

def _guarded_namespaces():
    """(name, object, is_class) of every namespace whose contents the guard restores."""
    import resource
    import time
    import torch.nn.functional
    import torch.testing
    import torch.testing._comparison
    import torch.utils.flop_counter
    fc = torch.utils.flop_counter
    return [("torch", torch, False), ("torch.nn.functional", torch.nn.functional, False),
            ("torch.testing", torch.testing, False), ("torch.testing._comparison", torch.testing._comparison, False),
            ("torch.utils.flop_counter", fc, False), ("time", time, False), ("math", math, False),
            ("resource", resource, False),
            ("torch.Tensor", torch.Tensor, True), ("FlopCounterMode", fc.FlopCounterMode, True),
            ("TorchFunctionMode", torch.overrides.TorchFunctionMode, True),
            ("TorchDispatchMode", _GuardTorchDispatchMode, True)]


def _helper_files(folder=None):
    """name -> path of each helper module file beside the notebook (the grader's copies)."""
    folder = folder or _os.getcwd()
    kit = _os.path.dirname(_os.path.abspath(__file__))
    found = {}
    for name in HELPER_MODULES:
        if name.startswith("attnkit."):
            path = _os.path.join(kit, name.split(".", 1)[1] + ".py")
        else:
            path = _os.path.join(folder, name + ".py")
        if _os.path.isfile(path):
            found[name] = _os.path.abspath(path)
    return found


def save_originals(folder=None):
    """Snapshot what the guard restores. The grading kernel calls it before any cell runs;
    a process without that start-up (the GPU check) gets it at this module's first import."""
    saved = _sys.modules.get(_ORIGINALS_KEY)
    if isinstance(saved, _types.ModuleType) and isinstance(getattr(saved, "namespaces", None), dict):
        return saved
    saved = _types.ModuleType(_ORIGINALS_KEY)
    saved.helper_files = _helper_files(folder)
    # compiled once, here, before any cell runs: every hidden test re-executes them (compiling the
    # helper's source each time cost 7 ms a test, a third of a second a submission)
    saved.helper_code = {}
    for name, path in saved.helper_files.items():
        with open(path, "rb") as f:
            saved.helper_code[name] = compile(f.read(), path, "exec", dont_inherit=True)
    saved.namespaces = {name: (obj, dict(vars(obj)), is_class) for name, obj, is_class in _guarded_namespaces()}
    saved.builtins = {n: getattr(_builtins, n) for n in _GUARDED_BUILTINS if hasattr(_builtins, n)}
    saved.modules = {name: _sys.modules[name] for name in ("torch", "torch.nn", "torch.nn.functional", "math", "time",
                                                            "torch.testing", "torch.utils.flop_counter", "resource")
                     if name in _sys.modules}
    saved.default_dtype = torch.get_default_dtype()
    saved.grad_enabled = torch.is_grad_enabled()
    _sys.modules[_ORIGINALS_KEY] = saved
    return saved


def _restore_namespace(obj, saved, is_class, restored, label):
    current = vars(obj)
    for key, value in saved.items():
        if key in ("__dict__", "__weakref__"):
            continue
        if current.get(key, _MISSING) is not value:
            try:
                setattr(obj, key, value)
                restored.append(f"{label}.{key}")
            except (AttributeError, TypeError):
                pass
    if is_class:  # e.g. torch.Tensor.all = ... adds a key that shadows the inherited method
        for key in [k for k in list(current) if k not in saved]:
            try:
                delattr(obj, key)
                restored.append(f"{label}.{key}")
            except (AttributeError, TypeError):
                pass


def _pristine_builtin_module(name):
    """A fresh copy of a built-in module (e.g. time): re-importing it gives untouched functions."""
    old = _sys.modules.pop(name, None)
    try:
        return _importlib.import_module(name)
    finally:
        if old is not None:
            _sys.modules[name] = old


def _restore_ipython(restored):
    """Errors must reach the grader: undo custom exception handlers and a silenced traceback display."""
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except Exception:
        return
    if shell is None:
        return
    if getattr(shell, "custom_exceptions", ()):
        shell.custom_exceptions = ()
        restored.append("IPython custom exception handler")
    for name in ("showtraceback", "_showtraceback", "showsyntaxerror", "CustomTB", "run_cell", "run_code",
                 "run_cell_async", "run_ast_nodes"):
        if name in vars(shell):
            try:
                delattr(shell, name)
                restored.append(f"IPython shell.{name}")
            except AttributeError:
                pass


def restore_environment():
    """Put back everything the guard protects; returns the names that had been changed."""
    saved = save_originals()
    restored = []
    for name, module in saved.modules.items():
        if _sys.modules.get(name) is not module:
            _sys.modules[name] = module
            restored.append(f"sys.modules[{name!r}]")
    for label, (obj, snapshot, is_class) in saved.namespaces.items():
        _restore_namespace(obj, snapshot, is_class, restored, label)
    # Second line of defence, independent of the snapshot (in case it was taken too late).
    for name in _GUARDED_TORCH:
        builtin = getattr(torch._C._VariableFunctions, name, None)
        if builtin is not None and vars(torch).get(name) is not builtin:
            setattr(torch, name, builtin)
            restored.append(f"torch.{name}")
    time_module = saved.modules.get("time") or _sys.modules["time"]
    bad = [n for n in _GUARDED_TIME if not isinstance(getattr(time_module, n, None), _types.BuiltinFunctionType)]
    if bad:
        fresh = _pristine_builtin_module("time")
        for n in bad:
            setattr(time_module, n, getattr(fresh, n))
            restored.append(f"time.{n}")
    import torch.testing._comparison as _cmp
    if getattr(torch.testing.assert_close, "__module__", None) != "torch.testing._comparison":
        torch.testing.assert_close = _cmp.assert_close
        restored.append("torch.testing.assert_close")
    for name, value in saved.builtins.items():
        if getattr(_builtins, name, _MISSING) is not value:
            setattr(_builtins, name, value)
            restored.append(f"builtins.{name}")
    # Modes a student left switched on (a TorchFunctionMode that rewrites every result, ...).
    while torch._C._len_torch_function_stack() > 0:
        torch._C._pop_torch_function_stack()
        restored.append("torch function mode")
    from torch.utils._python_dispatch import _pop_mode
    while torch._C._len_torch_dispatch_stack() > 0:
        _pop_mode()
        restored.append("torch dispatch mode")
    if torch.get_default_dtype() != saved.default_dtype:
        torch.set_default_dtype(saved.default_dtype)
        restored.append("torch default dtype")
    if torch.is_grad_enabled() != saved.grad_enabled:
        torch.set_grad_enabled(saved.grad_enabled)
        restored.append("torch grad mode")
    _restore_ipython(restored)
    return restored


def _fresh_helper(name, path, code=None):
    """The helper module ``name`` executed anew from the grader's file (not from sys.path,
    which student code can change; ``code``: that file compiled at start-up), so its
    module-level references come from the restored torch."""
    spec = _importlib_util.spec_from_file_location(name, path)
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[name] = module
    if code is None:
        spec.loader.exec_module(module)
    else:
        exec(code, module.__dict__)
    return module


def guard(namespace=None):
    """Called first by every hidden test: restore what the tests rely on, reload the helpers.

    ``namespace`` (the notebook's ``globals()``) gets the fresh checks, modules and builtins back
    under the names it uses, so ``assert_close = lambda *a, **k: None`` in an answer cell does
    not switch a check off. Returns the fresh helper modules by name.
    """
    saved = save_originals()
    restore_environment()
    code = getattr(saved, "helper_code", {})
    helpers = {name: _fresh_helper(name, path, code.get(name)) for name, path in saved.helper_files.items()}
    if namespace is not None:
        for name, module in helpers.items():
            for attr, value in vars(module).items():
                if not attr.startswith("_") and attr in namespace and getattr(value, "__module__", None) == name:
                    namespace[attr] = value
            if name in namespace:
                namespace[name] = module
        for name, modname in _MODULE_ALIASES.items():
            # torch always; the other aliases only where they still hold a module (a student's own
            # variable called `time` or `F` is left alone)
            if (name in namespace and modname in _sys.modules and namespace[name] is not _sys.modules[modname]
                    and (name == "torch" or isinstance(namespace[name], _types.ModuleType))):
                namespace[name] = _sys.modules[modname]
        for name in _GUARDED_BUILTINS:
            if name in namespace:
                del namespace[name]  # a global that shadows a builtin
    return helpers


save_originals()
