"""How reliable is the timing verdict "linear or quadratic in N"? (evidence for Q6)

Runs ``attention_checks.measure_growth`` -- the statistic behind the Q6 timing test --
many times on a correct linear-attention implementation and on a quadratic impostor
(right values, but it builds the N x N matrix), on a quiet machine and under background
load (busy-loop processes, by default one per core), exactly as the hidden test calls it
(one torch thread, elu+1 feature map, D = M = 128, CPU time of the process on CPU).
``--clock wall`` runs the same statistic on the wall clock instead, for comparison.
Prints the wrong verdicts:

  false fail = the linear implementation judged quadratic
  false pass = the impostor judged linear

and the seconds each verdict took. Not a unit test; run it by hand:

    .venv/bin/python benchmarks/scaling_verdict.py --trials 50            # quiet and loaded
    .venv/bin/python benchmarks/scaling_verdict.py --trials 20 --clock wall
    .venv/bin/python benchmarks/scaling_verdict.py --trials 20 --load loaded --busy 4
    .venv/bin/python benchmarks/scaling_verdict.py --trials 50 --where kernel   # in forked grading kernels
    .venv/bin/python benchmarks/scaling_verdict.py --trials 15 --where grader   # as the hidden test: from outside

Seen on the 2-core development machine (shared with other jobs, load average 3-9):
CPU clock, 50 + 50 trials quiet and 50 + 50 under 2 busy loops: 0 wrong verdicts; linear
statistic 1.00-1.18, impostor 1.86-2.07; 0.46 s (quiet) / 1.56 s (loaded) per verdict.
4 busy loops, 20 + 20: 0 wrong. Wall clock, 20 + 20 each: 1 false fail quiet, 1 loaded.
--where grader (the hidden test since the grader process: the kernel's CPU time read from outside, less a request's
own cost), 15 + 15 quiet and 15 + 15 under 2 busy loops: 0 wrong; loaded, linear 0.92-1.26, impostor
1.73-2.19; about 2 s per verdict. (Without subtracting a request's own cost the impostor's statistic fell to
1.53-1.95: 13 false passes in 30.)
--where grader since the cgroup meters and the a + b1 N + b2 N^2 statistic (fresh inputs every call, every value
checked; N up to 8192 as the Q6 test), 2-core machine shared with other jobs: quiet (load average 3-5), 3 trials of
each of 7 cases: 0 wrong verdicts (linear 1.00-1.16, linear + 30 ms 1.00-1.30, every quadratic 2.00, 2-15 s a
verdict). Beside 2 busy loops (load average 4.6), 2 trials each: 2 false fails, both a linear answer whose top
size (N = 8192, 4 MB tensors allocated fresh in every call) cost 3.5x the size below in both measurements; every
quadratic 2.00. With N up to 16384, quiet, linear answers failed the same way 4 times in 6.
Why (measured in a grading kernel, the cgroup's page-fault count around each call): glibc's mmap threshold moves
with what was freed, so fresh 1-4 MB tensors came from reused heap in some calls (0 faults) and from new mappings
in others (up to 7136 faults at N = 8192): the same linear answer cost 3.98 ms at N = 2048 and 13.37 ms at 4096
(3.4x) in one pass, 7.04 and 14.27 ms in the next. The kernel now fixes the threshold at 128 KiB
(attnkit/kernel/__main__.py): every call faults its fresh tensors in, 1032, 2313, 4617, 9225 faults at N = 1024 to
8192 in every pass, 4.5, 9.1, 17.9, 33.8 ms. The fork attacks (impostor_forked, impostor_double_fork) were added:
with the moving threshold the fit found them a linear part of 30-50 ms at N = 4096 (statistic 1.66-1.81, one
from a top size of 2048; likely the children writing into copy-on-write pages of the parent's heap, where they now
get fresh mappings); a statistic within 0.3 of the threshold now first measures the next size.
Since then, 0 wrong verdicts: quiet, 2 trials of each of the 9 cases (the forked ones added; load average 7-9
from other jobs on the 2 cores in the first, 3.6 in the second); beside 2 busy loops (load average 7-12), 1 trial
of each, then 4 more of linear and linear_30ms and 2 more of impostor_forked, impostor_double_fork and
impostor_30ms. Linear 1.00-1.04 (before, beside 2 busy loops on the same machine: 1.17-1.33, and 1 of 3 verdicts
needed its second measurement), linear + 30 ms 1.00-1.07, every linear verdict from its first measurement;
quadratics 1.79-2.00 (forked 1.81-1.94, double fork 1.79-1.91). At load 3.6: 2-3 s a linear verdict, 6-12 s a
quadratic one (two measurements); at load 7-12: 3-17 s and 9-38 s.
Then on the merged tree, 6 trials of each case quiet and 6 beside 2 busy loops (load average 2-3): 1 wrong verdict
in 108, impostor_forked beside the loops judged linear (first measurement quadratic, the second stopped at N = 2048
with k 1.13: a quadratic verdict needs two that agree); right answers never wrong (linear 1.00-1.08, linear + 30 ms
1.00-1.12, each from its first measurement); every other quadratic 1.75-2.00. Not yet 0 wrong.
Then a quadratic verdict took two of at most three measurements, and a linear measurement whose doubling an
expensive call stopped below the cap measured on. 30 + 30 trials of linear, linear_30ms, impostor and
impostor_forked quiet (load average 3.2 from other jobs): 0 wrong. Beside 2 busy loops (load 4-8): 1 wrong, an
impostor_forked judged linear from 256..2048 (k 1.00): the rounds' least time at 2048 had fallen back under
max_call_s, so the rule did not see the stop as expensive. Judged where the doubling stops: beside 2 busy loops,
30 trials each of linear, linear_30ms, impostor_forked and impostor_double_fork (load average 4.4-8): 0 wrong
(linear 1.00-1.25, linear + 30 ms 1.00-1.17, forked 1.74-2.00, double fork 1.72-2.00); then 5 + 5 trials of all
9 cases quiet (load 2.1) and beside 2 busy loops (load 4.3): 0 wrong. 30 trials each of linear, linear_30ms,
impostor and impostor_forked quiet (load 1.1): 0 wrong, but one linear_30ms left without a verdict (it would
fail): the doubling stopped at 4096 with 27.5 of 57.7 ms depending on N, the constant still ahead after the
rounds. Such a measurement now adds sizes toward the cap first; then 10 trials each of linear_30ms and
impostor_100ms quiet (load 1.5): 0 wrong, every one a verdict (linear 1.00-1.13, impostor 1.88-2.00).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "source" / "hw9"))
import attention_checks as ac  # noqa: E402

# The parameters of the hidden timing test (q6_linear_timing): keep them in step.
D = M = 128


def linear_attention(Q, K, V, feature_map=ac.elu_feature_map):
    """Eq. (6): S = phi(K)^T V and z = sum_j phi(K_j) first; never an N x N tensor."""
    pq, pk = feature_map(Q), feature_map(K)
    S = pk.transpose(-2, -1) @ V
    z = pk.sum(dim=-2)
    return (pq @ S) / (pq @ z.unsqueeze(-1))


def impostor_attention(Q, K, V, feature_map=ac.elu_feature_map):
    """Same values, but builds the N x N similarity matrix: quadratic in N."""
    pq, pk = feature_map(Q), feature_map(K)
    A = pq @ pk.transpose(-2, -1)
    return (A @ V) / A.sum(dim=-1, keepdim=True)


IMPLEMENTATIONS = {"linear": (linear_attention, "linear"), "impostor": (impostor_attention, "quadratic")}


def _busy():  # pragma: no cover - runs in a child process
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def _load(condition, busy):
    """The busy-loop processes of the loaded condition (none when quiet), started and settled."""
    procs = []
    if condition == "loaded":
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_busy, daemon=True) for _ in range(busy)]
        for p in procs:
            p.start()
        time.sleep(1.0)
    return procs


def _unload(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.join()


def run(trials, condition, busy, device, clock=None, seed0=0):
    procs = _load(condition, busy)
    make_args = ac.attention_inputs(D, M, device=device)
    results = {name: [] for name in IMPLEMENTATIONS}
    try:
        for trial in range(trials):
            for name, (fn, truth) in IMPLEMENTATIONS.items():
                r = ac.measure_growth(fn, make_args, device=device, clock=clock, seed=seed0 + trial)
                r["truth"] = truth
                results[name].append(r)
                print(f"  [{condition}] trial {trial + 1:3d} {name:8s} verdict {r['verdict']:9s} "
                      f"statistic {r['statistic']:.2f} exponents {[round(e, 2) for e in r['exponents']]} "
                      f"N {r['sizes'][0]}..{r['sizes'][-1]} {r['seconds']:.2f} s"
                      + (" (extended)" if r["extended"] else ""), flush=True)
    finally:
        _unload(procs)
    return results


KERNEL_CODE = """
import inspect, json, torch
import attention_checks as ac
torch.set_num_threads({threads})
{sources}
_out = {{}}
for _name, _fn in (("linear", linear_attention), ("impostor", impostor_attention)):
    _r = ac.measure_growth(_fn, ac.attention_inputs({D}, {M}, device="cpu"), device="cpu", clock={clock!r}, seed={seed})
    _out[_name] = {{k: _r[k] for k in ("verdict", "statistic", "exponents", "sizes", "seconds", "extended", "clock")}}
