"""Warm start: the kernels of a grading process fork from one pre-imported interpreter
(kept from student to student, or with ``sandbox_per_student`` a new sandbox per student, started
ahead), yet each notebook still starts from a clean interpreter and a clean sandbox, as far as its
code can tell. A first notebook poisons what it can; the next one, and the next student's, check."""
from __future__ import annotations

import os
import shutil
import sys

import nbformat
import pytest

from attnkit.authoring import notebooks as nbu
from attnkit import sandbox
from attnkit.course import Course
from attnkit.batch.driver import autograde
from attnkit.authoring.release import generate
from attnkit.reports import scores
from harness import ASSIGNMENT, ROOT

pytestmark = pytest.mark.slow
FIRST, SECOND = "q12_scaled_dot_product", "q3_multihead_attention"  # graded in this order (sorted)
WARM = sandbox.detect() == "bwrap" and os.geteuid() == 0  # where warm_enabled() can be true


@pytest.fixture(autouse=True)
def _warm_asked_for(monkeypatch):
    """These tests are about warm kernels: asked for as a course may (ATTNKIT_WARM_START=1), so that a host whose
    memory would start them cold (sandbox.md, "Only where the memory has room") still runs them warm."""
    monkeypatch.setenv(sandbox.ENV_WARM, "1")

POISON = '''
import builtins, os, subprocess, sys, torch, attention_checks
torch.allclose = lambda *a, **k: True
torch._attnkit_poison = builtins._attnkit_poison = attention_checks._attnkit_poison = 1
sys.modules["attnkit_poison"] = sys
os.environ["ATTNKIT_POISON"] = "1"
open("poison.txt", "w").write("left behind")
open(".tmp/poison.txt", "w").write("left behind")
os.makedirs("pdir/sub")
os.chmod("pdir", 0)
try:
    open("/dev/shm/poison", "w").write("left behind")
except OSError:
    pass
subprocess.Popen(["sleep", "1000"], start_new_session=True)
print("POISONED")
'''

CHECK = '''
import builtins, os, sys, torch
bad = []
if hasattr(torch, "_attnkit_poison") or type(torch.allclose).__name__ != "builtin_function_or_method":
    bad.append("torch")
if hasattr(builtins, "_attnkit_poison"):
    bad.append("builtins")
if "attention_checks" in sys.modules:
    bad.append("attention_checks already imported")
if "attnkit_poison" in sys.modules or "ATTNKIT_POISON" in os.environ:
    bad.append("sys.modules/os.environ")
bad += [p for p in ("poison.txt", ".tmp/poison.txt", "pdir", "/dev/shm/poison") if os.path.lexists(p)]
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read() == b"sleep\\x001000\\x00":
                bad.append(f"process {pid} (sleep 1000)")
    except OSError:
        pass
print("PARENT", os.getppid())
assert not bad, f"NOT PRISTINE: {bad}"
print("ALL CLEAN")
'''


def _with_cell(nb, source):
    if source:
        nb.cells.insert(0, nbformat.v4.new_code_cell(source))
    return nb


