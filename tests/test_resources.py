"""Grading-path resource limits: output floods read with bounded memory, a memory cgroup per
kernel (memfd_create counted), the IPC folder on a small tmpfs, only regular files graded, a per-student
wall-clock limit. The resource bank (banks/attacks/resources.py) is graded in ONE batch through the
CLI; the pieces are also checked on their own, fast."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbformat import NotebookNode

from attnkit.authoring import notebooks as nbu
from attnkit import sandbox
from banks.attacks.resources import (EVIDENCE, FIFO_STUDENT, FORBIDDEN, RESOURCES, SYMLINK_STUDENT)
from banks.attacks.tamper import Q3
from attnkit.batch.student import read_regular, submission_problems
from attnkit.reports import scores
from attnkit.preprocessors.cap_outputs import CapOutputs
from harness import ASSIGNMENT, assert_fixture, kit
from test_sandbox import MODE, Q3_AUTO, SANDBOXED, course_with, graded_from

CGROUPS = sandbox.memory_cgroups()
needs_cgroups = pytest.mark.skipif(CGROUPS[0] is None, reason=f"no writable memory cgroup here: {CGROUPS[1]}")
needs_sandbox = pytest.mark.skipif(not SANDBOXED, reason=f"no grading sandbox here ({MODE}): the resource bank "
                                                         f"must not run unsandboxed")
STUDENT_LIMIT = 20     # s: the stall student, graded alone, is stopped here
STALL = next(fx for fx in RESOURCES if fx.student == "res-stall")
BATCH = [fx for fx in RESOURCES if fx is not STALL]  # graded together, under the default wall-clock limit
PEAK_BOUND_KB = 1_500_000  # the grading process, torch and all (4.1 GB before, on the print flood)
FLOODS = ("res-print-flood", "res-image-flood")


# ---------------------------------------------------------------------------- fast: the pieces
def test_regular_files_are_read_without_following_or_blocking(tmp_path):
    """Can a symlink, a FIFO or an oversized file be read as a submission (or block the read)?"""
    real = tmp_path / "real.ipynb"
    real.write_bytes(b"{}")
    (tmp_path / "link.ipynb").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.ipynb")
    (tmp_path / "big.ipynb").write_bytes(b"x" * 2048)
    assert read_regular(real) == b"{}"
    for name, why in (("link.ipynb", "symbolic link"), ("fifo.ipynb", "a FIFO"), ("big.ipynb", "over 1,024 bytes")):
        t0 = time.monotonic()
        with pytest.raises(OSError) as exc:
            read_regular(tmp_path / name, cap=1024)
        assert why in exc.value.strerror and time.monotonic() - t0 < 2, (name, exc.value)


def test_submission_folder_entries_that_are_not_regular_are_left_out(tmp_path):
    """Are a symlinked extra file and a FIFO left out of grading (said), and a FIFO timestamp.txt refused?"""
    folder = tmp_path / "submitted" / "s" / "hw9"
    folder.mkdir(parents=True)
    (folder / "q.ipynb").write_text("{}")
    (folder / "data.txt").symlink_to("/etc/passwd")
    os.mkfifo(folder / "pipe.csv")
    refused, skip, notes = submission_problems(folder)
    assert refused == "" and sorted(skip) == ["data.txt", "pipe.csv"], (refused, skip)
    assert any("data.txt is a symbolic link" in n for n in notes) and any("pipe.csv is a FIFO" in n for n in notes)
    os.mkfifo(folder / "timestamp.txt")
    assert "timestamp.txt is a FIFO" in submission_problems(folder)[0]
    link = tmp_path / "submitted" / "t"
    link.symlink_to(tmp_path / "submitted" / "s")
    assert "is a symbolic link" in submission_problems(link / "hw9")[0]


def _budget():
    caps = CapOutputs()
    return caps, caps.cell_budget(caps.arriving())


def test_outputs_are_capped_as_they_arrive():
    """Does a flood of text, images or empty outputs pile up beyond the caps while a cell runs?"""
    caps, budget = _budget()
    kept = 0
    for _ in range(200):  # 200 MiB of text in 1 MiB messages
        content = {"name": "stdout", "text": "x" * (1 << 20)}
        if caps.admit("stream", content, budget):
            kept += len(content["text"])
    assert kept <= caps.max_cell_bytes and budget["cut"] >= 199 * (1 << 20)
    assert f"each cell keeps {caps.max_cell_bytes:,} bytes" in caps.cut_note(budget).text
    caps, budget = _budget()
    content = {"data": {"image/png": "A" * (caps.max_image_bytes + 1)}, "metadata": {"x": "y" * 10_000}}
    assert caps.admit("display_data", content, budget)
    assert "image/png" not in content["data"] and "images are capped" in content["data"]["text/plain"]
    assert content["metadata"] == {}
    kept = sum(caps.admit("display_data", {"data": {"text/plain": ""}}, budget) for _ in range(100_000))
    assert kept <= caps.max_cell_bytes // caps.OUTPUT_COST
    caps, budget = _budget()
    shown = [{"data": {"image/png": "A" * (caps.max_image_bytes - 10)}} for _ in range(100)]
    images = sum(caps.admit("display_data", c, budget) and "image/png" in c["data"] for c in shown)
    # images do not count against a cell's text, but the notebook's budget ends their growth
    assert images * (caps.max_image_bytes - 10) <= 2 * caps.max_notebook_bytes, images
    error = {"ename": "AssertionError", "evalue": "e" * 10**6, "traceback": ["t" * 10**6] * 1000}
    assert caps.admit("error", error, budget) and len(error["evalue"]) == 4000
    assert sum(map(len, error["traceback"])) <= caps.MAX_TRACEBACK
    # a kernel can send any number of error messages (it holds the session key): the first few are kept
    caps, budget = _budget()
    errors = [{"ename": "E", "evalue": "v" * 4000, "traceback": ["t" * 4000] * 200} for _ in range(10_000)]
    kept = [e for e in errors if caps.admit("error", e, budget)]
    assert len(kept) == caps.MAX_ERRORS and kept[0] is errors[0]
    assert sum(len(e["evalue"]) + sum(map(len, e["traceback"])) for e in kept) <= caps.max_cell_bytes


def test_a_hidden_test_reply_still_fits_in_one_message():
    """Would the message-size cap drop an agent's largest allowed reply?"""
    from attnkit.grader.remote import MAX_REPLY

    assert sandbox.MAX_MESSAGE > MAX_REPLY


