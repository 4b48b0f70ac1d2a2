"""The grader's view of the student's kernel: names that stand for the kernel's objects.

Grader process only. A hidden test runs here, where a class or a function of the student's (``Attention``, ``poly_kernel``) is a
``Remote``: calling it sends a request to the kernel's agent (attnkit/kernel/agent.py) with the arguments
by value, and what comes back is data (tensors, numbers, shapes, dtypes), another ``Remote`` for an
object that stays in the kernel, or a ``StudentError`` carrying the exception's type name and a
capped excerpt of its message. Nothing of the grader's is ever sent: a request holds values and
names of the kernel's own objects, and every reply is checked by attnkit.wire before it is used.
"""
from __future__ import annotations

import json
import re
import time

import torch

from attnkit.kernel import wire

CALLBACK_PROMPT, MAX_REPLY = wire.CALLBACK_PROMPT, wire.MAX_REPLY


class StudentError(Exception):
    """An exception raised by the student's code in the kernel (type name and a capped excerpt)."""

    blank: str | None = None


_ERRORS: dict[str, type] = {}


def student_error(info) -> StudentError:
    """A StudentError whose class name is the kernel exception's (so messages read ``NameError: ...``)."""
    info = info if isinstance(info, dict) else {}
    name = str(info.get("type") or "Error")
    name = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,59}", name) else "Error"
    cls = _ERRORS.get(name) or _ERRORS.setdefault(name, type(name, (StudentError,), {}))
    err = cls(str(info.get("message") or "")[:400])
    blank = info.get("blank")
    err.blank = blank[:40] if isinstance(blank, str) else None
    return err


class KernelGone(RuntimeError):
    """The kernel stopped answering (it died, or a request ran past its time)."""


class KernelDied(KernelGone):
    """The kernel died while the grader was waiting for it."""


class RequestTimeout(KernelGone):
    """A request ran past the cell's time (the kernel was interrupted)."""


class BadReply(KernelGone):
    """The kernel sent something that breaks the protocol (a reply or a callback's arguments that are not
    values, too many of them, nested too deeply, two replies to one request): the test fails, never the grader."""

    def __init__(self, why: str):
        super().__init__(f"the kernel's reply broke the grading protocol ({why}); this test cannot pass. "
                         "Replies carry values only: was the kit's agent changed in your notebook?")