def _outputs(course, stem, student="poisoner"):
    nb = nbu.read(course.path("autograded", student, ASSIGNMENT, f"{stem}.ipynb"))
    return "".join(o.get("text", "") + o.get("evalue", "") for o in nb.cells[0].get("outputs", []))


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_each_notebook_starts_pristine_after_a_poisoning_one(monkeypatch):
    """Does a notebook graded after one that poisons everything it can (the same student's next
    notebook, and the next student's first) start from a pristine interpreter and sandbox?"""
    monkeypatch.setenv(sandbox.ENV_WARM, "1")  # the grading processes inherit it
    course = Course(ROOT).scratch_copy(notebooks=[FIRST, SECOND])
    try:
        generate(course, ASSIGNMENT)
        # graded in this order by one grading process: the victim's kernels fork from the sandbox
        # the poisoner's ran in (kept from student to student by default)
        for student, cells in (("poisoner", (POISON, CHECK)), ("victim", (CHECK, "")), ("control", ("", ""))):
            dest = course.path("submitted", student, ASSIGNMENT)
            dest.mkdir(parents=True)
            for stem, cell in zip((FIRST, SECOND), cells):
                src = nbu.read(course.path("source", ASSIGNMENT, f"{stem}.ipynb"))
                nbu.write(_with_cell(nbu.fill(src), cell), dest / f"{stem}.ipynb")
        results = autograde(course, ASSIGNMENT, ["poisoner", "victim", "control"], workers=1, progress=False)
        assert all(n.status.value == "graded" for r in results for n in r.notebooks), results
        assert "POISONED" in _outputs(course, FIRST), f"the poisoning cell did not run: {_outputs(course, FIRST)!r}"
        out = _outputs(course, SECOND)
        assert "ALL CLEAN" in out and "NOT PRISTINE" not in out, f"the second notebook saw the first one's leftovers: {out!r}"
        ppid = int(out.split("PARENT", 1)[1].split()[0])
        assert ppid != 1, "the kernel was started cold (its parent is bwrap's init): the warm path was not tested"
        out = _outputs(course, FIRST, "victim")
        assert "ALL CLEAN" in out and "NOT PRISTINE" not in out, f"the next student saw the poisoner's leftovers: {out!r}"
        # and the verdicts: cell by cell those of the same answers without the extra cells
        data = scores(course, ASSIGNMENT)["students"]
        for stem in (FIRST, SECOND):
            assert data["poisoner"][stem]["cells"] == data["control"][stem]["cells"], stem
            assert data["victim"][stem]["cells"] == data["control"][stem]["cells"], stem
        assert data["control"][SECOND]["score"] > 0, "the control scored nothing: the comparison proves nothing"
    finally:
        shutil.rmtree(course.root, ignore_errors=True)


async def _run_in_kernel(workdir: str, source: str, **traits) -> tuple[str, object]:
    return await sandbox.run_source(workdir, source, timeout=120, **traits)


