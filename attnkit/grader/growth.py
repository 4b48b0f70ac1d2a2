"""How the cost of the student's function grows with N, measured from outside the kernel.

Grader process only. The kernel computes; the grader reads its CPU time and peak memory from /proc
(grader/meter.py) around each call, so nothing the student's process does to its own clocks, counters
or torch's FLOP counter moves a verdict. Inputs are sent once and kept in the kernel; timed calls send
references and keep their result in the kernel, so a timed call carries no data.

The time statistic is attention_checks.measure_growth's, designed on measurements
(benchmarks/scaling_verdict.py): sizes past the per-call overhead, interleaved rounds, the minimum per
size, the median of the per-doubling exponents, a grey zone that doubles the rounds.
"""
from __future__ import annotations

import math
import random
import time


def _median(values):
    v = sorted(values) or [0.0]
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def _exponents(sizes, costs):
    return [math.log2(max(costs[i + 1], 1e-12) / max(costs[i], 1e-12)) / math.log2(sizes[i + 1] / sizes[i])
            for i in range(len(sizes) - 1)]


class Timer:
    """Seconds of one call of the student's ``fn`` on kept inputs: the kernel's CPU time (CPU) or the
    wall clock around a synchronised call (CUDA), less ``overhead``: the least of five readings of a request
    that does nothing (the agent's and ipykernel's own work). Sizes start where a call takes three times
    that, so what is left of the overhead's variation is small against the call."""

    def __init__(self, kernel, meter, fn, device="cpu"):
        self.kernel, self.meter, self.fn, self.cuda = kernel, meter, fn, str(device).startswith("cuda")
        self.calls, self.pids, self.overhead = 0, [], 0.0
        self.overhead = min(self._raw(None, ()) for _ in range(5))  # (read before any subtraction)

    def _raw(self, fn, args):
        call = (lambda: self.kernel.request(op="noop")) if fn is None else \
            (lambda: self.kernel.call_discarding(fn, *args, sync=self.cuda))
        if self.cuda:
            t = time.perf_counter()
            call()
            return time.perf_counter() - t
        self.calls += 1
        if self.calls % 16 == 1:  # the kernel's processes, looked up again now and then (a scan costs ms)
            self.pids = self.meter.pids()
        before = self.meter.cpu_ns(self.pids)
        call()
        return (self.meter.cpu_ns(self.pids) - before) / 1e9

    def __call__(self, args) -> float:
        return max(self._raw(self.fn, args) - self.overhead, 1e-9)


def measure_time_growth(kernel, meter, fn, make_args, *, device="cpu", start=256, floor_s=1e-3, doublings=4, rounds=7,
                        max_call_s=0.1, max_n=2 ** 17, threshold=1.6, grey=0.25, seed=0, verify=None):
    """{sizes, times, exponents, statistic, verdict, seconds}: see the module docstring. ``verify(args, found)``
    checks what one (untimed) call at each size returns (kernel.describe): a function that is fast because
    it computes something smaller fails there."""
    t_start = time.perf_counter()
    rng = random.Random(seed)
    timed = Timer(kernel, meter, fn, device)
    floor_s = max(floor_s, 3 * timed.overhead)
    best = {}

    kept = []  # references this measurement made (released at the end), not the ones it was given

    def keep(n):
        values = make_args(n)
        refs = kernel.keep(*(v for v in values if not callable(v)))
        kept.extend(refs)
        refs = [refs.pop(0) if not callable(v) else v for v in values]
        if verify is not None:  # one untimed call, what it returns checked (shape, dtype)
            verify(values, kernel.describe(fn, *refs))
        return refs

    n = start
    args = keep(n)
    timed(args)
    while True:  # past the overheads
        t = min(timed(args) for _ in range(3))
        if t >= floor_s or n * 2 > max_n:
            break
        n *= 2
        args = keep(n)
        timed(args)
    sizes, inputs, best[n] = [n], {n: args}, t
    for _ in range(doublings):
        if best[sizes[-1]] > max_call_s or sizes[-1] * 2 > max_n:
            break
        m = sizes[-1] * 2
        inputs[m] = keep(m)
        best[m] = min(timed(inputs[m]) for _ in range(1 if best[sizes[-1]] * 2 > max_call_s else 3))
        sizes.append(m)
        if best[m] > max_call_s and len(sizes) > 3:
            sizes.pop()
            break

    def run_rounds(k):
        for _ in range(k):
            order = list(sizes)
            rng.shuffle(order)
            for m in order:
                best[m] = min(best[m], timed(inputs[m]))

    try:
        run_rounds(rounds)
        exps = _exponents(sizes, [best[m] for m in sizes])
        stat = _median(exps)
        if abs(stat - threshold) < grey:
            run_rounds(rounds)
            exps = _exponents(sizes, [best[m] for m in sizes])
            stat = _median(exps)
    finally:
        kernel.release(*kept)
    return {"sizes": sizes, "times": [best[m] for m in sizes], "exponents": exps, "statistic": stat,
            "verdict": "linear" if stat < threshold else "quadratic", "threshold": threshold,
            "seconds": time.perf_counter() - t_start, "clock": "wall" if timed.cuda else "kernel CPU"}


def check_linear_time(kernel, meter, fn, make_args, *, part, device="cpu", **kwargs):
    """Fail unless the kernel's time for fn grows linearly in N (measure_time_growth)."""
    r = measure_time_growth(kernel, meter, fn, make_args, device=device, **kwargs)
    table = ", ".join(f"N={n}: {t * 1e3:.2f} ms" for n, t in zip(r["sizes"], r["times"]))
    exps = ", ".join(f"{e:.2f}" for e in r["exponents"])
    if r["verdict"] != "linear":
        raise AssertionError(f"{part}: on {device} the {r['clock']} time grows like N^{r['statistic']:.2f} (per-doubling "
                             f"exponents {exps}; {table}) -- that is quadratic, not linear in N")
    print(f"ok  {part}: on {device} the {r['clock']} time grows like N^{r['statistic']:.2f} (median of per-doubling "
          f"exponents {exps}; {table}; linear below N^{r['threshold']:g}; {r['seconds']:.1f} s)")
    return r


def check_linear_memory(kernel, meter, fn, make_args, sizes, *, part, floor_mb=8.0, limit=1.5):
    """Fail if the kernel's peak memory during one call grows faster than N^limit while reaching at least
    ``floor_mb`` MB above its resident set before the call (an N x N matrix, however it is built)."""
    peaks = []
    for n in sizes:
        values = make_args(n)
        kept = kernel.keep(*(v for v in values if not callable(v)))
        refs = list(kept)
        args = [refs.pop(0) if not callable(v) else v for v in values]
        base = meter.reset_peak()
        kernel.call_discarding(fn, *args)
        peaks.append(max(meter.peak_bytes() - base, 1))
        kernel.release(*kept)
    exps = _exponents(sizes, peaks)
    table = ", ".join(f"N={n}: {p / 2 ** 20:.1f} MB" for n, p in zip(sizes, peaks))
    if exps[-1] > limit and peaks[-1] >= floor_mb * 2 ** 20:
        raise AssertionError(f"{part}: the memory one call takes grows like N^{exps[-1]:.2f} when N doubles ({table}): "
                             "quadratic, not linear in N -- something of size N x N is being built")
    print(f"ok  {part}: the memory one call takes above what the kernel held ({table}) does not grow like N^2 "
          f"(fails above N^{limit:g} with more than {floor_mb:g} MB)")
    return peaks
