"""The kernel's agent: the only code of the kit that hidden tests reach the student's kernel through.

Kernel side (bound read-only into the sandbox; students may read it: it holds no answer, no test,
no reference). The grader process (attnkit/grader/) sends one request per execute_request,

    __import__("attnkit.agent").agent.serve('<json>')

and reads the reply from a display output of type REPLY_MIME. A request names something in the
student's namespace or an object the agent handed out earlier (``$ref``), and carries its arguments
by value (attnkit/wire.py). The agent does exactly what it is asked: look names up, call, read or set
an attribute, create a bare instance, record the locals a function binds, take gradients. It never
decides anything: every comparison and verdict happens in the grader.

Whatever the student's code raises comes back as its type name and at most ERROR_BYTES of its
message; a blank ``_____`` still in the code comes back as the label of its line.
"""
from __future__ import annotations

import builtins
import json
import re
import sys
import traceback

import torch

from attnkit import wire

REPLY_MIME = "text/vnd.attnkit.reply+json"
ERROR_BYTES = 300
BLANK = "_____"
_objects: dict[int, object] = {}
_ids: dict[int, int] = {}


def _namespace() -> dict:
    try:
        return get_ipython().user_ns  # noqa: F821 (IPython's)
    except NameError:
        return sys.modules["__main__"].__dict__


def _ref(obj) -> dict:
    key = id(obj)
    if key not in _ids or _objects.get(_ids[key]) is not obj:
        _ids[key] = len(_objects) + 1
        _objects[_ids[key]] = obj
    cls = obj if isinstance(obj, type) else type(obj)
    kinds = [c.__name__ for c in getattr(cls, "__mro__", ())][:32]
    return {"$ref": _ids[key], "type": str(getattr(cls, "__name__", "?"))[:100], "kinds": kinds,
            "is_class": isinstance(obj, type), "callable": callable(obj)}


CALLBACK_PROMPT = "\x00attnkit-callback:"   # an input request that carries a callback's arguments
_ask = None   # how a callback reaches the grader: input() of the current request (set by serve)


class _Callback:
    """A function of the grader's, called by value: its arguments go out as data, its result comes back
    as data (over the kernel's stdin channel). Nothing else of the grader's is reachable from here."""

    def __init__(self, number: int):
        self.number = number

    def __call__(self, *args):
        if _ask is None:
            raise RuntimeError("a grader function can be called only while the grader waits for it")
        reply = _ask(CALLBACK_PROMPT + json.dumps({"callback": self.number, "args": wire.encode(list(args))},
                                                  separators=(",", ":"), allow_nan=False))
        reply = json.loads(reply)
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise RuntimeError("the function the test passed in could not be called with these arguments")
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
            found = re.search(r"#\s*(\([A-Za-z0-9][A-Za-z0-9 -]{0,20}\))", line)
            label = found.group(1) if found else label
    return label


def _error(exc: BaseException) -> dict:
    blank = BLANK in str(exc) or isinstance(exc, NameError) and BLANK in str(getattr(exc, "name", ""))
    return {"type": type(exc).__name__[:100], "message": _excerpt(str(exc)),
            "blank": (_blank_label(exc.__traceback__) or "a blank") if blank else None}


class _Recorder:
    """Records the first tensor each watched local of ``code`` is bound to (sys.settrace)."""

    def __init__(self, code, names):
        self.code, self.names, self.seen = code, tuple(names), {}

    def __enter__(self):
        self.previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def _global(self, frame, event, arg):
        return self._local if frame.f_code is self.code else None

    def _local(self, frame, event, arg):
        if event in ("line", "return"):
            for name in self.names:
                if name not in self.seen and name in frame.f_locals:
                    value = frame.f_locals[name]
                    self.seen[name] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        return self._local


class _Intermediates(torch.overrides.TorchFunctionMode):
    """Records the floating-point tensors torch functions produce during a call (at most ``limit``)."""

    def __init__(self, limit: int):
        super().__init__()
        self.tensors, self.limit, self.elements = [], limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and len(self.tensors) < self.limit
                    and self.elements + t.numel() <= MAX_RECORDED):
                self.tensors.append(t.detach().clone())
                self.elements += t.numel()
        return out


MAX_RECORDED = 4_000_000   # elements of recorded intermediates sent back for one call


def _function_code(fn):
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__code__", None)


def handle(request: dict, namespace: dict | None = None):
    op = request.get("op")
    if op == "lookup":
        ns = _namespace() if namespace is None else namespace
        return {name: (_out(ns[name]) if name in ns else {"$missing": True}) for name in request["names"]}
    target = wire.decode(request["target"], _deref) if "target" in request else None
    args = wire.decode(request.get("args", []), _deref)
    kwargs = wire.decode(request.get("kwargs", {"$dict": []}), _deref)
    if op == "getattr":
        return _out(getattr(target, request["name"]))
    if op == "setattr":
        setattr(target, request["name"], args[0])
        return None
    if op == "new":  # an instance whose __init__ has not run (the grader sets what it needs)
        obj = target.__new__(target)
        torch.nn.Module.__init__(obj) if isinstance(obj, torch.nn.Module) else None
        return _out(obj)
    if op == "call":
        watch = request.get("watch")
        if watch:
            code = _function_code(wire.decode(watch["function"], _deref))
            with _Recorder(code, watch["names"]) as rec:
                try:
                    value, error = target(*args, **kwargs), None
                except Exception as exc:
                    value, error = None, _error(exc)
            seen = {k: v for k, v in rec.seen.items() if _by_value(v)}
            return {"value": _out(value), "error": error, "seen": wire.encode(seen, _ref)}
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
        return _out(target(*args, **kwargs))
    raise wire.WireError(f"unknown request {op!r}")


def serve(text: str) -> None:
    """Run one request and publish its reply (the grader reads nothing else of this execution)."""
    global _ask
    _ask = builtins.input  # ipykernel's, for this execution (the request allows stdin)
    try:
        reply = {"ok": True, "value": handle(wire_loads(text))}
    except Exception as exc:
        reply = {"ok": False, "error": _error(exc)}
    except BaseException as exc:  # SystemExit, KeyboardInterrupt (a timeout) in the student's code
        reply = {"ok": False, "error": _error(exc)}
    _ask = None
    try:
        payload = json.dumps(reply, separators=(",", ":"), allow_nan=False)
    except Exception as exc:
        payload = json.dumps({"ok": False, "error": _error(exc)})
    from IPython.display import publish_display_data
    publish_display_data({REPLY_MIME: payload})


def wire_loads(text: str) -> dict:
    request = json.loads(text)
    if not isinstance(request, dict):
        raise wire.WireError("a request is an object")
    return request
