"""How the cost of the student's function grows with N, measured from outside the kernel.

Grader process only. The kernel computes; the grader reads its CPU time and peak memory (grader/meter.py:
the kernel's cgroup, else /proc) around each call, so nothing the student's process does to its own clocks,
counters or torch's FLOP counter moves a verdict.

Every measured call is the same request (Kernel.call_keeping): fresh inputs drawn in the kernel from seeds
chosen now (never inputs a call saw before, so nothing can be cached by identity or value), the value kept in
the kernel and then checked here (its shape, and random rows against ``reference``). A timed call and a
checked call are one and the same, so the student's code cannot behave differently when timed.

The time statistic (designed on measurements: benchmarks/scaling_verdict.py) fits the cost as
a + b1 N + b2 N^2, the constant a being whatever a call costs whatever N is (the request, a slow setup of the
student's), and asks how the part that depends on N grows at the top size: d log(b1 N + b2 N^2) / d log N,
1 where all of it is linear, 2 where all of it is quadratic; quadratic from 1.5 (the N^2 term half of it).
(A single power a + b N^k was tried first: an N x N matrix built in a forked child, whose fork and pickling
add a linear part, fitted k = 1.60 at the threshold.)

* sizes double from the first past the noise floor; at least three, and on past ``max_call_s`` while the
  N-dependent part is less than half the top size's time (a constant hides the growth below that);
* interleaved rounds with fresh inputs over the top ``max_sizes`` sizes, the least time per size, then the fit
  (weighted least squares, coefficients >= 0); rounds stop after four once the statistic is 2 ``grey`` or more
  from the threshold (every call costs a draw of fresh inputs and a check); one nearer first adds the next size
  where a call there stays under ``hard_call_s`` (a quadratic part grows four times as fast there: an N x N
  matrix built in a forked child, whose fork and pickling cost a constant and a linear part, was judged N^1.66
  from a top size of 2048, N^1.98 from 8192), then takes more rounds, and within ``grey`` as many again;
* a linear verdict from a top size below the cap, where a call passed ``max_call_s`` and so stopped the
  doubling, adds sizes while the fit says a call stays under ``hard_call_s`` (an N x N matrix built in a
  forked child, its fork's cost a constant and a linear part, stopped at 2048 beside two busy loops: N^1.13);
* a quadratic verdict is measured again and stands only if two of at most three measurements say so (load
  spoils a linear answer's top size now and then: once, rarely twice);
* where the rounds leave the constant more than half the top size's time, sizes are added toward the cap (a
  right answer with a 30 ms constant stopped at 4096 with 27.5 of its 57.7 ms depending on N, once in 95);
* a measurement whose N-dependent part stays small up to the size cap, or that a process started during a
  timed call spoiled (a meter that cannot count it), is inconclusive: measured again once, then the test fails
  saying why. No verdict comes from fewer than three sizes.
"""
from __future__ import annotations

import math
import random
import time

import torch

from attnkit.kernel import wire


class Inconclusive(Exception):
    """A measurement that gives no verdict (why in the message)."""


def fit_cost(sizes, costs):
    """(a, b1, b2): the a + b1 N + b2 N^2 (all >= 0) nearest ``costs`` in relative terms (weighted least
    squares over every subset of the three terms; the best one whose coefficients are all >= 0)."""
    w = [1 / max(c, 1e-12) ** 2 for c in costs]
    columns = [[1.0] * len(sizes), [float(n) for n in sizes], [float(n) ** 2 for n in sizes]]
    best = (math.inf, (0.0, 0.0, 0.0))
    for mask in range(1, 8):
        terms = [j for j in range(3) if mask >> j & 1]
        gram = torch.tensor([[sum(wi * columns[r][i] * columns[c][i] for i, wi in enumerate(w)) for c in terms]
                             for r in terms], dtype=torch.float64)
        rhs = torch.tensor([sum(wi * columns[r][i] * costs[i] for i, wi in enumerate(w)) for r in terms],
                           dtype=torch.float64)
        try:
            coef = torch.linalg.solve(gram, rhs).tolist()
        except RuntimeError:  # (singular: a term that no size tells apart)
            continue
        if min(coef) < 0:
            continue
        full = [0.0, 0.0, 0.0]
        for j, c in zip(terms, coef):
            full[j] = c
        resid = sum(wi * (full[0] + full[1] * n + full[2] * n * n - t) ** 2 for wi, n, t in zip(w, sizes, costs))
        if resid < best[0]:
            best = (resid, tuple(full))
    return best[1]