def _workdir(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(ROOT / "source" / ASSIGNMENT / "attention_checks.py", workdir)
    os.chmod(tmp_path, 0o755)
    os.chmod(workdir, 0o755)
    os.chmod(workdir / "attention_checks.py", 0o644)
    return str(workdir)


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_the_next_student_forks_from_the_same_interpreter_and_sees_nothing_of_the_last(tmp_path):
    """By default a grading process keeps its sandbox from student to student: do the next
    student's kernels fork from the same interpreter, and see nothing the last student left?"""
    import asyncio

    workdir = _workdir(tmp_path)
    with sandbox.warm_start(prestart=True):
        out, proc = asyncio.run(_run_in_kernel(workdir, POISON))
        first = sandbox.warm._warm["zygote"]
        assert "POISONED" in out, out
        assert isinstance(proc, sandbox.ForkedKernel) and proc.zygote is first
        assert sandbox.warm._warm["next"] is None, "started a second interpreter although the first is kept"
    assert sandbox.warm._next is first and first.alive, "the sandbox was not kept for the next student"
    with sandbox.warm_start(prestart=False):
        out, proc = asyncio.run(_run_in_kernel(workdir, CHECK))
        assert proc.zygote is first, "the next student's kernel did not fork from the kept interpreter"
    assert "ALL CLEAN" in out and "NOT PRISTINE" not in out, f"the next student saw the previous one's leftovers: {out!r}"
    assert not first.alive and sandbox.warm._next is None, "the last student's sandbox outlived the batch"


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_with_a_sandbox_per_student_the_next_one_started_ahead_is_fresh(tmp_path):
    """With CourseKernelManager.sandbox_per_student: is the interpreter started ahead (during one
    student's grading, for the next) the one the next student's kernels fork from, in a sandbox of
    its own that shows nothing of the student graded before?"""
    import asyncio

    workdir = _workdir(tmp_path)
    with sandbox.warm_start(prestart=True):
        out, proc = asyncio.run(_run_in_kernel(workdir, POISON, sandbox_per_student=True))
        first = sandbox.warm._warm["zygote"]
        ahead = sandbox.warm._warm["next"]
        assert "POISONED" in out, out
        assert isinstance(proc, sandbox.ForkedKernel) and proc.zygote is first
        assert ahead is not None and ahead is not first and ahead.runs != first.runs
    assert not first.alive, "the first student's sandbox outlived the student"
    assert sandbox.warm._next is ahead and ahead.alive
    with sandbox.warm_start(prestart=False):
        out, proc = asyncio.run(_run_in_kernel(workdir, CHECK, sandbox_per_student=True))
        assert proc.zygote is ahead, "the next student's kernel did not fork from the interpreter started ahead"
        assert sandbox.warm._warm["next"] is None, "started another one although no student follows"
    assert "ALL CLEAN" in out and "NOT PRISTINE" not in out, f"the next student saw the previous one's leftovers: {out!r}"
    assert not ahead.alive and sandbox.warm._next is None


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_a_forked_kernel_never_collects_what_it_inherited(tmp_path):
    """Does a kernel forked from the warm-start interpreter hold what it inherited (torch's, numpy's, ipykernel's
    objects) frozen, so that its collector never writes to those shared pages (copying them into the kernel's own
    memory, and inside a measured call into its peak)?"""
    import asyncio

    workdir = _workdir(tmp_path)
    with sandbox.warm_start(prestart=False):
        out, proc = asyncio.run(_run_in_kernel(workdir, "import gc; print('FROZEN', gc.get_freeze_count())"))
        assert isinstance(proc, sandbox.ForkedKernel), "not a warm kernel"
    frozen = int(out.split("FROZEN", 1)[1].split()[0])
    assert frozen > 100_000, f"only {frozen} objects frozen: {out!r}"


def _descendants(pid: int) -> list[int]:
    from attnkit.procs import children

    found, todo = [], [pid]
    while todo:
        try:
            kids = children(todo.pop())
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def _status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith(key + ":"))


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_after_its_last_kernel_the_interpreter_gives_its_memory_back_and_still_answers_for_it(tmp_path):
    """Once the scope's last kernel is forked (no student follows), is the warm-start interpreter a small keeper (no
    torch: a few MB, not the 100 MB and more of the interpreter) that still watches, stops and cleans up after that
    kernel (the notebook's leftover process gone, the sandbox clean), and does a kernel started after it (a restart)
    start cold and run?"""
    import asyncio

    from attnkit.sandbox.manager import CourseKernelManager

    workdir = _workdir(tmp_path)

    async def run(source):
        km = CourseKernelManager()
        await km.start_kernel(cwd=workdir)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        out = []
        msg_id = kc.execute(source)
        while True:
            msg = await kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id:
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
        proc = km.provisioner.process
        seen, alive = {}, None
        if isinstance(proc, sandbox.ForkedKernel):
            # the sandbox's root processes (not the kernel, which runs as the slot's uid) that are not bubblewrap's
            roots = [p for p in _descendants(proc.zygote.proc.pid)
                     if _status(p, "Name") != "bwrap" and _status(p, "Uid") == str(os.getuid())]
            seen = {p: (_comm_line(p), int(_status(p, "RssAnon")), os.readlink(f"/proc/{p}/cwd")) for p in roots}
            alive = await km.is_alive()
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        return "".join(out), proc, seen, alive

    with sandbox.warm_start(prestart=False):
        sandbox.warm.last_kernel()
        out, proc, seen, alive = asyncio.run(run(POISON))
        assert "POISONED" in out and isinstance(proc, sandbox.ForkedKernel), out
        zygote = proc.zygote
        keepers = [kb for line, kb, _ in seen.values() if "--keeper" in line]
        assert len(seen) == 1 and len(keepers) == 1, f"not one keeper (and no zygote) beside the last kernel: {seen}"
        assert keepers[0] < 20 << 10, f"the keeper holds {keepers[0] >> 10} MB: {seen}"
        (line, _, cwd), = seen.values()  # root's code: never from the home folder the notebook writes to
        assert cwd == "/" and (" -P " in line or sys.version_info < (3, 11)), seen
        assert alive, "the keeper did not answer that the kernel is alive"
        assert zygote.alive, "the keeper could not clean the sandbox after the kernel (it was dropped)"
        left = [p for p in _descendants(zygote.proc.pid) if _comm_line(p).startswith("sleep 1000")]
        assert not left, "the notebook's leftover process outlived its kernel"
        for _ in range(2):  # restarts: cold at once (the keeper forks no more), never a new warm-start interpreter
            out, proc, _, _ = asyncio.run(run("print('RAN', 6 * 7)"))
            assert "RAN 42" in out and not isinstance(proc, sandbox.ForkedKernel), out
            assert sandbox.warm._warm["zygote"] is zygote and zygote.alive, "the keeper was asked, or replaced"
    assert not zygote.alive


