"""The data-only format between the grader process and the kernel's agent (attnkit/agent.py).

Both sides load this file; it holds no answer and no grader code (students may read it). A message
is JSON; inside it a few tagged objects carry what JSON cannot:

    {"$tensor": {"dtype": "float32", "shape": [2, 3], "device": "cpu", "data": "<base64 of the raw bytes>"}}
    {"$tuple": [...]}    {"$dict": [[key, value], ...]}    {"$float": "nan" | "inf" | "-inf"}
    {"$dtype": "float64"}    {"$device": "cuda:0"}    {"$generator": {"device": "cpu", "state": <$tensor>}}
    {"$randn": {"shape": [4096, 64], "seed": 3, "dtype": "float32", "device": "cpu"}}   (drawn on arrival)
    {"$ref": 3, "type": "Attention", "kinds": ["Attention", "Module", ...], "callable": true}

``$ref`` names an object that stays in the kernel (a class, a function, a module the student built):
the grader can only name it back in a later request. ``{"$callback": 2}`` names a function of the
grader's that a test passes in (a similarity function, a feature map): the kernel can call it only by
sending its arguments back by value and receiving the result by value (attnkit/agent.py). Nothing is ever unpickled, evaluated or imported
from a message: ``decode`` builds tensors from raw bytes of an allowed dtype, checks every size against
the bytes it got and against ``limit`` (bytes in all), and refuses anything else with WireError.

Direction matters. Requests (grader -> kernel) may use the compact forms ``$randn`` and ``$generator``,
which make the receiver compute. What comes FROM the kernel (replies, a callback's arguments) is read
with ``parse_values`` (its JSON values counted from the text before it is parsed), ``measure`` and
``decode(values_only=True)``: values only, and the whole message (JSON values, nesting, tensor bytes)
counted against its budget before anything is built, so a small reply cannot make the grader allocate
more than it was sent.
"""
from __future__ import annotations

import base64
import json
import math
import re
import struct

import torch

# dtype name -> torch dtype; nothing else crosses the wire
DTYPES = {name: getattr(torch, name) for name in ("float16", "bfloat16", "float32", "float64", "int8", "int16",
                                                   "int32", "int64", "uint8", "bool", "complex64", "complex128")}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_DEPTH = 32          # nesting of tuples, lists and dicts
MAX_ITEMS = 100_000     # items in one container
MAX_STR = 1 << 20       # characters in one string
DEFAULT_LIMIT = 64 << 20  # bytes of tensor data in one message
MAX_RANDN = 1 << 26       # elements of one tensor drawn on arrival ($randn)

# -- the protocol between the grader (attnkit/grader/remote.py, channel.py) and the agent (attnkit/kernel/agent.py)
CALLBACK_PROMPT = "\x00attnkit-callback:"     # the start of a callback frame: a test's function called by value
REQUESTS = ("module_attr", "noop", "lookup", "getattr", "get", "setattr", "update", "own", "new", "release", "keep",
            "call", "sample")                  # the ``op`` of every request the agent serves
MAX_REPLY = 64 << 20        # characters of one message from the kernel (a reply, a callback's arguments)
MAX_REPLY_VALUES = 250_000  # JSON values in one such message (the largest honest reply, 4096 recorded
                            # intermediates with their shapes, holds ~60,000)
COMPUTED = ("$randn", "$generator")   # entries that make the receiver compute: never accepted from the kernel

# -- the grading line: one Unix socket per test cell, opened by SESSION_CALL (one execution for all of the cell's
# requests). A frame is its kind, its length in bytes, then that many bytes of UTF-8 JSON.
SESSION_CALL = "__import__('attnkit.kernel.line').kernel.line.session({!r})"
FRAME = struct.Struct(">cQ")
REQUEST, REPLY, CALLBACK, ANSWER = b"Q", b"R", b"C", b"A"   # grader -> kernel: Q, A; kernel -> grader: R, C


def frame(kind: bytes, text: str) -> bytes:
    body = text.encode("utf-8")
    return FRAME.pack(kind, len(body)) + body


class Randn:
    """A random normal tensor described by value (shape, seed, dtype, device): the receiver draws it with
    torch.Generator().manual_seed(seed) on the CPU, so both sides can have the same tensor without
    sending its data (large inputs of timed calls)."""

    def __init__(self, shape, seed: int, dtype=torch.float32, device="cpu"):
        self.shape, self.seed, self.dtype, self.device = tuple(int(n) for n in shape), int(seed), dtype, str(device)

    def tensor(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.shape, generator=gen, dtype=self.dtype).to(self.device)


class WireError(ValueError):
    """A message that is not in the format, or too large."""


def _device(device: str) -> str:
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")) or len(device) > 16:
        raise WireError(f"unknown device {device!r}")
    return device