def growth_exponent(fit, n) -> float:
    """How the part of the cost that depends on N grows at size n: d log(b1 N + b2 N^2) / d log N, between 1
    (all of it linear) and 2 (all of it quadratic); 1.5 where the N^2 term is half of it."""
    _, b1, b2 = fit
    grown = b1 * n + b2 * n * n
    return 1.0 + (b2 * n * n / grown if grown > 0 else 0.0)


def _fresh(values, rng):
    """The same kind of inputs, never seen before: every Randn redrawn from a new seed, every tensor a copy."""
    out = []
    for v in values:
        if isinstance(v, wire.Randn):
            v = wire.Randn(v.shape, rng.getrandbits(40), v.dtype, v.device)
        elif isinstance(v, torch.Tensor):
            v = v.clone()
        out.append(v)
    return out


MAX_REFERENCE = 1 << 26   # input elements up to which the grader recomputes a measured call's value
SETTLE_S = 5.0            # seconds a process a measured call started gets to exit before the next memory reading


def _tolerance(dtype) -> float:
    return 1e4 * torch.finfo(dtype).eps if dtype.is_floating_point else 0.0


class Measured:
    """Measured calls of the student's ``fn``: each on fresh inputs, its value checked afterwards.

    ``reference(*inputs) -> tensor`` (the grader's, on the same inputs drawn here; functions among the
    inputs are passed as they are) gives the rows each call is checked against; ``verify(values, found)``
    checks what the call returned ({"shape", "dtype", "device"}). Time: the kernel's CPU time (CPU) or the
    wall clock around a synchronised call (CUDA), less ``overhead``, the least of five readings of a request
    that does nothing."""

    def __init__(self, kernel, meter, fn, make_args, *, device="cpu", reference=None, verify=None, part="",
                 rng=None, samples=4):
        self.kernel, self.meter, self.fn, self.make_args = kernel, meter, fn, make_args
        self.cuda, self.reference, self.verify, self.part = str(device).startswith("cuda"), reference, verify, part
        self.rng, self.samples = rng or random.SystemRandom(), samples
        self.calls, self.pids, self.forked = 0, [], 0
        self.overhead = 0.0
        self.overhead = min(self._clock(lambda: kernel.request(op="noop")) for _ in range(5))
        self.resident = None  # the kernel's processes a memory reading allows (``_settle``)

    def _cpu(self) -> float:
        self.calls += 1
        if self.calls % 16 == 1:  # the kernel's processes, looked up again now and then (a scan costs ms)
            self.pids = self.meter.pids()
        return self.meter.cpu_ns(self.pids)

    def _clock(self, call):
        if self.cuda:
            t = time.perf_counter()
            call()
            return time.perf_counter() - t
        before = self._cpu()
        call()
        return (self._cpu() - before) / 1e9

    def _check(self, values, kept, n):
        rows = sorted(self.rng.sample(range(n), min(self.samples, n)))
        found = self.kernel.sample(kept, rows)
        if self.verify is not None:
            self.verify(values, {k: v for k, v in found.items() if k != "rows"})
        if self.reference is None or sum(math.prod(v.shape) for v in values if isinstance(v, (wire.Randn, torch.Tensor))) > MAX_REFERENCE:
            return  # (the largest CUDA sizes: their shape is checked, their values would take GBs here)
        inputs = [v.tensor() if isinstance(v, wire.Randn) else v for v in values]
        want = self.reference(*inputs)
        got = found.get("rows")
        if list(found.get("shape") or []) != list(want.shape) or not isinstance(got, torch.Tensor):
            raise AssertionError(f"{self.part}: for N = {n} the output has shape {found.get('shape')}, expected "
                                 f"{list(want.shape)} (every call whose time or memory is measured is checked too)")
        want = want.index_select(-2, torch.tensor(rows, device=want.device)).cpu().to(got.dtype)
        tol = _tolerance(want.dtype)  # atol on the values' scale (averages over N rows are small)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())):
            raise AssertionError(f"{self.part}: for N = {n} a measured call returned wrong values (every call "
                                 "whose time or memory is measured is checked too)")

    def _call(self, n, read):
        """One measured call at size n: ``read(call) -> number`` around it, then its value checked."""
        values = _fresh(self.make_args(n), self.rng)
        kept = self.kernel.keep(*(v for v in values if not callable(v)))
        refs = list(kept)
        args = [refs.pop(0) if not callable(v) else v for v in values]
        out = []
        try:
            for _ in range(3):
                forks = self.meter.forks()
                reading = read(lambda: out.append(self.kernel.call_keeping(self.fn, *args, sync=self.cuda)))
                if forks is None or self.meter.forks() == forks:
                    break
                self.forked += 1  # a process or thread started meanwhile: this meter cannot count it
                self.kernel.release(*out)
                out.clear()
            else:
                raise Inconclusive(f"a process or thread was started during every try of a measured call at "
                                   f"N = {n}, and this host gives the kernel no cgroup to count it in")
            self._check(values, out[-1], n)
            return reading
        finally:
            self.kernel.release(*kept, *out)

    def time(self, n) -> float:
        return max(self._call(n, self._clock) - self.overhead, 1e-9)

    def peak(self, n) -> int:
        """Bytes the kernel's peak memory rose during one call above what it held before. No process a measured
        call started may still be there when the peak is reset: until it has exited its memory is charged, in
        the base, and the next call's N x N matrix could take its place unseen (``_settle``)."""
        def read(call):
            self._settle()
            base = self.meter.reset_peak()
            call()
            return max(self.meter.peak_bytes() - base, 1)
        return self._call(n, read)

    def _settle(self) -> None:
        """Wait until the kernel has no process but those allowed. At the first reading those are the kernel
        (its oldest process other than the meter's ``launchers``, the kit's own processes that started it), those
        launchers, and whatever is still there ``SETTLE_S`` later (started before this test: what it holds is in
        every base alike); after that, only those: a process a measured call started that is still there
        ``SETTLE_S`` after its call makes the measurement inconclusive."""
        procs = getattr(self.meter, "procs", None)
        if procs is None:
            return
        launchers = getattr(self.meter, "launchers", frozenset())
        end = time.monotonic() + SETTLE_S
        while True:
            now = procs()
            rest = {p: t for p, t in now.items() if p not in launchers}
            allowed = self.resident if self.resident is not None else \
                (launchers & set(now)) | ({min(rest, key=rest.get)} if rest else set())
            if not set(now) - allowed:
                break
            if time.monotonic() >= end:
                if self.resident is None:
                    break
                raise Inconclusive(f"a process your code started in a measured call was still running {SETTLE_S:g} s "
                                   "after the call returned (its memory would hide the next call's)")
            time.sleep(0.005)
        if self.resident is None:
            self.resident = set(now)