print("RESULT " + json.dumps(_out))
"""


def run_in_kernels(trials, condition, busy, threads, clock=None, seed0=0):
    """The same verdicts, each trial in a fresh grading kernel forked from the warm-start interpreter
    inside the bwrap sandbox, with the sandbox's limits (RLIMIT_CPU included): as autograde runs them."""
    import asyncio
    import inspect
    import json
    import shutil
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from attnkit import sandbox

    if not sandbox.warm_enabled() or sandbox.detect() != "bwrap":
        raise SystemExit("--where kernel needs the bwrap sandbox as root with the warm start on")
    workdir = tempfile.mkdtemp(prefix="attnkit-verdict-")
    os.chmod(workdir, 0o755)
    shutil.copy(Path(ac.__file__), workdir)
    os.chmod(os.path.join(workdir, "attention_checks.py"), 0o644)
    sources = inspect.getsource(linear_attention) + "\n" + inspect.getsource(impostor_attention)
    procs = _load(condition, busy)
    results = {name: [] for name in IMPLEMENTATIONS}

    def one(trial):
        code = KERNEL_CODE.format(threads=threads, sources=sources, D=D, M=M, clock=clock, seed=seed0 + trial)
        out, proc = asyncio.run(sandbox.run_source(workdir, code))
        if not isinstance(proc, sandbox.ForkedKernel):
            raise SystemExit("the kernel was started cold, not forked: not what this mode measures")
        line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"the kernel gave no result: {out[-1500:]}")
        return json.loads(line[len("RESULT "):])

    try:
        with sandbox.warm_start():
            for trial in range(trials):
                got = one(trial)
                for name, (_fn, truth) in IMPLEMENTATIONS.items():
                    r = {**got[name], "truth": truth}
                    results[name].append(r)
                    print(f"  [{condition}, forked kernel] trial {trial + 1:3d} {name:8s} verdict {r['verdict']:9s} "
                          f"statistic {r['statistic']:.2f} N {r['sizes'][0]}..{r['sizes'][-1]} {r['seconds']:.2f} s"
                          + (" (extended)" if r["extended"] else ""), flush=True)
    finally:
        _unload(procs)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _busy_ms(ms):
    t = time.process_time()
    while time.process_time() - t < ms / 1e3:
        pass


