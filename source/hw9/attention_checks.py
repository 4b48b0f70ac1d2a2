"""Checks used by the HW9 notebooks' tests (visible and hidden).

Students receive this file with the notebooks; at autograde the course's copy replaces
theirs. It holds only generic checking machinery -- no answers. Every check raises
AssertionError with a message that names the part and the symptom, and prints what it
compared and the tolerance it used when it passes.

References to torch functions are taken once, at import, so that redefining
``torch.allclose`` and friends later in a notebook cannot change what a check does.
"""
from __future__ import annotations

import contextlib
import math

import torch

_isclose = torch.isclose
_abs = torch.abs
_isfinite = torch.isfinite
_Tensor = torch.Tensor

# Default tolerances per dtype: a few hundred ulps of the working precision, so that a
# right answer computed in another order (einsum vs matmul, a loop, ...) always passes.
TOLERANCES = {
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-9, 1e-11),
}


def tolerance(dtype):
    """(rtol, atol) used for values of this dtype."""
    return TOLERANCES.get(dtype, (1e-4, 1e-5))


def devices():
    """The devices the hidden tests run on: CPU always, CUDA when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _fmt_shape(x):
    return tuple(x.shape) if isinstance(x, _Tensor) else type(x).__name__


def check_tensor(got, *, part, shape=None, dtype=None, device=None, what="output"):
    """Type, shape, dtype and device of a result, with a message naming the part."""
    if not isinstance(got, _Tensor):
        raise AssertionError(f"{part}: {what} should be a torch.Tensor, got {type(got).__name__}")
    if shape is not None and tuple(got.shape) != tuple(shape):
        raise AssertionError(f"{part}: {what} has the wrong shape: expected {tuple(shape)}, got {tuple(got.shape)}")
    if dtype is not None and got.dtype != dtype:
        raise AssertionError(f"{part}: {what} has dtype {got.dtype}, expected {dtype} (keep the input's dtype)")
    if device is not None and got.device.type != torch.device(device).type:
        raise AssertionError(f"{part}: {what} is on {got.device.type}, expected {torch.device(device).type} "
                             "(keep the input's device)")


def max_error(got, expected):
    """Largest absolute difference, as a float (inf if shapes differ or values are not finite)."""
    if tuple(got.shape) != tuple(expected.shape):
        return math.inf
    diff = _abs(got.detach().to(torch.float64).cpu() - expected.detach().to(torch.float64).cpu())
    if diff.numel() == 0:
        return 0.0
    if not bool(_isfinite(diff).all()):
        return math.inf
    return float(diff.max())


def close(got, expected, rtol=None, atol=None):
    """True when got matches expected within the dtype's tolerance (shapes must agree)."""
    if not isinstance(got, _Tensor) or tuple(got.shape) != tuple(expected.shape):
        return False
    d_rtol, d_atol = tolerance(expected.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    g = got.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    return bool(_isclose(g, e, rtol=rtol, atol=atol).all())


def assert_close(got, expected, *, part, what="output", rtol=None, atol=None, check_dtype=True, quiet=False):
    """Shape, dtype, device and values of ``got`` against ``expected``.

    The message says what differs (shape, dtype, device or the largest error) and never
    prints the expected values themselves.
    """
    check_tensor(got, part=part, what=what, shape=expected.shape,
                 dtype=expected.dtype if check_dtype else None, device=expected.device)
    d_rtol, d_atol = tolerance(expected.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    if not close(got, expected, rtol, atol):
        err = max_error(got, expected)
        raise AssertionError(f"{part}: {what} has wrong values: largest error {err:.3g} exceeds the "
                             f"tolerance (rtol={rtol:g}, atol={atol:g}, {str(expected.dtype).replace('torch.', '')})")
    if not quiet:
        print(f"ok  {part}: {what} shape {tuple(got.shape)} {str(got.dtype).replace('torch.', '')} matches "
              f"(max error {max_error(got, expected):.2g}, rtol={rtol:g}, atol={atol:g})")


def expect(condition, message):
    """assert with a message that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


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


def bare(cls, **attrs):
    """An instance of an nn.Module subclass made WITHOUT running its __init__.

    Tests of one method use it so that a blank elsewhere in __init__ cannot make them fail:
    the instance gets exactly the attributes the method reads.
    """
    obj = cls.__new__(cls)
    torch.nn.Module.__init__(obj)
    for name, value in attrs.items():
        setattr(obj, name, value)
    return obj


class Intermediates(torch.overrides.TorchFunctionMode):
    """Record every tensor that torch functions produce while the block runs.

    Lets a test ask "did the right intermediate (e.g. the attention scores) appear?",
    which grades one line of a function without depending on the lines after it.
    """

    def __init__(self):
        super().__init__()
        self.tensors = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, _Tensor) and t.is_floating_point():
                self.tensors.append(t.detach())
        return out

    def contains(self, expected, rtol=None, atol=None):
        return any(close(t, expected, rtol, atol) for t in self.tensors if tuple(t.shape) == tuple(expected.shape))


# ==== Q1/Q2 helpers (scaled dot product, argmax attention) ====

_autograd_grad = torch.autograd.grad
_zeros_like_check = torch.count_nonzero
_linspace = torch.linspace


def as_number(got, *, part, what="result"):
    """A Python float from a number or a one-element tensor; anything else fails with a message."""
    if isinstance(got, bool):
        raise AssertionError(f"{part}: {what} should be a number, got a bool")
    if isinstance(got, (int, float)):
        value = float(got)
    elif isinstance(got, _Tensor):
        if got.numel() != 1:
            raise AssertionError(f"{part}: {what} should be a single number, got a tensor of shape "
                                 f"{tuple(got.shape)}")
        value = float(got.detach().cpu().item())
    else:
        raise AssertionError(f"{part}: {what} should be a number (float), got {type(got).__name__}")
    if not math.isfinite(value):
        raise AssertionError(f"{part}: {what} is not finite ({value})")
    return value


def assert_close_number(got, expected, *, part, what="result", rtol=1e-9, atol=0.0, quiet=False):
    """A scalar answer against a reference, relative tolerance; the message never shows the reference."""
    value = as_number(got, part=part, what=what)
    err = abs(value - float(expected))
    if not err <= atol + rtol * abs(float(expected)):
        size = (f"relative error {err / abs(float(expected)):.3g}" if float(expected) != 0
                else f"absolute error {err:.3g}")
        raise AssertionError(f"{part}: {what} has the wrong value ({size}, "
                             f"tolerance rtol={rtol:g}, atol={atol:g})")
    if not quiet:
        print(f"ok  {part}: {what} matches (rtol={rtol:g}, atol={atol:g})")
    return value


def assert_within_se(estimate, truth, se, *, part, what="estimate", k=6.0, slack=0.0, quiet=False):
    """A Monte Carlo estimate within k standard errors (plus a fixed slack) of the exact value.

    With a fixed seed the check is deterministic; with k = 6 a right estimator fails it
    with probability about 2e-9 for any seed.
    """
    value = as_number(estimate, part=part, what=what)
    bound = k * float(se) + float(slack)
    err = abs(value - float(truth))
    if not err <= bound:
        raise AssertionError(f"{part}: {what} is {err / float(se):.1f} standard errors away from the exact "
                             f"value (allowed {k:g}); check what you sample and what you average")
    if not quiet:
        print(f"ok  {part}: {what} within {k:g} standard errors ({err / float(se):.2f} SE off)")
    return value


def gradients(output, inputs):
    """Gradients of a fixed linear function of ``output`` w.r.t. each of ``inputs``.

    None for an input with no gradient path (also when the output does not require grad
    at all). The weights are fixed, not random, so the check is deterministic.
    """
    if not isinstance(output, _Tensor) or not output.requires_grad:
        return [None for _ in inputs]
    weights = _linspace(1.0, 2.0, output.numel(), dtype=output.dtype, device=output.device).reshape(output.shape)
    grads = _autograd_grad((output * weights).sum(), list(inputs), allow_unused=True)
    return [None if g is None else g.detach() for g in grads]


def is_zero_grad(grad):
    """True when there is no gradient (None) or it is exactly zero everywhere."""
    return grad is None or int(_zeros_like_check(grad)) == 0



# ==== Q4 helpers (multi-query attention) ====

def q4_inputs(b, n, d, h, *, per_head=False, k=None, v=None, dtype=torch.float32, device="cpu", seed=0):
    """Random inputs of one incremental decoding step, in the shapes of Q4.

    Multi-query (``per_head=False``): x [b, d], prev_K [b, n, k], prev_V [b, n, v],
    W_q [h, d, k], W_k [d, k], W_v [d, v], W_o [h, v, d].
    Multi-head (``per_head=True``): prev_K [b, h, n, k], prev_V [b, h, n, v],
    W_k [h, d, k], W_v [h, d, v]; the rest as above. k and v default to d // h.
    Weights are scaled by 1/sqrt(fan-in) so that the logits stay of order sqrt(k).
    """
    k = d // h if k is None else k
    v = d // h if v is None else v
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    heads = (h,) if per_head else ()
    x = r(b, d)
    prev_K = r(b, *heads, n, k)
    prev_V = r(b, *heads, n, v)
    W_q = r(h, d, k, scale=d ** -0.5)
    W_k = r(*heads, d, k, scale=d ** -0.5)
    W_v = r(*heads, d, v, scale=d ** -0.5)
    W_o = r(h, v, d, scale=(h * v) ** -0.5)
    return x, prev_K, prev_V, W_q, W_k, W_v, W_o


def q4_step(fn, args, *, part):
    """Call a decoding-step function and check that it returns (y, new_K, new_V).

    An exception inside the student's function becomes an AssertionError that names the
    part and the error, so the message says which function failed and how.
    """
    name = getattr(fn, "__name__", "the function")
    try:
        out = fn(*args)
    except Exception as e:  # report, do not hide: the message carries the error
        raise AssertionError(f"{part}: {name} raised {type(e).__name__}: {e}") from None
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise AssertionError(f"{part}: {name} should return a tuple (y, new_K, new_V), "
                             f"got {type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return tuple(out)


def q4_computed(tensors, expected, rtol=None, atol=None):
    """True when some recorded tensor holds ``expected``'s values, with its axes in any order.

    Lets a test ask "was q = x W_q computed?" whether the student kept q as [b, h, k] or
    as [h, b, k] and permuted later. Size-1 axes are ignored on both sides.
    """
    import itertools
    expected = expected.squeeze()  # a [b, 1, k] copy of k = x W_k counts as k
    want = tuple(expected.shape)
    for t in tensors:
        t = t.squeeze()
        if t.dim() != expected.dim() or sorted(t.shape) != sorted(want):
            continue
        for perm in itertools.permutations(range(t.dim())):
            if tuple(t.shape[p] for p in perm) == want and close(t.permute(*perm), expected, rtol, atol):
                return True
    return False



# ==== Q6 helpers (kernelized linear attention: growth exponents, counters, timing) ====
#
# Generic machinery for "how does the cost grow?": growth exponents of cost formulas,
# operation counters (FLOPs, the largest intermediate tensor, elements written) and a
# timing verdict "linear or quadratic in N". Nothing here knows an answer: the tests
# pass in the function to measure and, where needed, the reference to compare with.

import time as _time
from torch.utils._python_dispatch import TorchDispatchMode as _TorchDispatchMode

# Ops that compute softmax attention in one fused kernel: they never show the N x N
# matrix as an output, so the recorder charges them the L x S matrix they imply.
_FUSED_ATTENTION_NAMES = ("scaled_dot_product", "flash_attention", "efficient_attention",
                          "cudnn_attention", "fused_attention")


def _log2(x):
    return math.log2(x)


def growth_exponents(cost, point, names=("N", "D", "M")):
    """Local growth exponents of ``cost(*point)``: doubling each variable in turn,
    exponent = log2(cost(doubled) / cost(point)). Works with Python ints (exact)."""
    base = _as_positive(cost, point, names)
    out = {}
    for i, name in enumerate(names):
        doubled = list(point)
        doubled[i] = doubled[i] * 2
        out[name] = _log2(_as_positive(cost, tuple(doubled), names)) - _log2(base)
    return out


def _as_positive(cost, point, names):
    args = ", ".join(f"{n}={v}" for n, v in zip(names, point))
    try:
        value = cost(*point)
    except Exception as exc:  # the student's expression failed
        raise AssertionError(f"{getattr(cost, '__name__', 'cost')}({args}) raised "
                             f"{type(exc).__name__}: {exc}") from None
    if isinstance(value, _Tensor):
        value = value.item()
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            ok = value > 0
        else:
            value = float(value)
            ok = math.isfinite(value) and value > 0
    except (TypeError, ValueError):
        raise AssertionError(f"{getattr(cost, '__name__', 'cost')} should return a number (an expression in "
                             f"{', '.join(names)}), got {type(value).__name__}") from None
    if not ok:
        raise AssertionError(f"{getattr(cost, '__name__', 'cost')} should be a positive, finite number for large "
                             f"{', '.join(names)}; got {value!r} at {args}")
    return value


def _fmt_exponents(exps):
    return " ".join(f"{n}^{e:.2f}" for n, e in exps.items())


def check_growth(cost, reference, *, part, regimes, names=("N", "D", "M"), tol=0.2, hints=None):
    """Compare how ``cost`` and ``reference`` grow, variable by variable, in each regime.

    ``regimes`` maps a description (e.g. "N >> D >> M") to a point of log2 sizes
    (e.g. (60, 20, 5)); constants and lower-order terms do not change the exponents
    there, so every expression with the same big-O passes. The message names the
    variable whose exponent is off and the student's own exponents, never the reference's.
    ``hints`` maps a variable name to an extra sentence for that variable.
    """
    for label, logs in regimes.items():
        point = tuple(2 ** int(l) for l in logs)
        got = growth_exponents(cost, point, names)
        want = growth_exponents(reference, point, names)
        off = [n for n in names if abs(got[n] - want[n]) > tol]
        if off:
            where = ", ".join(f"{n}=2^{int(l)}" for n, l in zip(names, logs))
            extra = " ".join((hints or {}).get(n, "") for n in off).strip()
            raise AssertionError(
                f"{part}: with {label} ({where}) your expression grows like {_fmt_exponents(got)} as each "
                f"variable doubles; the growth in {', '.join(off)} does not match the cost of the method."
                + (f" {extra}" if extra else ""))
        print(f"ok  {part}: growth exponents match with {label} (tolerance {tol})")


def fit_slope(xs, ys):
    """Least-squares slope of log2(y) against log2(x)."""
    lx = [_log2(x) for x in xs]
    ly = [_log2(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def doubling_exponents(xs, ys):
    """log2(y_{i+1} / y_i) / log2(x_{i+1} / x_i) for consecutive sizes."""
    return [(_log2(ys[i + 1]) - _log2(ys[i])) / (_log2(xs[i + 1]) - _log2(xs[i])) for i in range(len(xs) - 1)]


def _median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class OpRecorder(_TorchDispatchMode):
    """Record every aten op run inside the block: its output sizes.

    ``largest`` is the element count of the largest tensor any op produced (with the op's
    name in ``largest_op``), ``written`` the total number of elements written. Fused
    attention kernels (``scaled_dot_product_attention`` and friends) are charged the
    L x S attention matrix they compute internally, so they cannot hide it.
    """

    def __init__(self):
        super().__init__()
        self.largest, self.largest_op, self.written, self.ops, self.fused = 0, None, 0, 0, []

    def _note(self, numel, name):
        self.written += numel
        if numel > self.largest:
            self.largest, self.largest_op = numel, name

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        full = str(func)
        self.ops += 1
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, _Tensor):
                self._note(t.numel(), full)
        if any(key in full for key in _FUSED_ATTENTION_NAMES):
            q, k = args[0], args[1]
            if isinstance(q, _Tensor) and isinstance(k, _Tensor) and q.dim() >= 2 and k.dim() >= 2:
                implied = (q.numel() // max(q.shape[-1], 1)) * k.shape[-2]
                self.fused.append(full)
                self._note(implied, f"{full} (fused attention: implied {q.shape[-2]}x{k.shape[-2]} matrix)")
        return out


def count_costs(fn, args):
    """FLOPs (torch's FlopCounterMode), largest intermediate and elements written by fn(*args)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            with OpRecorder() as rec:
                fn(*args)
    return {"flops": int(counter.get_total_flops()), "largest": rec.largest, "largest_op": rec.largest_op,
            "written": rec.written, "fused": list(rec.fused)}


def cost_exponents(fn, make_args, sizes):
    """count_costs at each size and the growth exponent of each count over the last doubling."""
    rows = [count_costs(fn, make_args(n)) for n in sizes]
    exps = {}
    for key in ("flops", "largest", "written"):
        a, b = rows[-2][key], rows[-1][key]
        if a > 0 and b > 0:
            exps[key] = (_log2(b) - _log2(a)) / (_log2(sizes[-1]) - _log2(sizes[-2]))
        else:
            exps[key] = 0.0 if a == b else math.inf
    return rows, exps


_COUNT_WORDS = {"flops": "floating-point operations (matrix products)",
                "largest": "the largest intermediate tensor",
                "written": "the number of tensor elements written (all ops)"}


def check_linear_cost(fn, make_args, sizes, *, part, limit=1.5):
    """Deterministic check that the work and memory of ``fn`` grow linearly in N.

    Measures, as N doubles, three exact counts and fails if any grows faster than
    N^limit: torch's FLOP counter (matrix products), the largest tensor any op produced
    (catches an N x N matrix however it is built, also inside fused attention kernels) and
    the elements written by all ops (catches Python loops over N that redo O(N) work).
    """
    rows, exps = cost_exponents(fn, make_args, sizes)
    last = rows[-1]
    if last["fused"]:
        raise AssertionError(f"{part}: calls a fused softmax-attention kernel ({last['fused'][0]}); that computes "
                             "an N x N attention matrix internally, which is quadratic in N")
    for key in ("largest", "flops", "written"):
        if exps[key] > limit:
            extra = ""
            if key == "largest":
                extra = f" (largest tensor: {last['largest']} elements at N={sizes[-1]}, from {last['largest_op']})"
            raise AssertionError(
                f"{part}: {_COUNT_WORDS[key]} grows like N^{exps[key]:.2f} when N doubles "
                f"({sizes[-2]} -> {sizes[-1]}){extra}: that is quadratic, not linear in N. "
                "Something of size N x N is being built or computed.")
    print(f"ok  {part}: counts grow like N^{exps['flops']:.2f} (flops), N^{exps['largest']:.2f} (largest tensor), "
          f"N^{exps['written']:.2f} (elements written) for N {sizes[-2]} -> {sizes[-1]} (limit N^{limit})")
    return exps


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _call_time(fn, args, device, clock="wall"):
    """Seconds one call of fn(*args) takes: wall clock (CUDA synchronised before and after)
    or, with clock="cpu", the CPU time of this process (time spent descheduled by other
    programs does not count)."""
    _sync(device)
    if clock == "cpu":
        t0 = _time.process_time_ns()
        fn(*args)
        _sync(device)
        return (_time.process_time_ns() - t0) * 1e-9
    t0 = _time.perf_counter()
    fn(*args)
    _sync(device)
    return _time.perf_counter() - t0


def measure_growth(fn, make_args, *, device="cpu", clock=None, start=256, floor_s=None, doublings=4, rounds=7,
                   max_call_s=0.1, max_n=2 ** 17, threshold=1.6, grey=0.25, seed=0):
    """Measured growth of the time of fn(*make_args(N)) with N, robust to a noisy machine.

    Clock: on CUDA the wall clock, synchronised before and after each call. On CPU the
    CPU time of this process (``clock="cpu"``, the default there): on a shared machine a
    call of a few ms is often descheduled in favour of other programs, which inflates its
    wall-clock time by 1.5-4x at random and made wall-clock verdicts flip (see
    benchmarks/scaling_verdict.py); ``clock="wall"`` is available for comparison.

    1. Past overheads: N starts at ``start`` and doubles until one call takes at least
       ``floor_s`` (0.5 ms), so fixed per-call costs (Python, kernel
       launches) cannot flatten the growth.
    2. Sizes N0, 2 N0, ... (``doublings`` doublings), each timed min-of-3 in increasing
       order (also a warm-up), stopping after a size whose call takes longer than
       ``max_call_s`` (a quadratic method gets expensive fast; such a size is dropped again
       when at least three sizes remain without it).
    3. ``rounds`` rounds, each timing every size once in a shuffled order (interleaved,
       so a burst of background load hits all sizes alike); the minimum per size is kept
       (interference only ever adds time).
    4. Statistic: the median of the per-doubling exponents log2(t(2N)/t(N)) -- one
       cache-size jump cannot move it. Linear methods give about 1, quadratic about 2;
       the verdict is "linear" below ``threshold`` (1.6: in 200 benchmark verdicts the
       linear method's statistic stayed below 1.35, the impostor's above 1.84). Inside
       threshold +- ``grey`` the rounds are repeated once more before deciding.
    On CPU the measurement runs with one torch thread (restored afterwards): the growth
    exponent does not depend on it, and idle worker threads would add noise.
    Returns a dict with sizes, times (s), exponents, statistic, verdict, seconds spent.
    """
    import random

    t_start = _time.perf_counter()
    dev = torch.device(device)
    if clock is None:
        clock = "wall" if dev.type == "cuda" else "cpu"
    if floor_s is None:
        floor_s = 5e-4
    rng = random.Random(seed)

    def timed(args, k=1):
        return min(_call_time(fn, args, device, clock) for _ in range(k))

    threads = torch.get_num_threads()
    if dev.type == "cpu" and threads != 1:
        torch.set_num_threads(1)  # with several threads, idle threads spin on the CPU clock while they wait
    try:
        return _measure(fn, make_args, device, dev, timed, clock, start, floor_s, doublings, rounds, max_call_s,
                        max_n, threshold, grey, rng, t_start)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _measure(fn, make_args, device, dev, timed, clock, start, floor_s, doublings, rounds, max_call_s, max_n,
             threshold, grey, rng, t_start):
    with torch.no_grad():
        # 1. warm up and find the first size past the overheads
        n = start
        args = make_args(n)
        timed(args, 2)
        while True:
            t = timed(args, 3)
            if t >= floor_s or n * 2 > max_n:
                break
            n *= 2
            args = make_args(n)
            timed(args)
        # 2. the sizes, in increasing order
        sizes, inputs, best = [n], {n: args}, {n: t}
        for _ in range(doublings):
            if best[sizes[-1]] > max_call_s or sizes[-1] * 2 > max_n:
                break
            m = sizes[-1] * 2
            try:
                inputs[m] = make_args(m)
                best[m] = timed(inputs[m])
                if best[m] <= max_call_s:
                    best[m] = min(best[m], timed(inputs[m], 2))
            except (MemoryError, RuntimeError) as exc:  # out of memory: keep what we have
                inputs.pop(m, None)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
                    raise
                break
            sizes.append(m)
            if best[m] > max_call_s and len(sizes) > 3:  # too slow to repeat: enough sizes without it
                sizes.pop()
                inputs.pop(m)
                break

        # 3. interleaved rounds, minimum per size
        def run_rounds(k):
            for _ in range(k):
                order = list(sizes)
                rng.shuffle(order)
                for m in order:
                    best[m] = min(best[m], _call_time(fn, inputs[m], device, clock))

        def summary():
            times = [best[m] for m in sizes]
            exps = doubling_exponents(sizes, times) if len(sizes) > 1 else [0.0]
            return times, exps, _median(exps)

        run_rounds(rounds)
        times, exps, stat = summary()
        extended = False
        if abs(stat - threshold) < grey:
            run_rounds(rounds)
            times, exps, stat = summary()
            extended = True
    return {"sizes": sizes, "times": times, "exponents": exps, "statistic": stat,
            "slope": fit_slope(sizes, times) if len(sizes) > 1 else 0.0,
            "verdict": "linear" if stat < threshold else "quadratic", "extended": extended, "threshold": threshold,
            "seconds": _time.perf_counter() - t_start, "device": str(dev), "clock": clock}


def check_linear_time(fn, make_args, *, part, device="cpu", **kwargs):
    """Fail unless the wall-clock time of fn grows linearly in N (see measure_growth)."""
    r = measure_growth(fn, make_args, device=device, **kwargs)
    table = ", ".join(f"N={n}: {t * 1e3:.2f} ms" for n, t in zip(r["sizes"], r["times"]))
    exps = ", ".join(f"{e:.2f}" for e in r["exponents"])
    if r["verdict"] != "linear":
        raise AssertionError(f"{part}: on {device} the {r['clock']} time grows like N^{r['statistic']:.2f} (per-doubling "
                             f"exponents {exps}; {table}) -- that is quadratic, not linear in N")
    print(f"ok  {part}: on {device} the {r['clock']} time grows like N^{r['statistic']:.2f} (median of per-doubling exponents "
          f"{exps}; {table}; linear below N^{r['threshold']:g}; {r['seconds']:.1f} s)")
    return r


def elu_feature_map(x):
    """phi(x) = elu(x) + 1, the positive feature map of Katharopoulos et al. (C = D)."""
    return torch.nn.functional.elu(x) + 1


def attention_inputs(D, M, *, device="cpu", dtype=torch.float32, batch=(), seed=0):
    """make_args(N) -> (Q, K, V) of shapes [*batch, N, D], [*batch, N, D], [*batch, N, M]."""
    dev = torch.device(device)

    def make_args(n):  # generated on the device itself (large CUDA inputs never pass through host memory)
        g = torch.Generator(device=dev).manual_seed(seed + n)
        return tuple(torch.randn(*batch, n, d, generator=g, dtype=dtype, device=dev) for d in (D, D, M))
    return make_args