def _measure(m: Measured, *, start, floor_s, max_call_s, hard_call_s, max_n, doublings, rounds, threshold, grey,
             share, max_sizes):
    floor_s = max(floor_s, 3 * m.overhead)
    n = start
    m.time(n)  # (first call: lazy imports, allocations)
    while True:  # past the overheads
        t = min(m.time(n) for _ in range(2))
        if t >= floor_s or n * 2 > max_n:
            break
        n *= 2
    if n * 4 > max_n and max_n // 4 >= start:  # three sizes up to the cap even where load puts the floor late:
        n = max_n // 4                         # the fit's constant takes what lies below the floor
        t = min(m.time(n) for _ in range(2))
    sizes, best = [n], {n: t}

    def grown(fit):  # the part of the top size's cost that depends on N
        return fit[1] * sizes[-1] + fit[2] * sizes[-1] ** 2

    def add_size(tries):  # the next size, the least of ``tries`` calls; the smallest size leaves past max_sizes
        n2 = sizes[-1] * 2  # (where the constant is all there is, it tells the fit least)
        best[n2] = min(m.time(n2) for _ in range(tries))
        sizes.append(n2)
        if len(sizes) > max_sizes:
            sizes.pop(0)

    def dominant():
        return len(sizes) >= 3 and grown(fit_cost(sizes, [best[s] for s in sizes])) >= share * best[sizes[-1]]

    expensive = False  # whether a call's cost stopped the doubling below the cap
    while sizes[-1] * 2 <= max_n:
        expensive = best[sizes[-1]] > max_call_s
        if best[sizes[-1]] >= hard_call_s or len(sizes) >= 3 and (len(sizes) > doublings or expensive) and dominant():
            break
        add_size(1 if best[sizes[-1]] * 4 > max_call_s else 2)
    if len(sizes) < 3:
        raise Inconclusive(f"only {len(sizes)} sizes could be measured below the size cap N = {max_n}")

    def run_rounds(k):
        for _ in range(k):
            order = list(sizes)
            m.rng.shuffle(order)
            for s in order:
                best[s] = min(best[s], m.time(s))

    def fitted():
        fit = fit_cost(sizes, [best[s] for s in sizes])
        return fit, growth_exponent(fit, sizes[-1])

    done = min(4, rounds)
    run_rounds(done)
    fit, k = fitted()
    # not far from the threshold: one size more where it can be afforded (a quadratic part grows four times as fast)
    if abs(k - threshold) < 2 * grey and sizes[-1] * 2 <= max_n and best[sizes[-1]] * 4 < hard_call_s:
        add_size(2)
        fit, k = fitted()
    while done < rounds and abs(k - threshold) < 2 * grey:  # more rounds until the verdict is clear
        run_rounds(1)
        done += 1
        fit, k = fitted()
    if abs(k - threshold) < grey:  # still near it: as many rounds again
        run_rounds(rounds)
        fit, k = fitted()
    while k < threshold and sizes[-1] * 2 <= max_n and expensive:  # an expensive call stopped the doubling below
        n2 = sizes[-1] * 2  # the cap: on while the fit says a call there stays under hard_call_s (not the least
        if sum(c * n2 ** j for j, c in enumerate(fit)) >= hard_call_s:  # time after the rounds, which may fall
            break                                                       # under max_call_s)
        add_size(2)
        run_rounds(1)
        fit, k = fitted()
    while grown(fit) < share * best[sizes[-1]] and sizes[-1] * 2 <= max_n and best[sizes[-1]] < hard_call_s:
        add_size(2)  # the rounds' least times left the constant ahead at the top: on toward the cap
        run_rounds(1)
        fit, k = fitted()
    top = best[sizes[-1]]
    if grown(fit) < share * top and (sizes[-1] * 2 <= max_n and top < hard_call_s or grown(fit) < 0.2 * top):
        raise Inconclusive(f"up to N = {sizes[-1]} a constant {fit[0] * 1e3:.1f} ms of every call hides how the rest "
                           f"grows ({grown(fit) * 1e3:.1f} ms at N = {sizes[-1]})")
    return sizes, [best[s] for s in sizes], fit, k