@needs_sandbox
def test_an_oversized_message_fails_its_cell_and_the_next_cell_runs(tmp_path):
    """Can one output message over the cap hide a cell's error (a test cell would pass) or stall the next cell?"""
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("print('x' * (80 << 20))\nassert False, 'the hidden error'"),
                             new_code_cell("print('after')")])
    nb, _ = sandbox.CourseExecute(timeout=120).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    first, second = nb.cells
    assert [o.get("ename") for o in first.outputs if o.output_type == "error"] == ["OutputTooLarge"], first.outputs
    assert [o.get("text") for o in second.outputs] == ["after\n"], second.outputs


@needs_cgroups
def test_a_kernel_cgroup_counts_memfd():
    """Is memory held through memfd_create (which RLIMIT_DATA does not count) stopped by the cgroup?"""
    kind, parent = CGROUPS
    cg = sandbox.KernelCgroup(64, kind, parent)
    try:
        hog = ("import os\nfd = os.memfd_create('hog')\nfor _ in range(8):\n    os.write(fd, b'1' * (16 << 20))\n"
               "print('held 128 MiB')")
        proc = subprocess.run(cg.wrap([sys.executable, "-c", hog]), capture_output=True, text=True, timeout=60)
        assert proc.returncode == -9 and "held" not in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
        assert cg.oom_killed()
    finally:
        cg.remove()
    assert not os.path.exists(cg.path)


