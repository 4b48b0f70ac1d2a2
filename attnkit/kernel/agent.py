"""The kernel's agent: the only code of the kit that hidden tests reach the student's kernel through.

Kernel side (bound read-only into the sandbox; students may read it: it holds no answer, no test,
no reference). The grader process (attnkit/grader/) sends requests over the grading line
(attnkit/kernel/line.py): JSON text, one ``_reply`` each. A request names something in the student's namespace or an object the agent handed out earlier (``$ref``),
and carries its arguments by value (attnkit/kernel/wire.py). The agent does exactly what it is asked: look
names up, call, read or set an attribute, create a bare instance, record the locals a function binds, take
gradients. It never decides anything: every comparison and verdict happens in the grader.

Whatever the student's code raises comes back as its type name and at most ERROR_BYTES of its
message; a blank ``_____`` still in the code comes back as the label of its line.
"""
from __future__ import annotations

import ast
import builtins
import dis
import inspect
import itertools
import json
import re
import sys
import textwrap
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnkit.kernel import wire

ERROR_BYTES = 300
BLANK = "_____"
# The "# (x)" label of a line: "(d)", "(b-ii)", "(another blank)". The course helper students receive has its own
# copy (it must stand alone); tests/test_mirrors.py checks that the two agree.
BLANK_LABEL = re.compile(r"#\s*(\([A-Za-z0-9][A-Za-z0-9 -]{0,20}\))")
_objects: dict[int, object] = {}   # reference number -> object handed to the grader
_ids: dict[int, int] = {}          # id(object) -> its reference number
_numbers = itertools.count(1)


def _namespace() -> dict:
    try:
        return get_ipython().user_ns  # noqa: F821 (IPython's)
    except NameError:
        return sys.modules["__main__"].__dict__


def _ref(obj) -> dict:
    key = id(obj)
    if key not in _ids or _objects.get(_ids[key]) is not obj:
        _ids[key] = next(_numbers)
        _objects[_ids[key]] = obj
    cls = obj if isinstance(obj, type) else type(obj)
    kinds = [c.__name__ for c in getattr(cls, "__mro__", ())][:32]
    name = getattr(obj, "__name__", None)
    return {"$ref": _ids[key], "type": str(getattr(cls, "__name__", "?"))[:100], "kinds": kinds,
            "name": name[:100] if isinstance(name, str) else None, "is_class": isinstance(obj, type),
            "callable": callable(obj)}


CALLBACK_PROMPT = wire.CALLBACK_PROMPT   # the text before a callback's arguments
_ask = None   # how a callback reaches the grader while a request runs (set by line.session)


class _Callback:
    """A function of the grader's, called by value: its arguments go out as data, its result comes back
    as data (over the grading socket). Nothing else of the grader's is reachable from here."""

    def __init__(self, number: int):
        self.number = number

    def __call__(self, *args, **kwargs):  # any call the API allows: positional or keyword (mask=mask)
        if _ask is None:
            raise RuntimeError("a grader function can be called only while the grader waits for it")
        message = {"callback": self.number, "args": wire.encode(list(args))}
        if kwargs:
            message["kwargs"] = wire.encode({str(k): v for k, v in kwargs.items()})
        reply = _ask(CALLBACK_PROMPT + json.dumps(message, separators=(",", ":"), allow_nan=False))
        reply = json.loads(reply)
        if not isinstance(reply, dict) or not reply.get("ok"):
            why = reply.get("error") if isinstance(reply, dict) and isinstance(reply.get("error"), str) else "?"
            raise RuntimeError(f"a function the test gave your code failed on the arguments it got: {why[:200]}")
        return wire.decode(reply["value"])


def _deref(data: dict):
    if "$callback" in data:
        return _Callback(int(data["$callback"]))
    try:
        return _objects[data["$ref"]]
    except KeyError:
        raise wire.WireError("unknown reference") from None


def _by_value(value) -> bool:
    """Data travels by value; anything else (functions, classes, modules, nn.Modules) by reference."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_by_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _by_value(v) for k, v in value.items())
    return False


def _out(value):
    return wire.encode(value, _ref)  # data by value, any other object by reference


def _excerpt(text: str) -> str:
    raw = text.encode("utf-8", "replace")
    return raw[:ERROR_BYTES].decode("utf-8", "ignore") + ("…" if len(raw) > ERROR_BYTES else "")


def _blank_label(tb) -> str | None:
    """The ``# (x)`` label of the innermost line that still holds a blank."""
    label = None
    for frame in traceback.extract_tb(tb):
        line = frame.line or ""
        if BLANK in line:
            found = BLANK_LABEL.search(line)
            label = found.group(1) if found else label
    return label


