"""Does one full submission grade within Gradescope's default limits?

Builds the autograder zip, unpacks it as Gradescope does, and runs ``run_autograder`` on ONE core
(``taskset -c 0``) under a 768 MB memory limit for each submission of ``--submissions`` (all four
notebooks each): ``solved`` (the instructor's solution), ``q6-quadratic`` (the same, with a Q6
linear attention that builds the N x N matrix: the cost-growth checks measure it), ``memory-hog`` (the
solution, its first notebook ending in a cell that takes memory until something is killed: the run must
survive it, every part scored). Prints the machine's speed at the start and the end (import torch on
core 0), each run's seconds, peak memory and score, then each figure beside its target (20 s, 600 MB)
and the ratio. As in Gradescope's container, the cgroup files are read-only to the run (a private mount
namespace): the kit makes no kernel cgroup, so the kernels' memory counts in the 768 MB
(``--kernel-cgroups``: not so).

The memory limit, in order of preference:
* ``cgroup`` - a child memory cgroup (v1) of this process's own cgroup with
  ``memory.limit_in_bytes`` = the limit: the whole process tree together, as a container limit
  works on Gradescope. Peak = ``memory.max_usage_in_bytes`` (includes page cache).
* ``as`` - ``prlimit --as`` (RLIMIT_AS): per process, not per tree, and torch reserves a lot
  of address space; used with ``--mode as``.
* ``none`` - no limit, only measured.
Whatever the mode, the peak resident memory of the process tree is sampled from /proc.

    .venv/bin/python benchmarks/gradescope_limits.py [--memory-mb 768] [--mode auto|cgroup|as|none]
        [--submissions solved,q6-quadratic]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attnkit.authoring import notebooks as nbu  # noqa: E402


def anon_by_role(procs: dict) -> dict:
    """role -> (proportional anonymous kB, private dirty kB, both summed over its live processes, how many):
    ``procs`` is a TreeSampler's pid -> [role, peak]. Private pages are the process's alone (what its exit
    would free); the proportional figure adds its share of the pages a fork shares."""
    out: dict = {}
    for pid, (name, _peak) in list(procs.items()):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                rollup = {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("Pss_Anon:", "Private_Dirty:"))}
        except (OSError, ValueError, IndexError):
            continue
        have = out.get(name, (0, 0, 0))
        out[name] = (have[0] + rollup.get("Pss_Anon", 0), have[1] + rollup.get("Private_Dirty", 0), have[2] + 1)
    return out


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (kB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                vm = next((l for l in f if l.startswith("VmRSS:")), "VmRSS: 0 kB")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = int(vm.split()[1])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def make_cgroup(limit: int) -> Path | None:
    try:
        own = next(l.split(":", 2)[2].strip() for l in open("/proc/self/cgroup") if ":memory:" in l)
        cg = Path("/sys/fs/cgroup/memory" + own) / f"attnkit-gradescope-{os.getpid()}"
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(limit))
        swap = cg / "memory.memsw.limit_in_bytes"
        if swap.exists():  # no swapping past the limit either
            swap.write_text(str(limit))
        return cg
    except (OSError, StopIteration):
        return None


# the last cell of the first notebook of ``memory-hog``: the kernel takes memory until something is killed
MEMORY_HOG = """import torch
hog = []
while True:
    hog.append(torch.ones(5_000_000))  # 20 MB more each time