@pytest.mark.skipif(not sandbox.small_tmpfs_works(), reason="no tmpfs can be mounted here")
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(sandbox.SETPRIV), reason="needs root and setpriv")
def test_a_killed_workers_kernels_do_not_outlive_it():
    """After a stalled grading process is killed, can a kernel of its uid (in a session of its own, as
    jupyter_client starts kernels) live on for the next student who gets that uid? A held slot's stays."""
    free_uid, held = sandbox.claim_slot(200)
    held.close()                           # the killed worker's slot: free again
    busy_uid, busy = sandbox.claim_slot(210)  # a live worker's slot
    procs = [subprocess.Popen([sandbox.SETPRIV, *sandbox._setpriv_args(uid), "--", "sleep", "60"],
                              start_new_session=True) for uid in (free_uid, busy_uid)]
    try:
        time.sleep(0.3)
        reaped = sandbox.reap_free_slots()
        assert free_uid in reaped and busy_uid not in reaped, reaped
        assert procs[0].wait(timeout=10) == -9
        assert procs[1].poll() is None
    finally:
        busy.close()
        for p in procs:
            p.kill()
            p.wait()


def _grading_processes(cli: int) -> dict:
    """pid -> /proc/<pid>/comm of the grading processes ``cli`` (a ./kit autograde) started."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except (OSError, ValueError):
            continue
        if ppid == cli and (b"attnkit.batch.workers" in cmd or comm == "attnkit-grading"):
            found[int(entry)] = comm
    return found


def _pipes(pid: int) -> set[str]:
    """The pipes process ``pid`` holds open (an fd it closes meanwhile, a file it was reading, is passed over: a pipe
    it inherited stays open)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed since the listing
            continue
        if link.startswith("pipe:"):
            found.add(link)
    return found