def measure_time_growth(kernel, meter, fn, make_args, *, device="cpu", start=256, floor_s=1e-3, doublings=4, rounds=7,
                        max_call_s=0.1, hard_call_s=1.0, max_n=2 ** 17, threshold=1.5, grey=0.15, share=0.5,
                        max_sizes=5, seed=None, verify=None, reference=None, part="", tries=2):
    """{sizes, times, fit (a, b1, b2), statistic (growth_exponent at the top size), verdict, seconds, clock}: see
    the module docstring.
    Raises Inconclusive (why) when ``tries`` measurements gave no verdict."""
    t_start = time.perf_counter()
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    m = Measured(kernel, meter, fn, make_args, device=device, reference=reference, verify=verify, part=part, rng=rng)
    failed, found = 0, []
    while True:  # quadratic only if two of at most three measurements say so (load spoils one now and then)
        try:
            found.append(_measure(m, start=start, floor_s=floor_s, max_call_s=max_call_s, hard_call_s=hard_call_s,
                                  max_n=max_n, doublings=doublings, rounds=rounds * (failed + 1), threshold=threshold,
                                  grey=grey, share=share, max_sizes=max_sizes))
        except Inconclusive:
            failed += 1
            if failed >= tries:
                raise
            continue
        quadratic = sum(f[3] >= threshold for f in found)
        if quadratic == 0 or quadratic >= 2 or len(found) - quadratic >= 2:
            break
    quadratic = sum(f[3] >= threshold for f in found) >= 2
    sizes, times, fit, k = next(f for f in reversed(found) if (f[3] >= threshold) == quadratic)
    attempt = failed + len(found) - 1
    return {"sizes": sizes, "times": times, "fit": fit, "statistic": k, "threshold": threshold,
            "verdict": "linear" if k < threshold else "quadratic", "tries": attempt + 1,
            "seconds": time.perf_counter() - t_start, "clock": "wall" if m.cuda else "kernel CPU",
            "meter": "cgroup" if getattr(meter, "counts_children", False) else "/proc"}