def _error(exc: BaseException) -> dict:
    blank = BLANK in str(exc) or isinstance(exc, NameError) and BLANK in str(getattr(exc, "name", ""))
    return {"type": type(exc).__name__[:100], "message": _excerpt(str(exc)),
            "blank": (_blank_label(exc.__traceback__) or "a blank") if blank else None}


class _Tracer:
    """Runs the student's code line by line (sys.settrace) in the frames of ``codes`` only (the course helper's
    run_lines mirrors it for the visible checks; tests/test_mirrors.py checks that the two agree):

    * ``watch``: every new object bound to one of these local names is recorded, in order, as
      (name, value): the grader reads which scores reached the softmax, which weights the values;
    * ``skip``: {(code, line): (next line, name)}: a statement that raised in an earlier run is jumped
      over; if it assigns ``name`` and the grader gave a stand-in value for it, the stand-in is bound
      instead (a neutral value, e.g. random scores, so the lines after it can be graded alone);
    * ``replace``: names whose first assignment is jumped over the same way, the stand-in bound, whether
      or not it raises (the line after it is then graded on the stand-in alone).
    """

    def __init__(self, codes, watch=(), skip=None, standins=None, replace=(), limit=256):
        self.codes, self.watch, self.skip = set(codes), tuple(watch), dict(skip or {})
        self.standins, self.limit = dict(standins or {}), limit
        self.replace = {n for n in replace if n in self.standins}
        self.history, self._last, self.elements, self._replaced = [], {}, 0, set()
        self.entered = set()   # the names of the traced functions that ran (did forward call the method a part grades?)

    def __enter__(self):
        self.previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def _global(self, frame, event, arg):
        if frame.f_code in self.codes:
            self.entered.add(frame.f_code.co_name[:100])
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event in ("line", "return") and self.watch:
            local = frame.f_locals
            for name in self.watch:
                if name in local and self._last.get(name) is not local[name] and len(self.history) < self.limit:
                    value = local[name]
                    self._last[name] = value
                    if isinstance(value, torch.Tensor):
                        if self.elements + value.numel() > MAX_RECORDED:
                            continue
                        self.elements += value.numel()
                        value = value.detach().clone()
                    self.history.append((name, value))
        jump = None
        if event == "line" and (frame.f_code, frame.f_lineno) in self.skip:
            jump = self.skip[(frame.f_code, frame.f_lineno)]
        elif event == "line" and self.replace:
            starts = [st for st in _statements(frame.f_code) if st[0] == frame.f_lineno and st[2] in self.replace]
            key = (id(frame), starts[0][2]) if starts else None
            if key is not None and key not in self._replaced:
                self._replaced.add(key)
                jump = _statement_after(frame.f_code, frame.f_lineno)
        while jump is not None:  # the line a jump lands on gets no line event: skip on from there too
            after, name = jump
            if name in self.standins:
                frame.f_locals[name] = self._last[name] = self.standins[name]  # written back when this returns
                self.history.append((name, self.standins[name]))
            jump = self.skip.get((frame.f_code, after))
            if jump is None:
                try:
                    frame.f_lineno = after
                except ValueError:  # not a jump Python allows (into a block): the statement runs and fails again
                    pass
        return self._local


_STATEMENTS: dict = {}


def _statements(code):
    """[(first line, last line, the single name it assigns or None)] of the statements of ``code``'s
    function (from the student's own source, as Python keeps it), innermost last."""
    if code not in _STATEMENTS:
        found = []
        try:
            lines, first = inspect.getsourcelines(code)
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except (OSError, TypeError, SyntaxError):
            tree, first = None, 0
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = None
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if len(targets) == 1 and isinstance(targets[0], ast.Name):
                        name = targets[0].id
                found.append((node.lineno + first - 1, node.end_lineno + first - 1, name))
        _STATEMENTS[code] = sorted(found)
    return _STATEMENTS[code]


def _statement_after(code, line):
    """(first line of the statement after the one at ``line``, the name that one assigns or None);
    None when there is no statement to go on with."""
    around = [st for st in _statements(code) if st[0] <= line <= st[1]]
    if not around:
        return None
    start, end, name = max(around)  # the innermost statement
    starts = sorted({ln for _, ln in dis.findlinestarts(code) if ln is not None and ln > end})
    return (starts[0], name) if starts else None