def encode(value, ref=None, _depth=0):
    """``value`` as JSON-able data. ``ref(obj) -> dict`` names an object that cannot travel by value
    (None: such an object is an error)."""
    if _depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(float(value))}
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided or t.dtype not in _NAMES:
            raise WireError(f"a tensor of {t.dtype} / {t.layout} cannot be sent")
        device = str(t.device)
        flat = t.cpu().contiguous().reshape(-1)
        data = flat.to(torch.uint8) if t.dtype == torch.bool else flat.view(torch.uint8)  # raw bytes
        return {"$tensor": {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "device": device,
                            "data": base64.b64encode(data.numpy().tobytes()).decode("ascii")}}
    if isinstance(value, torch.dtype):
        return {"$dtype": _NAMES.get(value, str(value))}
    if isinstance(value, torch.device):
        return {"$device": str(value)}
    if isinstance(value, Randn):
        return {"$randn": {"shape": list(value.shape), "seed": value.seed, "dtype": _NAMES[value.dtype],
                           "device": value.device}}
    if isinstance(value, torch.Generator):  # its state by value: the other side gets a generator in that state
        return {"$generator": {"device": str(value.device), "state": encode(value.get_state())}}
    if isinstance(value, torch.Size):
        return {"$tuple": [int(v) for v in value]}
    if isinstance(value, (tuple, list)):
        if len(value) > MAX_ITEMS:
            raise WireError("too many items")
        items = [encode(v, ref, _depth + 1) for v in value]
        return {"$tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        if len(value) > MAX_ITEMS:
            raise WireError("too many items")
        return {"$dict": [[k, encode(v, ref, _depth + 1)] for k, v in value.items()]}
    if ref is None:
        raise WireError(f"a {type(value).__name__} cannot be sent by value")
    return ref(value)


def decode(data, ref=None, limit=DEFAULT_LIMIT, values_only=False):
    """The value that ``encode`` made (checked). ``ref(dict) -> object`` resolves ``$ref`` entries
    (None: a ``$ref`` is an error). ``values_only`` (whatever came from the kernel): no entry that makes
    this process compute, and the whole of ``data`` measured (``measure``) before anything is built."""
    if values_only:
        measure(data, limit)
    budget = [int(limit)]
    return _decode(data, ref, budget, 0, values_only)


def measure(data, limit=DEFAULT_LIMIT, max_values=MAX_REPLY_VALUES) -> int:
    """Check a parsed message from the kernel before anything is built from it: values only (no
    ``$randn``, ``$generator``), at most ``max_values`` JSON values, nesting within MAX_DEPTH levels, every
    container at most MAX_ITEMS, and the tensor bytes its shapes claim at most ``limit`` in all.
    Returns those bytes; WireError otherwise. Iterative: a deep message cannot exhaust the stack."""
    values, size, stack = 0, 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        values += 1
        if values > max_values:
            raise WireError(f"more than {max_values} values in one message")
        if depth > 3 * MAX_DEPTH + 4:  # a ``$dict`` level is three JSON levels (tag, pairs, pair)
            raise WireError("nested too deeply")
        if isinstance(node, str):
            if len(node) > MAX_STR:  # tensor data is not reached here: ``$tensor`` bodies are skipped
                raise WireError("string too long")
            continue
        if isinstance(node, list):
            if len(node) > MAX_ITEMS:
                raise WireError("too many items")
            stack.extend((v, depth + 1) for v in node)
            continue
        if not isinstance(node, dict):
            continue
        if len(node) > MAX_ITEMS:
            raise WireError("too many items")
        computed = [k for k in COMPUTED if k in node]
        if computed:
            raise WireError(f"a {computed[0]} entry: what the kernel sends carries values only")
        spec = node.get("$tensor")
        if isinstance(spec, dict):
            size += _tensor_bytes(spec)
            if size > limit:
                raise WireError("tensors larger than the message limit")
            values += len(spec)
            continue
        for key, v in node.items():
            if not isinstance(key, str):
                raise WireError("bad entry")
            stack.append((v, depth + 1))
    return size


def _tensor_bytes(spec) -> int:
    """The bytes a ``$tensor`` entry's dtype and shape claim (WireError if they are not in the format)."""
    if spec.get("dtype") not in DTYPES or not isinstance(spec.get("shape"), list):
        raise WireError("bad tensor")
    shape = spec["shape"]
    if len(shape) > 16 or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 for n in shape):
        raise WireError("bad tensor shape")
    dtype = DTYPES[spec["dtype"]]
    return math.prod(shape) * (1 if dtype == torch.bool else torch.empty((), dtype=dtype).element_size())