@pytest.mark.skipif(not SANDBOXED, reason=f"no grading sandbox here ({MODE})")
@pytest.mark.parametrize("forked", [True, False], ids=["forked", "new-interpreter"])
def test_the_clis_grading_processes_hold_only_their_own_pipes(forked):
    """Are ./kit autograde's grading processes forks of it (named attnkit-grading; with ATTNKIT_FORK_WORKERS=0 new
    interpreters), each in a session of its own, and does neither hold a pipe of the other (the batch's end of the
    other's students or results: then that one would never see its end), both grading right?"""
    course = course_with([])
    try:
        for student in ("s1", "s2"):  # solved, with a first cell that keeps both processes grading a while
            src = nbu.read(course.path("source", ASSIGNMENT, f"{Q3}.ipynb"))
            nb = nbu.fill(src)
            nb.cells.insert(0, nbformat.v4.new_code_cell("import time; time.sleep(6)"))
            dest = course.path("submitted", student, ASSIGNMENT)
            dest.mkdir(parents=True)
            nbu.write(nb, dest / f"{Q3}.ipynb")
        env = {**os.environ, "ATTNKIT_FORK_WORKERS": "1" if forked else "0"}
        cli = subprocess.Popen([sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde", ASSIGNMENT,
                                "--workers", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, text=True)
        try:
            deadline, procs = time.monotonic() + 60, {}
            while len(procs) < 2 and time.monotonic() < deadline and cli.poll() is None:
                time.sleep(0.2)
                procs = _grading_processes(cli.pid)
            assert len(procs) == 2, f"grading processes found: {procs}"
            pipes = {}
            for pid, comm in procs.items():
                assert (comm == "attnkit-grading") == forked, comm
                assert os.getsid(pid) == pid, "not in a session of its own"
                pipes[pid] = _pipes(pid)
            one, two = pipes.values()
            assert one and two and not one & two, pipes
            out, _ = cli.communicate(timeout=300)
        finally:
            cli.kill()
            cli.wait()
        assert cli.returncode == 0, out[-3000:]
        got = scores(course, ASSIGNMENT)["students"]
        assert {s: got[s][Q3]["score"] for s in ("s1", "s2")} == {"s1": Q3_AUTO, "s2": Q3_AUTO}, got
    finally:
        shutil.rmtree(course.root, ignore_errors=True)


def test_the_run_folder_tmpfs_is_small(tmp_path):
    """Can 32 MiB be written into a run folder (connection file, IPC sockets, kernel log)?"""
    folder = tempfile.mkdtemp(prefix="attnkit-test-run-")
    try:
        assert sandbox.mount_small_tmpfs(folder)
        with pytest.raises(OSError) as exc, open(os.path.join(folder, "fill"), "wb") as f:
            for _ in range(32):
                f.write(b"\0" * (1 << 20))
                f.flush()
        assert "No space left" in str(exc.value)
    finally:
        sandbox.remove_dir(folder)
    assert not os.path.exists(folder)


def test_a_killed_graders_scratch_in_the_temp_dir_is_swept(tmp_path, monkeypatch):
    """A grading process killed before it cleaned up leaves its scratch (a kernel's copy of the files, a warm-start
    interpreter's home, a worker's log) in the temp dir: does the next batch's sweep remove what a process that
    is gone made, and leave what a live process made, names of other forms, and the target of a link?"""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    gone = [f"attnkit-kernel-{dead.pid}-a1b2", f"attnkit-warm-{dead.pid}-c3d4", f"attnkit-run-{dead.pid}-e5f6"]
    for name in gone:
        (tmp_path / name).mkdir()
        (tmp_path / name / "attention_checks.py").write_text("# a copy")
    (tmp_path / f"attnkit-worker-{dead.pid}-g7h8.log").write_text("log")
    (tmp_path / f"attnkit-warm-{dead.pid}-link").symlink_to(outside)
    kept = [f"attnkit-kernel-{os.getpid()}-live", "attnkit-kernel-12345678", f"other-{dead.pid}-x1",
            f"attnkit-test-{dead.pid}-y2"]
    for name in kept:
        (tmp_path / name).mkdir()
    sandbox.sweep()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert (outside / "keep").read_text() == "x"


OOM_PROBE = """
print("adj", open("/proc/self/oom_score_adj").read().strip())
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1")
except OSError as e:
    print("lowering refused:", type(e).__name__)
print("now", open("/proc/self/oom_score_adj").read().strip())
"""


@pytest.mark.parametrize("how", ["warm", "bwrap", "setpriv"])
def test_the_out_of_memory_killer_stops_a_kernel_before_any_grader(tmp_path, how):
    """Where no memory cgroup bounds a kernel (Gradescope's container), the host's out-of-memory killer picks
    its victim: is every kernel (forked warm, started cold in bwrap or under setpriv) its first choice, so that
    a notebook that takes the memory loses its own kernel and never the grader's process? Can the notebook put
    itself below the graders?"""
    import asyncio

    mode = "bwrap" if how == "warm" else how
    why = sandbox.probe(mode)
    if why:
        pytest.skip(f"{mode} cannot run here: {why}")
    if how == "warm" and not (sandbox.detect() == "bwrap" and os.geteuid() == 0):
        pytest.skip("warm start needs the bwrap sandbox as root")
    workdir = tmp_path / "work"
    workdir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(workdir, 0o755)
    with sandbox.warm_start(prestart=False) if how == "warm" else contextlib.nullcontext():
        out, proc = asyncio.run(sandbox.run_source(str(workdir), OOM_PROBE, timeout=120, sandbox=mode))
    assert isinstance(proc, sandbox.ForkedKernel) == (how == "warm"), proc
    assert f"adj {sandbox.OOM_SCORE_ADJ}" in out, out
    assert "lowering refused: PermissionError" in out and f"now {sandbox.OOM_SCORE_ADJ}" in out, out
    with open("/proc/self/oom_score_adj") as f:
        assert f.read().strip() != str(sandbox.OOM_SCORE_ADJ), "the grader made itself the first choice"


# ---------------------------------------------------------------------------- slow: the bank through the CLI
@pytest.fixture(scope="module")
def bank():
    if not SANDBOXED:
        pytest.skip(f"no grading sandbox here ({MODE})")
    course = course_with(BATCH)
    source = course.path("source", ASSIGNMENT, f"{Q3}.ipynb")
    for student in (SYMLINK_STUDENT, FIFO_STUDENT):
        course.path("submitted", student, ASSIGNMENT).mkdir(parents=True)
    course.path("submitted", SYMLINK_STUDENT, ASSIGNMENT, f"{Q3}.ipynb").symlink_to(source)
    os.mkfifo(course.path("submitted", FIFO_STUDENT, ASSIGNMENT, f"{Q3}.ipynb"))
    course.path("submitted", "res-symlink-extra", ASSIGNMENT, "data.txt").symlink_to(source)
    peaks = course.root / "peaks.log"
    env = {"ATTNKIT_CELL_TIMEOUT": "300", "ATTNKIT_PEAK_LOG": str(peaks)}
    t0 = time.perf_counter()
    out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "2", env=env, timeout=1500)
    seconds = time.perf_counter() - t0
    feedback = kit(course.root, "feedback", ASSIGNMENT, "--student", SYMLINK_STUDENT, timeout=600)
    peak = {}
    if peaks.exists():
        for line in peaks.read_text().splitlines():
            sid, kb = line.split()
            peak[sid] = int(kb)
    sizes = {s: course.path("autograded", s, ASSIGNMENT, f"{Q3}.ipynb").stat().st_size
             for s in FLOODS if course.path("autograded", s, ASSIGNMENT, f"{Q3}.ipynb").exists()}
    print(f"resource bank graded in {seconds:.0f}s ({MODE}); grading processes' peak RSS (kB): {peak}; "
          f"autograded flood notebooks (bytes): {sizes}")
    yield SimpleNamespace(course=course, out=out, seconds=seconds, peak=peak, sizes=sizes, feedback=feedback,
                          graded=graded_from(course) if course.path("reports").is_dir() else None)
    shutil.rmtree(course.root, ignore_errors=True)