"""


def submission(kind: str, folder: Path) -> None:
    """Write the four notebooks of submission ``kind`` into ``folder``."""
    from nbformat.v4 import new_code_cell

    from banks.hw9.q6_linear_attention import LINEAR_BUILDS_NXN, NB as Q6

    for i, src in enumerate(sorted((ROOT / "source" / "hw9").glob("*.ipynb"))):
        answers = {"q6_linear": LINEAR_BUILDS_NXN} if kind == "q6-quadratic" and src.stem == Q6 else None
        nb = nbu.fill(nbu.read(src), answers)
        if kind == "memory-hog" and i == 0:
            nb.cells.append(new_code_cell(MEMORY_HOG))
        nbu.write(nb, folder / src.name)


def page_cache(folders: list[Path], how: str) -> float:
    """Evict every regular file under ``folders`` from the page cache (``cold``: POSIX_FADV_DONTNEED; pages a live
    process maps stay) or read each one through (``warm``). Returns the MB of files."""
    total = 0
    for folder in folders:
        for path, _, names in os.walk(folder):
            for name in names:
                try:
                    fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    total += st.st_size
                    if how == "cold":
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    else:
                        while os.read(fd, 1 << 20):
                            pass
                except OSError:
                    pass
                finally:
                    os.close(fd)
    return total / 2**20


def import_torch_s(repeats: int = 3) -> float:
    """Seconds a new interpreter takes to import torch on core 0 (median of ``repeats``): the machine's speed at
    that moment, beside each figure (a shared machine's drifts: the same run has read 1.2 s and 1.9 s on one day)."""
    took = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", "0", sys.executable, "-c", "import torch"], check=True, capture_output=True)
        took.append(time.perf_counter() - t0)
    return sorted(took)[len(took) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memory-mb", type=int, default=768)
    ap.add_argument("--mode", choices=("auto", "cgroup", "as", "none"), default="auto")
    ap.add_argument("--submissions", default="solved,q6-quadratic")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--page-cache", choices=("as-is", "cold", "warm"), default="as-is",
                    help="before each run, evict the Python environment's, the kit's and the autograder's files from the "
                         "page cache (cold: a first run after a while, each file charged to this run's cgroup as it reads "
                         "it) or read them all (warm: a run right after another); as-is: neither")
    ap.add_argument("--kernel-cgroups", action="store_true",
                    help="let the kit make the kernels' own cgroups (outside the 768 MB one: their memory not counted)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gradescope-bench-"))
    kitzip = tmp / "hw9-gradescope.zip"
    subprocess.run([sys.executable, "-m", "attnkit", "--root", str(ROOT), "gradescope", "hw9", "-o", str(kitzip)],
                   check=True, capture_output=True)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; import torch on core 0: "
          f"{import_torch_s():.2f} s (median of 3)")
    rows, problems = [], 0
    for kind in args.submissions.split(","):
        print(f"\n== {kind}")
        got, failed = run_one(args, tmp / kind, kitzip, kind)
        rows += [(f"{kind}: {name}", figure, target) for name, figure, target in got]
        problems += failed
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; import torch on core 0: {import_torch_s():.2f} s")
    for name, figure, target in rows:
        print(f"target: {name} {figure:.1f} <= {target:g} (ratio {figure / target:.2f}): "
              f"{'met' if figure <= target else 'NOT met'}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if problems else 0


def run_one(args, tmp: Path, kitzip: Path, kind: str) -> tuple[list, int]:
    """([(figure, value, target)], 1 if a part expected to pass did not) for one run of run_autograder."""
    limit = args.memory_mb * 1024 * 1024
    root = tmp / "autograder"
    with zipfile.ZipFile(kitzip) as zf:
        zf.extractall(root / "source")
    for d in ("submission", "results"):
        (root / d).mkdir(parents=True)
    submission(kind, root / "submission")
    if args.page_cache != "as-is":
        mb = page_cache([Path(sys.prefix), Path(sys.base_prefix) / "lib", ROOT / "attnkit", root], args.page_cache)
        print(f"page cache: {args.page_cache} ({mb:.0f} MB of files {'evicted' if args.page_cache == 'cold' else 'read'})")
    mode, cg, prefix = args.mode, None, []
    if mode in ("auto", "cgroup"):
        cg = make_cgroup(limit)
        if cg is None and mode == "cgroup":
            sys.exit("no writable memory cgroup here")
        mode = "cgroup" if cg else "as"
    if mode == "as":
        prefix = ["prlimit", f"--as={limit}"]
    cmd = ["taskset", "-c", "0", *prefix, "bash", str(root / "source" / "run_autograder")]
    if not args.kernel_cgroups:  # as in Gradescope's container: cgroup files read-only, so no kernel cgroup of
        # its own; the kernels' memory counts in the container's limit (a private mount namespace, remounted)
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'for d in /sys/fs/cgroup /sys/fs/cgroup/*; do mount -o remount,bind,ro "$d" 2>/dev/null; done; '
               'exec "$@"', "sh", *cmd]
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), KIT_PREFIX=sys.prefix)

    def enter_cgroup():
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=enter_cgroup)
    peak = [0]

    at_peak: dict = {}  # the cgroup's memory.stat when its usage was highest (what the peak is made of)

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_kb(proc.pid))
            if cg is not None:
                try:
                    usage = int((cg / "memory.usage_in_bytes").read_text())
                    if usage > at_peak.get("usage", 0):
                        stat = dict(l.split() for l in (cg / "memory.stat").read_text().splitlines())
                        at_peak.update(usage=usage, **{k: int(stat.get(k, 0)) for k in ("rss", "cache", "mapped_file", "shmem")})
                        at_peak["by_role"] = anon_by_role(procs.procs)
                except (OSError, ValueError):
                    pass
            time.sleep(0.1)

    from grading_profile import TreeSampler

    procs = TreeSampler(proc.pid)  # each process's own peak, by role (read by sample() at each new peak)
    procs.start()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.join()
    procs.done.set()
    procs.join()
    res = json.loads((root / "results" / "results.json").read_text())
    auto_max = sum(t["max_score"] for t in res["tests"])  # every test is an autograded part (written answers are not tests)
    print(f"mode: {mode} ({args.memory_mb} MB{' for the whole tree' if mode == 'cgroup' else ' per process' if mode == 'as' else ', not enforced'}), "
          f"1 core (taskset -c 0)")
    print(f"run_autograder: {seconds:.1f} s wall, exit {proc.returncode}; results.json execution_time "
          f"{res['execution_time']} s")
    print(f"peak RSS of the process tree (sampled every 0.1 s): {peak[0] / 1024:.0f} MB")
    by_role: dict = {}
    for name, kb in procs.procs.values():
        by_role.setdefault(name, []).append(kb)
    print("  each process's own peak (VmHWM, shared pages in each): " + "; ".join(
        f"{name} {max(kbs) / 1024:.0f} MB" + (f" (x{len(kbs)})" if len(kbs) > 1 else "")
        for name, kbs in sorted(by_role.items(), key=lambda kv: -max(kv[1])) if max(kbs) > 8 << 10))
    if cg is not None:
        max_usage = int((cg / "memory.max_usage_in_bytes").read_text())
        failcnt = int((cg / "memory.failcnt").read_text())
        oom = (cg / "memory.oom_control").read_text().split()
        kills = oom[oom.index("oom_kill") + 1] if "oom_kill" in oom else "?"
        print(f"cgroup peak usage (RSS + page cache): {max_usage / 2**20:.0f} MB; limit hits {failcnt}; "
              f"OOM kills {kills}")
        if at_peak:
            print(f"at the largest sampled usage ({at_peak['usage'] / 2**20:.0f} MB): anonymous (rss) "
                  f"{at_peak['rss'] / 2**20:.0f} MB, page cache {at_peak['cache'] / 2**20:.0f} MB "
                  f"(of it mapped files: {at_peak['mapped_file'] / 2**20:.0f} MB, tmpfs: {at_peak['shmem'] / 2**20:.0f} MB); "
                  f"what no reclaim can free (anonymous + tmpfs): {(at_peak['rss'] + at_peak['shmem']) / 2**20:.0f} MB. "
                  "Page cache counts what this cgroup read first: files another run read before are charged there, "
                  "so the first run after a while reads higher")
            print("  its anonymous memory by process (proportional: pages a fork shares are split between them; "
                  "in brackets its private pages alone): "
                  + "; ".join(f"{name} {kb / 1024:.0f} MB ({own / 1024:.0f})" + (f" (x{n})" if n > 1 else "")
                              for name, (kb, own, n) in sorted(at_peak["by_role"].items(), key=lambda kv: -kv[1][0])
                              if kb > 1 << 10))
    print(f"score: {res['score']:g} / {auto_max:g} autograded points")
    rows = [("run_autograder, s", seconds, 20.0)]
    if cg is not None:
        rows.append(("cgroup peak, MB", max_usage / 2**20, 600.0))
    if kind == "memory-hog":  # it fills the limit on purpose: what counts is that every part is still scored
        rows = []
    quadratic = ("q6_linear_counts_test", "q6_linear_timing_test") if kind == "q6-quadratic" else ()
    problems = [t["name"] + ": " + t["output"] for t in res["tests"]
                if t["status"] == "failed" and not any(q in t["name"] for q in quadratic)]
    if problems:
        print("parts not passed:\n  " + "\n  ".join(problems[:10]))
        print(log.decode(errors="replace")[-3000:])
    if cg is not None:
        for _ in range(50):  # the tree has exited; the cgroup empties a moment later
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return rows, int(bool(problems))


if __name__ == "__main__":
    sys.exit(main())