def _decode(data, ref, budget, depth, values_only=False):
    if depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    if data is None or isinstance(data, (bool, int, float)):
        return data
    if isinstance(data, str):
        if len(data) > MAX_STR:
            raise WireError("string too long")
        return data
    if isinstance(data, list):
        if len(data) > MAX_ITEMS:
            raise WireError("too many items")
        return [_decode(v, ref, budget, depth + 1, values_only) for v in data]
    if not isinstance(data, dict) or len(data) < 1:
        raise WireError(f"unexpected {type(data).__name__}")
    if "$tensor" in data:
        return _tensor(data["$tensor"], budget)
    if "$tuple" in data and isinstance(data["$tuple"], list):
        return tuple(_decode(data["$tuple"], ref, budget, depth, values_only))
    if "$dict" in data and isinstance(data["$dict"], list):
        out = {}
        for pair in data["$dict"]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))):
                raise WireError("bad dict entry")
            out[pair[0]] = _decode(pair[1], ref, budget, depth + 1, values_only)
        return out
    if "$float" in data and data["$float"] in ("nan", "inf", "-inf"):
        return float(data["$float"])
    if "$dtype" in data and data["$dtype"] in DTYPES:
        return DTYPES[data["$dtype"]]
    if "$device" in data:
        return torch.device(_device(data["$device"]))
    if values_only and any(k in data for k in COMPUTED):
        raise WireError("an entry that makes the grader compute: what the kernel sends carries values only")
    if "$randn" in data and isinstance(data["$randn"], dict):
        spec = data["$randn"]
        shape = spec.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 16 and all(isinstance(n, int) and 0 <= n for n in shape)
                and spec.get("dtype") in ("float32", "float64") and isinstance(spec.get("seed"), int)):
            raise WireError("bad randn")
        if math.prod(shape) > MAX_RANDN:  # drawn, not sent: bounded on its own
            raise WireError("a random tensor larger than the limit")
        return Randn(shape, spec["seed"], DTYPES[spec["dtype"]], _device(spec.get("device", "cpu"))).tensor()
    if "$generator" in data and isinstance(data["$generator"], dict):
        state = _decode(data["$generator"].get("state"), None, budget, depth + 1)
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise WireError("bad generator state")
        gen = torch.Generator(device=_device(data["$generator"].get("device", "cpu")))
        try:
            gen.set_state(state)
        except RuntimeError:
            raise WireError("bad generator state") from None
        return gen
    if ref is not None and isinstance(data.get("$ref", data.get("$callback")), int):
        return ref(data)
    raise WireError(f"unknown entry {sorted(data)[:3]}")


def _tensor(spec, budget):
    if not isinstance(spec, dict):
        raise WireError("bad tensor")
    size, shape, dtype = _tensor_bytes(spec), spec["shape"], DTYPES[spec["dtype"]]
    budget[0] -= size
    if budget[0] < 0:
        raise WireError("tensors larger than the message limit")
    raw = spec.get("data")
    if not isinstance(raw, str) or len(raw) > 4 * (size // 3 + 1) + 4:
        raise WireError("bad tensor data")
    buf = base64.b64decode(raw.encode("ascii"), validate=True)
    if len(buf) != size:
        raise WireError(f"tensor data of {len(buf)} bytes for {size}")
    flat = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
    t = (flat.to(torch.bool) if dtype == torch.bool else flat.view(dtype)).reshape(shape)
    device = _device(spec.get("device", "cpu"))
    return t.to(device) if device != "cpu" else t


def dumps(value, ref=None) -> str:
    return json.dumps(encode(value, ref), separators=(",", ":"), allow_nan=False)


def loads(text: str, ref=None, limit=DEFAULT_LIMIT):
    if len(text) > 2 * limit + (1 << 20):
        raise WireError("message too large")
    return decode(json.loads(text), ref, limit)


def parse_values(text, max_chars=MAX_REPLY, max_values=MAX_REPLY_VALUES):
    """The JSON of a message from the kernel, parsed only when it is small enough to parse safely: at most
    ``max_chars`` characters and ``max_values`` JSON values (counted from its text before parsing, so a
    message of a million empty lists is refused before it becomes a million objects). WireError otherwise."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise WireError(f"a message over {max_chars} characters")
    values = _separators(text)
    if values > max_values:  # an upper bound (strings may hold separators): counted exactly then, in place
        values -= sum(_separators(text, m.start(), m.end()) - 1 for m in _STRINGS.finditer(text))
        if values > max_values:
            raise WireError(f"more than {max_values} values in one message")
    try:
        return json.loads(text)
    except RecursionError:
        raise WireError("nested too deeply") from None
    except ValueError:
        raise WireError("not JSON") from None


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def _separators(text: str, start: int = 0, end: int | None = None) -> int:
    """One more than the values a JSON text can hold, at most (every value but the first follows a , [ or :)."""
    end = len(text) if end is None else end
    return text.count(",", start, end) + text.count("[", start, end) + text.count(":", start, end) + 1