@pytest.fixture(scope="module")
def stalled():
    """The stall case alone, under a short wall-clock limit (in the batch, the limit would have to
    outlast the floods, which take ~40 s on a busy 2-core machine)."""
    if not SANDBOXED:
        pytest.skip(f"no grading sandbox here ({MODE})")
    course = course_with([STALL])
    env = {"ATTNKIT_CELL_TIMEOUT": "300", "ATTNKIT_STUDENT_TIMEOUT": str(STUDENT_LIMIT)}
    t0 = time.perf_counter()
    out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "1", env=env, timeout=600)
    yield SimpleNamespace(course=course, out=out, seconds=time.perf_counter() - t0, graded=graded_from(course))
    shutil.rmtree(course.root, ignore_errors=True)


def _answer_output(course, student) -> str:
    nb = nbu.read(course.path("autograded", student, ASSIGNMENT, f"{Q3}.ipynb"))
    cell = next(c for c in nb.cells if nbu.grade_id(c) == "q3_mha")
    return "\n".join(o.get("text") or o.get("data", {}).get("text/plain") or f"{o.get('ename')}: {o.get('evalue')}"
                     for o in cell.get("outputs", []))


def _report(bank) -> dict:
    return {r["student"]: r for r in json.loads(bank.course.path("reports", f"{ASSIGNMENT}-autograde.json").read_text())}


@pytest.mark.slow
@needs_sandbox
def test_resource_batch_completes(bank):
    """Does the batch finish (a refused file is a failure to look at: exit 1), with the limits line printed?"""
    out = bank.out
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert sandbox.describe_limits(MODE, 4096) in out.stderr, out.stderr[-2000:]
    report = _report(bank)
    for sid in [fx.student for fx in BATCH] + [SYMLINK_STUDENT, FIFO_STUDENT]:
        assert sid in report and sid in out.stdout, sid


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("fx", BATCH, ids=[f.student for f in BATCH])
def test_resource_case_scores_what_the_answers_deserve(bank, fx):
    """Does each case score exactly as its answers deserve, its payload stopped (its output says how)?"""
    statuses = [n.status for n in bank.graded.results[fx.student].notebooks]
    assert statuses == [fx.status], (fx.student, bank.graded.results[fx.student])
    assert_fixture(bank.graded, fx)
    if fx.status == "graded":
        text = _answer_output(bank.course, fx.student)
        assert not [w for w in FORBIDDEN if w in text], f"{fx.student}: the attack worked:\n{text[-1500:]}"
        if fx.student in EVIDENCE:
            assert EVIDENCE[fx.student] in text, f"{fx.student}: no {EVIDENCE[fx.student]!r} in:\n{text[-1500:]}"


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("student", FLOODS)
def test_a_flood_leaves_a_small_notebook_and_a_bounded_grader(bank, student):
    """Does 1 GiB of print, or a 500 MiB image, reach the autograded notebook or grow the grading process?"""
    assert bank.sizes[student] < 20_000_000, bank.sizes
    assert bank.peak.get(student), bank.peak
    assert bank.peak[student] < PEAK_BOUND_KB, f"{student}: peak RSS {bank.peak[student]} kB"