def linear_30ms(Q, K, V, feature_map=ac.elu_feature_map):
    """A right linear attention with 30 ms of CPU in every call (a slow setup a real student may have)."""
    _busy_ms(30)
    return linear_attention(Q, K, V, feature_map)


def impostor_1ms(Q, K, V, feature_map=ac.elu_feature_map):
    _busy_ms(1)
    return impostor_attention(Q, K, V, feature_map)


def impostor_30ms(Q, K, V, feature_map=ac.elu_feature_map):
    _busy_ms(30)
    return impostor_attention(Q, K, V, feature_map)


def impostor_100ms(Q, K, V, feature_map=ac.elu_feature_map):
    _busy_ms(100)
    return impostor_attention(Q, K, V, feature_map)


_MEMO = {}


def impostor_memoised(Q, K, V, feature_map=ac.elu_feature_map):
    """The impostor, caching its results by the inputs' identity (hits if a call repeats its inputs)."""
    key = (id(Q), id(K), id(V), Q.shape)
    if key not in _MEMO:
        _MEMO[key] = impostor_attention(Q, K, V, feature_map)
    return _MEMO[key]


def impostor_forked(Q, K, V, feature_map=ac.elu_feature_map):
    """The impostor run in a forked child that pipes its result back and exits (the fixture q6-cost-forked-nxn)."""
    import os
    import pickle
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(impostor_attention(Q, K, V, feature_map)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = pickle.loads(f.read())
    os.waitpid(pid, 0)
    return out


def impostor_double_fork(Q, K, V, feature_map=ac.elu_feature_map):
    """The impostor run in a grandchild reparented away from the kernel (the fixture q6-cost-double-fork-nxn)."""
    import os
    import pickle
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: forks the grandchild and exits at once
        try:
            if os.fork() == 0:
                with os.fdopen(w, "wb") as f:
                    f.write(pickle.dumps(impostor_attention(Q, K, V, feature_map)))
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return pickle.loads(f.read())


# --where grader: every case, the verdict it must get
GRADER_CASES = {"linear": (linear_attention, "linear"), "linear_30ms": (linear_30ms, "linear"),
                "impostor": (impostor_attention, "quadratic"), "impostor_1ms": (impostor_1ms, "quadratic"),
                "impostor_30ms": (impostor_30ms, "quadratic"), "impostor_100ms": (impostor_100ms, "quadratic"),
                "impostor_memoised": (impostor_memoised, "quadratic"), "impostor_forked": (impostor_forked, "quadratic"),
                "impostor_double_fork": (impostor_double_fork, "quadratic")}


def run_in_grader(trials, condition, busy, seed0=0, cases=None, verbose=False, kernel_kind="cold"):
    """The verdicts as the hidden test takes them: every case defined in ONE sandboxed grading kernel, the
    statistic computed in this process (attnkit/grader/growth.py) from the kernel's CPU time read from its
    cgroup (attnkit/grader/meter.py; /proc where there is none), fresh inputs drawn in the kernel for every
    call and every call's value checked against linear_attention here, requests over the comm channel.
    ``kernel_kind``: cold (started on its own), forked (from a warm-start interpreter), or last (forked as a
    grading process's last kernel, its interpreter then the small keeper: a Gradescope submission's Q6)."""
    import contextlib
    from attnkit import sandbox

    scope = contextlib.nullcontext() if kernel_kind == "cold" else sandbox.warm_start(prestart=False)
    with scope:
        if kernel_kind == "last":
            sandbox.warm.last_kernel()
        return _run_in_grader(trials, condition, busy, seed0, cases, verbose)


def _run_in_grader(trials, condition, busy, seed0=0, cases=None, verbose=False):
    import inspect
    import shutil
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import course_kernel  # benchmarks/
    from attnkit.kernel import wire
    from attnkit.grader import channel, growth
    from attnkit.grader.remote import Kernel

    cases = {k: GRADER_CASES[k] for k in (cases or GRADER_CASES)}
    workdir = tempfile.mkdtemp(prefix="attnkit-verdict-")
    os.chmod(workdir, 0o755)
    shutil.copy(Path(ac.__file__), workdir)
    os.chmod(os.path.join(workdir, "attention_checks.py"), 0o644)
    sources = "import time\nimport torch\nimport attention_checks as ac\n_MEMO = {}\n\n" + "\n".join(
        inspect.getsource(f) for f in (linear_attention, impostor_attention, _busy_ms, linear_30ms, impostor_1ms,
                                       impostor_30ms, impostor_100ms, impostor_memoised, impostor_forked,
                                       impostor_double_fork))
    ex, run = course_kernel.start(workdir)
    run(channel.execute(ex, sources, time.monotonic() + 60))
    line = channel.Line(ex, ex.loop, time.monotonic() + 24 * 3600)
    kernel = Kernel(line.send)
    line.answer = kernel.answer_callback
    meter = channel.kernel_meter(ex)
    fm = kernel.module_attr("attention_checks", "elu_feature_map")
    fns = kernel.lookup({fn.__name__ for fn, _ in cases.values()})
    reference = lambda Q, K, V, _: linear_attention(Q, K, V)
    procs = _load(condition, busy)
    results = {name: [] for name in cases}
    try:
        for trial in range(trials):
            for name, (fn, truth) in cases.items():
                make = lambda n: tuple(wire.Randn((n, d), 0) for d in (D, D, M)) + (fm,)
                try:
                    r = growth.measure_time_growth(kernel, meter, fns[fn.__name__], make, reference=reference,
                                                   max_n=2 ** 13)
                except growth.Inconclusive as exc:
                    r = {"verdict": "inconclusive", "statistic": float("nan"), "sizes": [0], "seconds": 0.0,
                         "why": str(exc), "tries": 2, "meter": "?", "clock": "kernel CPU"}
                except Exception as exc:  # noqa: BLE001 - the test fails on it: a measured call's value checked
                    # wrong (AssertionError: the memoised impostor's cache hit), or the student's code raised (the
                    # forked impostors where the /proc meter's kernel may start no process: PermissionError)
                    r = {"verdict": "failed", "statistic": float("nan"), "sizes": [0], "seconds": 0.0,
                         "why": f"{type(exc).__name__}: {str(exc)[:80]}", "tries": 1, "meter": "?",
                         "clock": "kernel CPU"}
                r = {**r, "truth": truth}
                results[name].append(r)
                print(f"  [{condition}, grader, {r['meter']} meter] trial {trial + 1:3d} {name:17s} verdict "
                      f"{r['verdict']:12s} k {r['statistic']:.2f} N {r['sizes'][0]}..{r['sizes'][-1]} "
                      f"tries {r['tries']} {r['seconds']:.1f} s {r.get('why', '')}", flush=True)
                if (r["verdict"] != truth and r.get("times")) or verbose:
                    print("      ms:", ", ".join(f"{n}: {t * 1e3:.2f}" for n, t in zip(r["sizes"], r.get("times", []))))
    finally:
        _unload(procs)
        run(line.finished())
        course_kernel.stop(ex, run)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def confusion(condition, busy, results):
    """The confusion table of --where grader: per case, its truth and the verdicts it got."""
    load = f"{busy} busy-loop processes" if condition == "loaded" else "no extra load"
    print(f"\n== {condition} ({load}; load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"   {'case':17s} {'truth':9s} {'linear':>6s} {'quadratic':>9s} {'no verdict':>10s} {'failed':>6s}  "
          "k range      s/verdict")
    wrong = 0
    for name, rs in results.items():
        truth = rs[0]["truth"]
        got = {v: sum(r["verdict"] == v for r in rs) for v in ("linear", "quadratic", "inconclusive", "failed")}
        # an impostor that fails the test otherwise (wrong values, an error) is not a wrong verdict
        wrong += sum(r["verdict"] not in (truth, "inconclusive") and not (r["verdict"] == "failed"
                                                                          and truth == "quadratic") for r in rs)
        ks = [r["statistic"] for r in rs if r["verdict"] in ("linear", "quadratic")]
        span = f"{min(ks):.2f}-{max(ks):.2f}" if ks else "-"
        print(f"   {name:17s} {truth:9s} {got['linear']:6d} {got['quadratic']:9d} {got['inconclusive']:10d} "
              f"{got['failed']:6d}  {span:12s} {statistics.mean(r['seconds'] for r in rs):.1f}")
    inconclusive_linear = sum(r["verdict"] == "inconclusive" for rs in results.values() for r in rs
                              if r["truth"] == "linear")
    print(f"   wrong verdicts: {wrong}; linear answers left without a verdict (they fail): {inconclusive_linear}")
    return wrong + inconclusive_linear, 0


def report(condition, busy, results):
    lin, imp = results["linear"], results["impostor"]
    false_fail = sum(r["verdict"] != "linear" for r in lin)
    false_pass = sum(r["verdict"] != "quadratic" for r in imp)
    secs = [r["seconds"] for r in lin + imp]
    load = f"{busy} busy-loop processes" if condition == "loaded" else "no extra load"
    print(f"\n== {condition} ({load}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores, "
          f"clock {lin[0]['clock']})")
    print(f"   linear   : {len(lin)} trials, false fail {false_fail}, statistic min {min(r['statistic'] for r in lin):.2f}"
          f" median {statistics.median(r['statistic'] for r in lin):.2f} max {max(r['statistic'] for r in lin):.2f},"
          f" extended {sum(r['extended'] for r in lin)}")
    print(f"   impostor : {len(imp)} trials, false pass {false_pass}, statistic min {min(r['statistic'] for r in imp):.2f}"
          f" median {statistics.median(r['statistic'] for r in imp):.2f} max {max(r['statistic'] for r in imp):.2f},"
          f" extended {sum(r['extended'] for r in imp)}")
    print(f"   seconds per verdict: mean {statistics.mean(secs):.2f}, max {max(secs):.2f} "
          f"(linear mean {statistics.mean(r['seconds'] for r in lin):.2f}, "
          f"impostor mean {statistics.mean(r['seconds'] for r in imp):.2f})")
    return false_fail, false_pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50, help="verdicts per implementation and condition")
    ap.add_argument("--load", choices=["both", "quiet", "loaded"], default="both")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes under load")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (grading kernels use 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=["cpu", "wall"], default=None,
                    help="what to time (default: as the test does -- CPU time of the process on CPU, wall on CUDA)")
    ap.add_argument("--where", choices=["process", "kernel", "grader"], default="process",
                    help="kernel: each trial in a grading kernel forked from the warm-start interpreter, "
                         "in the bwrap sandbox with its limits (CPU only); grader: the statistic in this "
                         "process on the kernel's CPU time read from outside (the hidden test since the grader process)")
    ap.add_argument("--cases", nargs="*", choices=sorted(GRADER_CASES), default=None,
                    help="--where grader: the cases to measure (default: all)")
    ap.add_argument("--verbose", action="store_true", help="--where grader: every verdict's times, not only wrong ones'")
    ap.add_argument("--kernel", choices=["cold", "forked", "last"], default="cold",
                    help="--where grader: the grading kernel started cold, forked from the warm-start interpreter, "
                         "or forked as the last (its interpreter then the small keeper, as for a Gradescope "
                         "submission's last notebook); forked and last need bwrap as root")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    conditions = ["quiet", "loaded"] if args.load == "both" else [args.load]
    summary = []
    for cond in conditions:
        if args.where == "kernel":
            res = run_in_kernels(args.trials, cond, args.busy, args.threads, args.clock)
        elif args.where == "grader":
            res = run_in_grader(args.trials, cond, args.busy, cases=args.cases, verbose=args.verbose,
                                kernel_kind=args.kernel)
            summary.append((cond, *confusion(cond, args.busy, res)))
            continue
        else:
            res = run(args.trials, cond, args.busy, args.device, args.clock)
        summary.append((cond, *report(cond, args.busy, res)))
    print("\nSUMMARY")
    for cond, ff, fp in summary:
        print(f"   {cond:6s}: {args.trials} + {args.trials} trials, false fail {ff}, false pass {fp}")
    return 0 if all(ff == 0 and fp == 0 for _, ff, fp in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