class Kernel:
    """Requests to one kernel's agent. ``send(text) -> reply text`` is the transport."""

    def __init__(self, send):
        self._send = send
        self._callbacks: list = []   # grader functions a test passed in, by number
        self.requests = self.callbacks = 0  # counts, for profiles
        self.waited = self.growth = 0.0     # seconds waiting on the kernel's replies; in cost-growth checks (profiles)
        self.broken: str | None = None      # why a message from the kernel broke the protocol (then every request fails)
        self.sources: list[str] | None = None  # the student's code cells, from the notebook the grader holds

    def request(self, **req):
        if req.get("op") not in wire.REQUESTS:
            raise ValueError(f"no request {req.get('op')!r} in the protocol (wire.REQUESTS)")
        self.requests += 1
        t0 = time.perf_counter()
        text = self._send(json.dumps(req, separators=(",", ":"), allow_nan=False))
        self.waited += time.perf_counter() - t0
        if not isinstance(text, str):
            raise KernelGone("the kernel sent no reply")
        try:  # the whole reply checked (values only, counted) before any of it is built
            reply = wire.parse_values(text)
            wire.measure(reply, MAX_REPLY)
        except wire.WireError as exc:
            raise BadReply(str(exc)) from None
        if self.broken:  # a callback's arguments broke the protocol during this request
            raise BadReply(self.broken)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise BadReply("a reply not in the format")
        if not reply["ok"]:
            raise student_error(reply.get("error"))
        return reply.get("value")

    def value(self, data):
        try:
            return wire.decode(data, self._remote, limit=MAX_REPLY, values_only=True)
        except wire.WireError as exc:
            raise BadReply(str(exc)) from None

    def _remote(self, data) -> "Remote":
        return Remote(self, data)

    def _ref(self, obj):
        if isinstance(obj, Remote):
            return {"$ref": obj._info["$ref"]}
        if isinstance(getattr(obj, "__self__", None), Remote):  # e.g. Remote.__init__: write kernel.getattr(x, "__init__")
            raise wire.WireError("a method of the grader's proxy is not the student's method: use kernel.getattr")
        if callable(obj) and not isinstance(obj, type):  # a test's function: the kernel may call it by value
            self._callbacks.append(obj)
            return {"$callback": len(self._callbacks) - 1}
        raise wire.WireError(f"a {type(obj).__name__} of the grader's is never sent to the kernel")

    def answer_callback(self, prompt: str) -> str:
        """The answer to the agent's callback frame ``prompt`` (wire.CALLBACK_PROMPT + JSON):
        the grader's function run on the arguments sent, its result by value."""
        self.callbacks += 1
        try:
            if not prompt.startswith(CALLBACK_PROMPT):
                return json.dumps({"ok": False, "error": "not a callback"})
            try:  # the arguments are the kernel's: values only, counted before anything is built
                body = wire.parse_values(prompt[len(CALLBACK_PROMPT):])
                args = wire.decode(body["args"], limit=MAX_REPLY, values_only=True) if isinstance(body, dict) else None
                kwargs = ({} if not isinstance(body, dict) or "kwargs" not in body
                          else wire.decode(body["kwargs"], limit=MAX_REPLY, values_only=True))
            except wire.WireError as exc:
                self.broken = self.broken or f"a callback's arguments: {exc}"
                raise
            fn = self._callbacks[int(body["callback"])]
            if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise TypeError("arguments not in the format")
            return json.dumps({"ok": True, "value": wire.encode(fn(*args, **kwargs))}, separators=(",", ":"),
                              allow_nan=False)
        except Exception as exc:  # the student's input(), a malformed request, or arguments the function refuses
            return json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]})

    def send(self, value):
        return wire.encode(value, self._ref)

    # -- requests
    def lookup(self, names) -> dict:
        """name -> value or Remote, for the names the student's namespace defines."""
        found = self.request(op="lookup", names=sorted(names))
        if not isinstance(found, dict):
            raise BadReply("a lookup reply not in the format")
        return {n: self.value(v) for n, v in found.items()
                if n in names and not (isinstance(v, dict) and v.get("$missing") is True)}

    def call(self, target, *args, **kwargs):
        return self.value(self.request(op="call", target=self.send(target), args=self.send(list(args)),
                                       kwargs=self.send(kwargs)))

    def release(self, *remotes) -> None:
        """The kernel may drop these objects (kept inputs of timed calls, once measured)."""
        refs = [{"$ref": r._info["$ref"]} for r in remotes if isinstance(r, Remote)]
        if refs:
            self.request(op="release", refs=refs)

    def module_attr(self, module: str, name: str):
        """``module.name`` as the kernel has it (a module the kernel imported, e.g. the course helper)."""
        return self.value(self.request(op="module_attr", module=str(module), name=str(name)))

    def keep(self, *values) -> list:
        """The values sent once and kept in the kernel: references to pass to later calls (timed calls
        then send no data)."""
        refs = self.value(self.request(op="keep", args=self.send(list(values))))
        if not isinstance(refs, list) or len(refs) != len(values) or not all(isinstance(r, Remote) for r in refs):
            raise BadReply("a reply not in the format")
        return refs

    def describe(self, target, *args, **kwargs) -> dict:
        """What a call returns, without its data: {"shape", "dtype", "device"} for a tensor, else {"type"}."""
        found = self.value(self.request(op="call", target=self.send(target), args=self.send(list(args)),
                                        kwargs=self.send(kwargs), describe=True))
        if not isinstance(found, dict):
            raise BadReply("a reply not in the format")
        return found

    def call_keeping(self, target, *args, sync=False) -> "Remote":
        """A measured call (time, memory): its value stays in the kernel; returns a reference to it, for
        ``sample`` once the meter is read. Every measured call has this one form, timed or checked."""
        found = self.value(self.request(op="call", target=self.send(target), args=self.send(list(args)),
                                        kwargs={"$dict": []}, keep=True, sync=bool(sync)))
        if not isinstance(found, Remote):
            raise BadReply("a reply not in the format")
        return found

    def sample(self, kept: "Remote", rows) -> dict:
        """What a kept value is ({"shape", "dtype", "device"} for a tensor, else {"type"}) and its rows
        ``rows`` along dim -2 (a tensor, under "rows"; None where there are none)."""
        found = self.value(self.request(op="sample", target=self.send(kept), rows=[int(i) for i in rows]))
        if not isinstance(found, dict):
            raise BadReply("a reply not in the format")
        return found

    def call_discarding(self, target, *args, sync=False, **kwargs) -> None:
        """A call whose value stays in the kernel and is dropped (for timing and memory readings)."""
        self.request(op="call", target=self.send(target), args=self.send(list(args)), kwargs=self.send(kwargs),
                     discard=True, sync=bool(sync))

    def call_traced(self, target, *args, functions=(), watch=(), standins=None, skip_failures=False, replace=(),
                    **kwargs):
        """A call of the student's code traced line by line in ``functions`` (the student's, Remote).

        Returns a Trace: ``value`` (None if it raised), ``error`` (the StudentError, or None), ``history``
        [(name, value)]: each new object bound to a ``watch``ed local, in order; ``skipped``: the statements
        that raised and were jumped over (with ``skip_failures``), each {"line", "assigns", "error"}, a
        ``standins`` value bound in place of the name it assigns; ``replace``: names whose first assignment
        is replaced by its stand-in whether or not it raises."""
        reply = self.request(op="call", target=self.send(target), args=self.send(list(args)), kwargs=self.send(kwargs),
                             trace={"functions": self.send(list(functions)), "watch": list(watch),
                                    "standins": self.send(dict(standins or {})), "skip_failures": bool(skip_failures),
                                    "replace": list(replace)})
        if not isinstance(reply, dict) or not isinstance(reply.get("skipped"), list):
            raise BadReply("a reply not in the format")
        history = self.value(reply.get("history")) or []
        skipped = [{"line": s.get("line"), "assigns": s.get("assigns") if isinstance(s.get("assigns"), str) else None,
                    "error": student_error(s.get("error"))} for s in reply["skipped"][:8] if isinstance(s, dict)]
        error = student_error(reply["error"]) if reply.get("error") else None
        trace = Trace(None if error else self.value(reply.get("value")), error,
                      [(n, v) for n, v in history if isinstance(n, str)], skipped)
        entered = reply.get("entered")
        trace.entered = {str(n)[:100] for n in entered[:64]} if isinstance(entered, list) else set()
        return trace

    def call_recording(self, target, *args, limit=1024, **kwargs):
        """(value, error, tensors): the call's value (or the StudentError it raised) and the floating-point
        tensors torch produced during it, in order (the agent's recorder; at most ``limit``)."""
        reply = self.request(op="call", target=self.send(target), args=self.send(list(args)),
                             kwargs=self.send(kwargs), intermediates=int(limit))
        if not isinstance(reply, dict) or not isinstance(reply.get("tensors"), list):
            raise BadReply("a reply not in the format")
        error = student_error(reply["error"]) if reply.get("error") else None
        tensors = [t for t in self.value(reply["tensors"]) if isinstance(t, torch.Tensor)]
        return (None if error else self.value(reply.get("value"))), error, tensors

    def call_with_grads(self, target, args, grad_of):
        """(value, requires_grad, grads): the call's value, whether it requires grad, and the gradients
        of sum(value * w), w = linspace(1, 2) over its elements, with respect to ``args[i]`` for i in
        ``grad_of`` (None where there is no gradient path). Taken in the kernel: autograd is the student's."""
        reply = self.request(op="call", target=self.send(target), args=self.send(list(args)), grad_of=list(grad_of))
        if not isinstance(reply, dict) or not isinstance(reply.get("grads"), list):
            raise BadReply("a reply not in the format")
        grads = [None if g is None else self.value(g) for g in reply["grads"]]
        return self.value(reply.get("value")), bool(reply.get("requires_grad")), grads

    def getattr(self, target, name: str):
        return self.value(self.request(op="getattr", target=self.send(target), name=str(name)))

    def get(self, target, *paths):
        """The values of several dotted attribute paths of a kernel object, in one request:
        ``kernel.get(m, "W_q.weight", "W_q.bias")``."""
        values = self.value(self.request(op="get", target=self.send(target), paths=[str(p) for p in paths]))
        if not isinstance(values, list) or len(values) != len(paths):
            raise BadReply("a reply not in the format")
        return tuple(values)

    def setattr(self, target, name: str, value) -> None:
        self.request(op="setattr", target=self.send(target), name=str(name), args=self.send([value]))

    def update(self, target, **attrs) -> None:
        """Set several attributes of a kernel object in one request (values by value, functions as callbacks)."""
        self.request(op="update", target=self.send(target), kwargs=self.send(attrs))

    def own(self, cls) -> set:
        """The attribute names the student's class defines itself (not inherited)."""
        names = self.value(self.request(op="own", target=self.send(cls)))
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def bare(self, cls, **attrs) -> "Remote":
        """A course helper's ``bare`` for the kernel: an instance of the student's class without its __init__,
        given exactly these attributes (values travel by value; the grader's functions as callbacks)."""
        return self.value(self.request(op="new", target=self.send(cls), kwargs=self.send(attrs)))

    def new(self, cls) -> "Remote":
        """An instance of the student's class whose __init__ has not run."""
        return self.value(self.request(op="new", target=self.send(cls)))