@pytest.mark.slow
@needs_sandbox
@needs_cgroups
def test_memfd_kernel_is_stopped_by_its_cgroup(bank):
    """Is the 6 GiB memfd kernel stopped by its memory cgroup, its students' neighbours untouched?"""
    text = _answer_output(bank.course, "res-memfd")
    assert "memory limit (5120 MiB" in text and "held 6144" not in text, text[-1500:]
    data = scores(bank.course, ASSIGNMENT)["students"]
    assert data["res-memfd"][Q3]["score"] == 0 and data["res-plain-right"][Q3]["score"] == Q3_AUTO


@pytest.mark.slow
@needs_sandbox
def test_symlink_to_the_instructors_notebook_is_refused(bank):
    """Is a symlink to source/ graded as the student's, or does its feedback show the solution?"""
    nb = _report(bank)[SYMLINK_STUDENT]["notebooks"][0]
    assert nb["status"] == "malformed" and "symbolic link" in nb["message"] and "scored 0" in nb["message"], nb
    assert scores(bank.course, ASSIGNMENT)["students"][SYMLINK_STUDENT][Q3]["score"] == 0
    assert not bank.course.path("autograded", SYMLINK_STUDENT, ASSIGNMENT, f"{Q3}.ipynb").exists()
    solution = "torch.softmax(attn_scores, dim=-1)"
    for page in bank.course.root.glob(f"feedback/{SYMLINK_STUDENT}/**/*.html"):
        assert solution not in page.read_text(errors="replace"), page


@pytest.mark.slow
@needs_sandbox
def test_a_fifo_named_like_a_notebook_is_refused_at_once(bank):
    """Does a FIFO named like the notebook block the batch, or get graded?"""
    nb = _report(bank)[FIFO_STUDENT]["notebooks"][0]
    assert nb["status"] == "malformed" and "a FIFO" in nb["message"] and nb["seconds"] < 5, nb


@pytest.mark.slow
@needs_sandbox
def test_a_symlinked_extra_file_is_not_copied_for_grading(bank):
    """Does a symlink beside the notebook (to the instructor's notebook) reach the kernel or autograded/?"""
    nb = _report(bank)["res-symlink-extra"]["notebooks"][0]
    assert "data.txt is a symbolic link" in nb["message"], nb
    assert not bank.course.path("autograded", "res-symlink-extra", ASSIGNMENT, "data.txt").exists()


@pytest.mark.slow
@needs_sandbox
def test_a_stalled_student_is_stopped_at_the_wall_clock_limit(stalled):
    """Does a student whose grading stalls hold up the batch, or go unrecorded (scored 0, the reason said)?"""
    assert stalled.out.returncode == 1, stalled.out.stdout[-3000:] + stalled.out.stderr[-3000:]
    nb = _report(stalled)["res-stall"]["notebooks"][0]
    assert nb["status"] == "failed" and f"stopped after {STUDENT_LIMIT} s" in nb["message"], nb
    assert "tried 1 time)" in nb["message"], nb
    assert stalled.seconds < STUDENT_LIMIT + 90, stalled.seconds  # stopped at the limit, not the 300 s cell timeout
    statuses = [n.status for n in stalled.graded.results["res-stall"].notebooks]
    assert statuses == [STALL.status]
    assert_fixture(stalled.graded, STALL)