def _failing_line(exc, codes, skip=()):
    """(code, line) of the innermost frame of ``codes`` that ``exc`` passed through whose statement can be
    jumped over (the last statement of a method cannot: then the one that called that method, e.g.
    ``super().__init__(...)``), or of the innermost one if none can; None if none."""
    found, tb = [], exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            found.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    for place in reversed(found):
        if place not in skip and _statement_after(*place) is not None:
            return place
    return found[-1] if found else None


def _run(target, args, kwargs, spec):
    """A call of the student's code under a _Tracer; with ``skip_failures`` a statement that raises is
    skipped (and its stand-in bound) and the call made again from the start, up to MAX_SKIPS times."""
    codes = {c for c in (_function_code(f) for f in spec.get("functions", [])) if c is not None}
    skip, skipped = {}, []
    while True:
        with _Tracer(codes, spec.get("watch", ()), skip, spec.get("standins"), spec.get("replace", ())) as tracer:
            try:
                return tracer, target(*args, **kwargs), None, skipped
            except Exception as exc:
                error = _error(exc)
                where = _failing_line(exc, codes, skip) if spec.get("skip_failures") else None
                after = _statement_after(*where) if where else None
                if where is None or after is None or where in skip or len(skip) >= MAX_SKIPS:
                    return tracer, None, error, skipped
                skip[where] = after
                skipped.append({"line": where[1] - where[0].co_firstlineno, "assigns": after[1], "error": error})


MAX_SKIPS = 4


class _Intermediates(TorchDispatchMode):
    """Records the floating-point tensors torch's operators produce during a call (at most ``limit``). At the
    dispatcher, so the pieces of one composite call count too (the x W_q that a three-operand einsum computes
    on its way), not only what a torch function returns."""

    @classmethod
    def _should_skip_dynamo(cls):  # nothing here is compiled: no torch._dynamo import (over 1 s)
        return False

    def __init__(self, limit: int):
        super().__init__()
        self.tensors, self.limit, self.elements = [], limit, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and len(self.tensors) < self.limit
                    and self.elements + t.numel() <= MAX_RECORDED):
                self.tensors.append(t.detach().clone())
                self.elements += t.numel()
        return out


MAX_RECORDED = 4_000_000
MAX_REQUEST = 256 << 20    # characters of one request   # elements of recorded intermediates sent back for one call


def _function_code(fn):
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__code__", None)


def _setattr(obj, name, value):
    if isinstance(obj, torch.nn.Module) and not isinstance(value, (torch.nn.Module, torch.nn.Parameter)):
        obj._modules.pop(name, None)  # a stand-in (e.g. a grader function) in place of a submodule
        obj._parameters.pop(name, None)
    setattr(obj, name, value)