class Trace:
    """What a traced call of the student's code gave (Kernel.call_traced). The course helper's line-by-line run
    (its visible checks) mirrors it: tests/test_mirrors.py checks that the two agree."""

    def __init__(self, value, error, history, skipped):
        self.value, self.error, self.history, self.skipped = value, error, history, skipped
        self.entered = set()   # names of the traced functions that ran

    def first(self, name):
        """The first value bound to ``name``, or None."""
        return next((v for n, v in self.history if n == name), None)

    def last(self, name):
        """The last value bound to ``name``, or None."""
        return next((v for n, v in reversed(self.history) if n == name), None)

    def last_before(self, name, before):
        """The last value bound to ``name`` before ``before`` was first bound (None if never)."""
        found = None
        for n, v in self.history:
            if n == before:
                return found
            if n == name:
                found = v
        return None

    def skipped_for(self, name):
        """The error of a skipped statement that assigns ``name``, or None."""
        return next((s["error"] for s in self.skipped if s["assigns"] == name), None)


class Remote:
    """An object that stays in the student's kernel: call it, read its attributes."""

    __slots__ = ("_kernel", "_info")

    def __init__(self, kernel: Kernel, info: dict):
        object.__setattr__(self, "_kernel", kernel)
        object.__setattr__(self, "_info", {"$ref": int(info["$ref"]),
                                           "type": str(info.get("type", "?"))[:100],
                                           "kinds": [str(k)[:100] for k in (info.get("kinds") or [])][:32],
                                           "name": str(info.get("name") or info.get("type", "?"))[:100],
                                           "is_class": bool(info.get("is_class"))})

    def __call__(self, *args, **kwargs):
        return self._kernel.call(self, *args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._kernel.getattr(self, name)

    def __setattr__(self, name, value):
        self._kernel.setattr(self, name, value)

    @property
    def __name__(self):
        return self._info["name"]

    def __repr__(self):
        return f"<the student's {self._info['type']}>"


def kind(obj) -> list[str]:
    """The class names of ``obj``'s type and its bases (for a Remote, as the kernel reports them)."""
    if isinstance(obj, Remote):
        return list(obj._info["kinds"])
    return [c.__name__ for c in type(obj).__mro__]


def is_kind(obj, name: str) -> bool:
    return name in kind(obj)


def as_tensor(value, *, part, what="output"):
    """``value`` if it is a tensor, else an AssertionError naming the part."""
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{part}: {what} should be a tensor, got {type(value).__name__}")
    return value