def _comm_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


HISTORY = """
import os, threading
hm = get_ipython().history_manager
files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.expanduser("~")) for f in fs if f.endswith(".sqlite")]
savers = [t for t in threading.enumerate() if type(t).__name__ == "HistorySavingThread"]
print("HISTORY", hm.enabled, "savers = " in In[-1], len(files), len(savers))
"""


@pytest.mark.parametrize("warm", [True, False], ids=["forked", "cold"])
def test_a_kernel_keeps_its_history_in_memory(tmp_path, monkeypatch, warm):
    """Does every kernel, forked or cold, keep IPython's history (In, _i, %history) in memory only: no database in
    its HOME (thrown away with it) and no thread that writes each cell there?"""
    import asyncio

    if warm and not WARM:
        pytest.skip("warm start needs the bwrap sandbox as root")
    if sandbox.detect() == "none":
        pytest.skip("no sandbox here")
    monkeypatch.setenv(sandbox.warm.ENV_WARM, "1" if warm else "0")
    workdir = _workdir(tmp_path)
    with sandbox.warm_start(prestart=False):
        out, proc = asyncio.run(_run_in_kernel(workdir, HISTORY))
    assert isinstance(proc, sandbox.ForkedKernel) == warm
    assert out.split("HISTORY", 1)[1].split() == ["False", "True", "0", "0"], out