def handle(request: dict, namespace: dict | None = None):
    op = request.get("op")
    if op not in wire.REQUESTS:
        raise wire.WireError(f"unknown request {op!r}")
    if op == "module_attr":  # an attribute of a module the kernel imported (e.g. the course helper's elu map)
        module = sys.modules.get(str(request["module"]))
        if module is None:
            raise wire.WireError("that module is not imported in the kernel")
        return _out(getattr(module, str(request["name"])))
    if op == "noop":  # what a request costs the kernel by itself (timed calls subtract it)
        return None
    if op == "lookup":
        ns = _namespace() if namespace is None else namespace
        return {name: (_out(ns[name]) if name in ns else {"$missing": True}) for name in request["names"]}
    target = wire.decode(request["target"], _deref) if "target" in request else None
    args = wire.decode(request.get("args", []), _deref)
    kwargs = wire.decode(request.get("kwargs", {"$dict": []}), _deref)
    if op == "getattr":
        return _out(getattr(target, request["name"]))
    if op == "get":  # several dotted attribute paths at once: "W_q.weight"
        values = []
        for path in request["paths"][:256]:
            value = target
            for name in str(path).split("."):
                value = getattr(value, name)
            values.append(value)
        return _out(values)
    if op == "setattr":
        _setattr(target, str(request["name"]), args[0])
        return None
    if op == "update":  # several attributes at once
        for name, value in kwargs.items():
            _setattr(target, str(name), value)
        return None
    if op == "own":  # the names a class defines itself (not inherited)
        return sorted(str(k) for k in vars(target))[:1000] if isinstance(target, type) else []
    if op == "new":  # an instance whose __init__ has not run, given exactly the attributes the grader sends
        obj = target.__new__(target)
        torch.nn.Module.__init__(obj) if isinstance(obj, torch.nn.Module) else None
        for name, value in kwargs.items():
            _setattr(obj, str(name), value)
        return _out(obj)
    if op == "release":  # the grader is done with these references: the objects may go
        for data in request.get("refs", [])[:100_000]:
            obj = _objects.pop(data.get("$ref") if isinstance(data, dict) else None, None)
            if obj is not None and _ids.get(id(obj)) == data.get("$ref"):
                del _ids[id(obj)]
        return None
    if op == "sample":  # what a kept value is, and some of its rows (dim -2): the grader checks them
        value, rows = target, request.get("rows", [])[:64]
        if not isinstance(value, torch.Tensor):
            return _out({"type": type(value).__name__[:100]})
        found = {"shape": list(value.shape), "dtype": str(value.dtype), "device": str(value.device), "rows": None}
        if value.dim() >= 2 and all(isinstance(i, int) and 0 <= i < value.shape[-2] for i in rows):
            found["rows"] = torch.Tensor.index_select(torch.Tensor.detach(value), -2,
                                                      torch.tensor(rows, dtype=torch.long, device=value.device)).cpu()
        return _out(found)
    if op == "keep":  # the arguments stay in the kernel; the grader gets references to pass back
        return [_ref(a) for a in args]
    if op == "call":
        trace = request.get("trace")
        if trace:  # the student's code line by line: locals recorded, failing statements skipped
            spec = {"functions": wire.decode(trace.get("functions", []), _deref),
                    "watch": [str(n) for n in trace.get("watch", [])][:16],
                    "standins": wire.decode(trace.get("standins", {"$dict": []})),
                    "skip_failures": bool(trace.get("skip_failures")),
                    "replace": [str(n) for n in trace.get("replace", [])][:16]}
            tracer, value, error, skipped = _run(target, args, kwargs, spec)
            history = [[name, value] for name, value in tracer.history if _by_value(value)]
            return {"value": _out(value), "error": error, "history": wire.encode(history, _ref),
                    "skipped": skipped, "entered": sorted(tracer.entered)[:64]}
        intermediates = request.get("intermediates")
        if intermediates:  # every floating-point tensor torch computed during the call
            with _Intermediates(min(int(intermediates), 4096)) as rec:
                try:
                    value, error = target(*args, **kwargs), None
                except Exception as exc:
                    value, error = None, _error(exc)
            return {"value": _out(value), "error": error, "tensors": wire.encode(rec.tensors)}
        grad_of = request.get("grad_of")
        if grad_of is not None:  # gradients of sum(value * w), w = linspace(1, 2) over the value's elements
            for i in grad_of:
                args[i] = args[i].detach().clone().requires_grad_(True)
            value = target(*args, **kwargs)
            if not isinstance(value, torch.Tensor) or not value.requires_grad:
                return {"value": _out(value), "requires_grad": False, "grads": [None for _ in grad_of]}
            weights = torch.linspace(1.0, 2.0, value.numel(), dtype=value.dtype, device=value.device)
            grads = torch.autograd.grad((value * weights.reshape(value.shape)).sum(), [args[i] for i in grad_of],
                                        allow_unused=True)
            return {"value": _out(value.detach()), "requires_grad": True,
                    "grads": [None if g is None else wire.encode(g) for g in grads]}
        value = target(*args, **kwargs)
        if request.get("keep"):  # measured calls (time, memory): the value stays here, checked by "sample" after
            if request.get("sync") and torch.cuda.is_available():
                torch.cuda.synchronize()
            return _ref(value)
        if request.get("describe"):  # only what the value is (a tensor's shape, dtype, device)
            if isinstance(value, torch.Tensor):
                return _out({"shape": list(value.shape), "dtype": str(value.dtype), "device": str(value.device)})
            return _out({"type": type(value).__name__[:100]})
        if request.get("discard"):  # timed calls: the value is not sent (that would be timed too)
            if request.get("sync") and torch.cuda.is_available():
                torch.cuda.synchronize()
            return None
        return _out(value)
    raise wire.WireError(f"unknown request {op!r}")


def _reply(text: str) -> str:
    """The JSON reply to one request (never raises)."""
    try:
        reply = {"ok": True, "value": handle(wire_loads(text))}
    except BaseException as exc:  # noqa: B902 (SystemExit, KeyboardInterrupt from a timeout's interrupt too)
        reply = {"ok": False, "error": _error(exc)}
    try:
        return json.dumps(reply, separators=(",", ":"), allow_nan=False)
    except Exception as exc:
        return json.dumps({"ok": False, "error": _error(exc)})


def wire_loads(text: str) -> dict:
    request = json.loads(text) if len(text) <= MAX_REQUEST else None
    if not isinstance(request, dict):
        raise wire.WireError("a request is an object")
    return request