def check_linear_time(kernel, meter, fn, make_args, *, part, device="cpu", **kwargs):
    """Fail unless the kernel's time for fn grows linearly in N (measure_time_growth)."""
    try:
        r = measure_time_growth(kernel, meter, fn, make_args, device=device, part=part, **kwargs)
    except Inconclusive as exc:
        raise AssertionError(f"{part}: on {device} no verdict on how the time grows, measured twice: {exc}") from None
    table = ", ".join(f"N={n}: {t * 1e3:.2f} ms" for n, t in zip(r["sizes"], r["times"]))
    (a, b1, b2), k, top = r["fit"], r["statistic"], r["sizes"][-1]
    fit = (f"fitted as {a * 1e3:.2f} ms + {b1 * top * 1e3:.2f} ms (N/{top}) + {b2 * top * top * 1e3:.2f} ms "
           f"(N/{top})^2")
    if r["verdict"] != "linear":
        raise AssertionError(f"{part}: on {device} the {r['clock']} time grows like N^{k:.2f} ({fit}; {table}) -- that "
                             "is quadratic, not linear in N")
    print(f"ok  {part}: on {device} the {r['clock']} time grows like N^{k:.2f} ({fit}; {table}; linear below "
          f"N^{r['threshold']:g}; {r['seconds']:.1f} s)")
    return r


def check_linear_memory(kernel, meter, fn, make_args, sizes, *, part, floor_mb=8.0, limit=1.5, reference=None,
                        verify=None, seed=None):
    """Fail if the kernel's peak memory during one call grows faster than N^limit while reaching at least
    ``floor_mb`` MB above what the kernel held before the call (an N x N matrix, however it is built).
    Each call on fresh inputs, its value checked (``reference``, ``verify``: see Measured)."""
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    m = Measured(kernel, meter, fn, make_args, reference=reference, verify=verify, part=part, rng=rng)
    try:
        peaks = [m.peak(n) for n in sizes]
    except Inconclusive as exc:
        raise AssertionError(f"{part}: no verdict on the memory one call takes: {exc}") from None
    exps = [math.log2(peaks[i + 1] / peaks[i]) / math.log2(sizes[i + 1] / sizes[i]) for i in range(len(sizes) - 1)]
    table = ", ".join(f"N={n}: {p / 2 ** 20:.1f} MB" for n, p in zip(sizes, peaks))
    if exps[-1] > limit and peaks[-1] >= floor_mb * 2 ** 20:
        raise AssertionError(f"{part}: the memory one call takes grows like N^{exps[-1]:.2f} when N doubles ({table}): "
                             "quadratic, not linear in N -- something of size N x N is being built")
    print(f"ok  {part}: the memory one call takes above what the kernel held ({table}) does not grow like N^2 "
          f"(fails above N^{limit:g} with more than {floor_mb:g} MB)")
    return peaks