def test_the_kit_keeps_its_cache_where_it_is_told_else_in_the_users_cache(tmp_path, monkeypatch):
    """Does the kit keep a course's first-sandbox settings in ATTNKIT_CACHE where that is set (the test suite's own
    folder: CI and developers' caches stay clean), else in $XDG_CACHE_HOME/attnkit, else in ~/.cache/attnkit, one
    file per course, and is it the same file for a course reached through a symlink?"""
    from attnkit.sandbox import warm

    course, link = tmp_path / "course", tmp_path / "link"
    course.mkdir()
    link.symlink_to(course)
    monkeypatch.setenv(warm.ENV_CACHE, str(tmp_path / "kit-cache"))
    kept = warm._remembered(str(course))
    assert os.path.dirname(kept) == str(tmp_path / "kit-cache") and warm._remembered(str(link)) == kept
    assert warm._remembered(str(tmp_path)) != kept
    monkeypatch.delenv(warm.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert os.path.dirname(warm._remembered(str(course))) == str(tmp_path / "xdg" / "attnkit")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert os.path.dirname(warm._remembered(str(course))) == str(tmp_path / "home" / ".cache" / "attnkit")
    assert os.path.basename(warm._remembered(str(course))) == os.path.basename(kept)


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
def test_the_first_sandbox_starts_from_the_last_runs_settings_and_only_those(tmp_path, monkeypatch):
    """Does ./kit autograde's first sandbox, started from the settings the course's last run kept (before this run
    has loaded its configuration), serve the batch only where its settings are exactly the ones computed now: a
    changed grader file or a settings file others could write gets a sandbox of its own, and the early one is
    stopped with its uid's lock?"""
    from attnkit.batch.student import NBGRADER_ENV, _ahead
    from attnkit.sandbox import warm

    monkeypatch.setenv(warm.ENV_CACHE, str(tmp_path / "cache"))
    course_dir = tmp_path / "course"
    shutil.copytree(ROOT, course_dir, ignore=shutil.ignore_patterns(".venv", ".git", "autograded", "submitted",
                                                                  "feedback", "gradebook.db", "*.pyc"))
    os.chmod(course_dir / "source" / ASSIGNMENT, 0o755)
    root = str(course_dir)
    km, files = _ahead(Course(root), ASSIGNMENT)

    def first():
        return km.start_ahead(files, NBGRADER_ENV, 0, root=root)

    assert warm.launch_remembered(root) is None and warm._early is None  # no run before: nothing to start
    made = first()
    kept = warm._remembered(root)
    assert os.stat(kept).st_mode & 0o777 == 0o600
    made.discard()

    warm.launch_remembered(root)
    early = warm._early
    assert early is not None and early.alive
    taken = first()
    assert taken is early and warm._early is None, "the batch started another sandbox beside the early one"
    taken.wait_ready()
    taken.discard()

    warm.launch_remembered(root)
    early = warm._early
    (course_dir / "source" / ASSIGNMENT / "attention_checks.py").write_text("# changed since the last run\n")
    km, files = _ahead(Course(root), ASSIGNMENT)
    other = first()
    assert other is not early and not early.alive, "a sandbox with the old grader file was kept"
    assert other.key[0] == early.key[0], "the early sandbox's uid was not freed for the batch's own"
    other.discard()

    os.chmod(kept, 0o666)
    warm.launch_remembered(root)
    assert warm._early is None, "started from a settings file others can write"
    os.chmod(kept, 0o600)
    monkeypatch.setenv(warm.ENV_EARLY, "0")
    warm.launch_remembered(root)
    assert warm._early is None
    monkeypatch.setenv(warm.ENV_WARM, "0")  # the course's batches now start no warm sandbox: nothing is kept to start
    assert first() is None and not os.path.exists(kept)


PARENT = 'import os\nprint("PARENT", os.getppid())\n'


@pytest.mark.skipif(not WARM, reason="warm start needs the bwrap sandbox as root")
@pytest.mark.parametrize("limit_mb", [800, 8192], ids=["small-container", "room-for-warm"])
def test_a_batch_in_a_small_container_starts_its_kernels_cold_and_says_why(tmp_path, limit_mb):
    """Run as a person would, inside a memory cgroup as in a container (the CLI's and the grading process's memory
    in it; the kernels get cgroups of their own): under WARM_MB_PER_WORKER for its grading process (Gradescope's
    768 MB) does ./kit autograde start its kernels cold (no zygote beside them), say so below the memory line, and
    grade the same; with room, fork them warm and say nothing?"""
    import subprocess
    import sys

    kind, parent = sandbox.memory_cgroups()
    if kind is None:
        pytest.skip("no writable memory cgroup here to stand for a container")
    course = Course(ROOT).scratch_copy(notebooks=[FIRST])
    cgroup = sandbox.KernelCgroup(limit_mb, kind, parent)
    try:
        generate(course, ASSIGNMENT)
        dest = course.path("submitted", "in-a-container", ASSIGNMENT)
        dest.mkdir(parents=True)
        src = nbu.read(course.path("source", ASSIGNMENT, f"{FIRST}.ipynb"))
        nbu.write(_with_cell(nbu.fill(src), PARENT), dest / f"{FIRST}.ipynb")
        env = {k: v for k, v in os.environ.items() if k != sandbox.ENV_WARM}  # the host decides
        proc = subprocess.run(cgroup.wrap([sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde",
                                           ASSIGNMENT, "--workers", "1", "--quiet"]),
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        said = [line for line in proc.stderr.splitlines() if line.startswith("warm start:")]
        ppid = int(_outputs(course, FIRST, "in-a-container").split("PARENT", 1)[1].split()[0])
        if limit_mb < sandbox.warm.WARM_MB_PER_WORKER:
            assert said == [f"warm start: off: {limit_mb} MB (the memory limit of the cgroup this runs in), under the "
                            f"{sandbox.warm.WARM_MB_PER_WORKER} MB a grading process needs to keep a warm sandbox; "
                            f"kernels start cold ({sandbox.ENV_WARM}=1 turns it on)"], proc.stderr
            assert ppid == 1, "the kernel was forked from a zygote: its parent is not bwrap's init"
        else:
            assert said == [] and ppid != 1, (said, ppid)
        auto_max = sum(float(nbu.meta(c).get("points", 0)) for c in src.cells
                       if nbu.meta(c).get("grade") and not nbu.is_manual_cell(c))
        assert scores(course, ASSIGNMENT)["students"]["in-a-container"][FIRST]["score"] == auto_max > 0
    finally:
        cgroup.remove()
        shutil.rmtree(course.root, ignore_errors=True)
