"""Every source notebook's answer and hidden-test cells, run in order in one process on CUDA.

No Jupyter, no nbgrader: only torch and nbformat (both travel to a lent GPU machine). For
each notebook the locked set-up cells, the instructor's answers and every test cell (hidden
tests included) run top to bottom in one namespace; the hidden tests loop over
``devices()``, which includes "cuda" wherever CUDA is present, so every graded part is
checked on the GPU. Then the Q6 timing verdict (the statistic the hidden timing test uses)
runs on CUDA for the reference linear attention and for a quadratic impostor (right values,
N x N matrix): they must come out "linear" and "quadratic".

    python3 benchmarks/gpu_check.py                 # CUDA; one line and exit 0 where CUDA is absent
    python3 benchmarks/gpu_check.py --device cpu    # the same machinery on the CPU (the kit's tests)

Prints each graded part's verdict; exits 1 if any part fails or any timing verdict is wrong.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import linecache
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _runs(cell) -> bool:
    """Set-up (locked, ungraded) code, answers and tests run; experiments and prose do not."""
    m = _meta(cell)
    return cell.cell_type == "code" and bool(m) and (m.get("solution") or m.get("grade") or m.get("locked"))


def run_notebook(path: Path, fill, log=print) -> tuple[int, int, dict]:
    """(passed, failed, namespace) after running one notebook's cells in order."""
    from attnkit.authoring import markup
    from attnkit.grader import hidden
    from attnkit.grader.meter import KernelMeter
    from attnkit.inprocess import in_process
    nb = fill(path)
    ns: dict = {"__name__": "__main__"}
    passed = failed = 0
    sources = []  # the student's cells so far, as grading hands them to the checks that read source
    for cell in nb.cells:
        if not _runs(cell):
            continue
        m = _meta(cell)
        if not (m.get("grade") and not m.get("solution")):
            sources.append(cell.source)
        src = "\n".join(l for l in cell.source.split("\n") if not l.lstrip().startswith(("%", "!")))
        t0 = time.perf_counter()
        out = io.StringIO()
        filename = f"<{path.stem}:{m.get('grade_id')}>"
        # as IPython does: keep the cell's text where inspect.getsource finds it
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        visible, regions = markup.split_hidden(src)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(visible, filename, "exec"), ns)
            error = None
        except Exception as exc:  # a failed part: report it and go on, as grading does
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if os.environ.get("GPU_CHECK_TRACEBACK"):
                traceback.print_exc()
        for region in regions if error is None else ():
            # the hidden tests as grading runs them (attnkit/grader/), the agent in this process (the solution's
            # code, which starts no process: forks are not watched, the host's count would only add noise)
            meter = KernelMeter(root_pid=os.getpid(), watch_forks=False)
            _, failure = hidden.run(region, in_process(ns, list(sources)), path.parent, {"meter": meter},
                                    grader=ROOT / "graders" / f"{path.parent.name}.py")
            if failure is not None:
                error = f"{failure['ename']}: {failure['evalue']}".splitlines()[0][:300]
                break
        if m.get("grade") and not m.get("solution"):
            status = "ok  " if error is None else "FAIL"
            passed, failed = passed + (error is None), failed + (error is not None)
            log(f"{status} {path.stem}:{m['grade_id']} ({m.get('points', 0):g} pts, {time.perf_counter() - t0:.1f}s)"
                + (f" -- {error}" if error else ""))
        elif error is not None:
            failed += 1
            log(f"FAIL {path.stem}:{m.get('grade_id')} (set-up or answer cell) -- {error}")
    return passed, failed, ns


def timing_verdicts(ns: dict, device: str, log=print) -> int:
    """The Q6 timing statistic on this device: reference linear -> linear, impostor -> quadratic."""
    import torch

    try:
        from attnkit.grader.checks import attention_inputs, elu_feature_map, measure_growth
    except ImportError:  # before the grader-side split
        from attention_checks import attention_inputs, elu_feature_map, measure_growth
    linear, quadratic = ns["kernel_attention_linear"], ns["kernel_attention_quadratic"]

    def impostor(Q, K, V):  # right values, but builds the N x N similarity matrix
        return quadratic(Q, K, V, lambda q, k: (elu_feature_map(q) * elu_feature_map(k)).sum(-1))

    wrong = 0
    make_args = attention_inputs(64, 64, device=device)
    for name, fn, want in (("reference linear attention", lambda Q, K, V: linear(Q, K, V, elu_feature_map), "linear"),
                           ("quadratic impostor", impostor, "quadratic")):
        with torch.no_grad():
            r = measure_growth(fn, make_args, device=device)
        ok = r["verdict"] == want
        wrong += not ok
        log(f"{'ok  ' if ok else 'FAIL'} timing on {device} ({r['clock']} clock): {name} -> {r['verdict']} "
            f"(statistic N^{r['statistic']:.2f}, sizes {r['sizes'][0]}..{r['sizes'][-1]}, {r['seconds']:.1f}s; "
            f"want {want})")
    return wrong


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--notebooks", nargs="*", help="notebook stems (default: all of source/hw9)")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped -- CUDA is not available on this machine (torch "
              f"{torch.__version__}); run it where a GPU is lent")
        return 0
    if args.device == "cpu":
        # hidden tests loop over devices(); make them see the CPU only
        torch.cuda.is_available = lambda: False
        torch.set_num_threads(1)  # as the grading kernel (CourseKernelManager.threads)
    print(f"gpu_check: torch {torch.__version__} on {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""))
    os.chdir(SOURCE)  # the helper beside the notebooks, as in the grading kernel
    sys.path[:0] = [str(SOURCE), str(ROOT)]
    from attnkit.authoring import notebooks as nbu

    stems = args.notebooks or sorted(p.stem for p in SOURCE.glob("*.ipynb"))
    total_pass = total_fail = 0
    namespaces = {}
    t0 = time.perf_counter()
    for stem in stems:
        passed, failed, namespaces[stem] = run_notebook(SOURCE / f"{stem}.ipynb",
                                                        lambda path: nbu.fill(nbu.read(path), keep_hidden=True))
        total_pass, total_fail = total_pass + passed, total_fail + failed
    wrong = 0
    q6 = next((ns for stem, ns in namespaces.items() if "kernel_attention_linear" in ns), None)
    if q6 is not None:
        wrong = timing_verdicts(q6, args.device)
    print(f"gpu_check: {total_pass} graded parts passed, {total_fail} failed, {wrong} wrong timing verdicts "
          f"on {args.device} in {time.perf_counter() - t0:.0f}s")
    return 1 if total_fail or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
