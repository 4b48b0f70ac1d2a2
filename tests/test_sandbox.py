"""The grading sandbox: the hostile bank through the real CLI, in one batch, and the
machine checked afterwards; a grading process that dies; refusing to grade unsandboxed; the
setpriv fallback."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from attnkit import sandbox
from attnkit.course import Course
from attnkit.authoring.release import generate
from attnkit.reports import failures, scores
from attnkit.batch.results import load_report
from banks.attacks.hostile import (DAEMON, FORBIDDEN, GRADEBOOK_WRITE, HOSTILE, KILL_ALL, KILL_PARENT, LISTEN_PORT, PROC_CWD,
                              PROC_ROOT, TAG, right, wrong)
from banks.attacks.tamper import Q3, Q3_TESTS, q3
from harness import ASSIGNMENT, Graded, assert_fixture, kit, submission_for

from attnkit.authoring import notebooks as nbu

ROOT = Path(__file__).resolve().parents[1]
VENV_SITE = Path(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
try:
    MODE = sandbox.detect()
except sandbox.SandboxUnavailable as exc:
    MODE = f"broken: {exc}"
SANDBOXED = MODE in ("bwrap", "setpriv")
# The bank kills every process it may signal and forks without end: never outside a sandbox.
needs_sandbox = pytest.mark.skipif(not SANDBOXED, reason=f"no grading sandbox here ({MODE}); the hostile bank "
                                                         f"must not run unsandboxed")

Q3_AUTO = sum(Q3_TESTS.values())  # the autograded maximum of Q3
FAST = {"ATTNKIT_CELL_TIMEOUT": "20"}  # infinite loops in the bank stop sooner


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def course_with(fixtures) -> Course:
    course = Course(ROOT).scratch_copy(notebooks=[Q3])
    generate(course, ASSIGNMENT)
    for fx in fixtures:
        dest = course.path("submitted", fx.student, ASSIGNMENT)
        dest.mkdir(parents=True)
        nbu.write(submission_for(fx, course), dest / f"{Q3}.ipynb")
    return course


def graded_from(course: Course) -> Graded:
    """What the CLI's batch wrote: the report (typed) and the gradebook, read back as the banks read them."""
    report = load_report(course.root, ASSIGNMENT)
    messages = {}
    for sid in report:
        path = course.path("autograded", sid, ASSIGNMENT, f"{Q3}.ipynb")
        messages[sid] = failures(nbu.read(path)) if path.exists() else {}
    return Graded(course, report, scores(course, ASSIGNMENT)["students"], messages)


def _under_another_grader(pid: str, parents: dict, args: dict, root: str) -> bool:
    """Is a grading process (a batch or a worker) of another course than ``root`` among ``pid``'s ancestors?
    Then the process belongs to another grading run on this machine (other tests), still under way."""
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid]
        if pid == str(os.getpid()):  # under this test run: ours
            return False
        grader = args.get(pid, "")
        if ("attnkit.batch.workers" in grader or "-m attnkit --root" in grader) and root not in grader:
            return True
        if "pytest" in grader:  # another test run, grading in its own process
            return True
    return False


def survivors(root=None) -> list[str]:
    """Processes a submission left: the bank's tag in an argv, or any process of a sandbox uid (with
    ``root``, the course graded: not those under another course's grading, still under way)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,uid,args", "--no-headers"], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines() if len(line.split(None, 3)) >= 3]
    parents = {r[0]: r[1] for r in rows}
    argv = {r[0]: (r[3] if len(r) > 3 else "") for r in rows}
    found = []
    for row in rows:
        pid, uid, args = row[0], row[2], argv[row[0]]
        line = f"{pid} {uid} {args}"
        if root is not None and _under_another_grader(pid, parents, argv, str(root)):
            continue
        # a sandbox uid running this checkout's Python (a forked child keeps the kernel's command line);
        # graders of other checkouts on the same machine are not ours to judge
        ours = uid.isdigit() and int(uid) >= sandbox.UID_BASE and sys.prefix in args
        if TAG in args and "ps -eo" not in args or ours:
            found.append(line.strip())
    return found


class Listener:
    """A TCP listener on the grading machine that records every connection."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.connections, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                conn, addr = self.sock.accept()
                self.connections.append(addr)
                conn.close()
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def _kit_state():
    return {"repo source": tree_hash(ROOT / "source"), "repo release": tree_hash(ROOT / "release"),
            "kit": tree_hash(ROOT / "attnkit"), "venv top level": sorted(p.name for p in VENV_SITE.iterdir())}


@pytest.fixture(scope="module")
def hostile():
    if not SANDBOXED:
        pytest.skip(f"no grading sandbox here ({MODE})")
    listener = Listener(LISTEN_PORT)
    course = course_with(HOSTILE)
    before = {"source": tree_hash(course.path("source")), "release": tree_hash(course.path("release")),
              **_kit_state()}
    t0 = time.perf_counter()
    out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "2", env=FAST, timeout=1500)
    seconds = time.perf_counter() - t0
    time.sleep(2)  # anything that outlived its notebook would still be here
    after = {"source": tree_hash(course.path("source")), "release": tree_hash(course.path("release")),
             **_kit_state()}
    left = survivors(course.root)
    listener.close()
    print(f"hostile batch of {len(HOSTILE)} graded in {seconds:.0f}s ({MODE})")
    yield SimpleNamespace(course=course, out=out, before=before, after=after, left=left, listener=listener,
                          graded=graded_from(course) if course.path("reports").is_dir() else None)
    import shutil
    shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.slow
@needs_sandbox
def test_hostile_batch_completes(hostile):
    """Exit 0, a table row and a report entry, status graded, for every student of the bank."""
    out = hostile.out
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sandbox.describe(MODE) in out.stderr
    assert sandbox.describe_limits(MODE, 4096) in out.stderr  # which memory limit is in force, said once
    for fx in HOSTILE:
        assert fx.student in out.stdout, f"{fx.student} missing from the table"
        statuses = [n.status for n in hostile.graded.results[fx.student].notebooks]
        assert statuses == ["graded"], (fx.student, hostile.graded.results[fx.student])


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("fx", HOSTILE, ids=[f.student for f in HOSTILE])
def test_hostile_case_gains_nothing(hostile, fx):
    """The attack ran (its output says how it was stopped) and the score is what the answers deserve."""
    assert_fixture(hostile.graded, fx)
    if hasattr(fx, "evidence"):
        text = answer_output(hostile.course, fx.student)
        assert fx.evidence in text, f"{fx.student}: the payload's output lacks {fx.evidence!r}:\n{text[-1500:]}"
        assert not [w for w in FORBIDDEN if w in text], f"{fx.student}: the attack worked:\n{text[-1500:]}"


def answer_output(course, student) -> str:
    nb = nbu.read(course.path("autograded", student, ASSIGNMENT, f"{Q3}.ipynb"))
    cell = next(c for c in nb.cells if nbu.grade_id(c) == "q3_mha")
    return "\n".join(o.get("text") or f"{o.get('ename')}: {o.get('evalue')}" for o in cell.get("outputs", []))


@pytest.mark.slow
@needs_sandbox
def test_no_process_of_a_submission_survives(hostile):
    assert hostile.left == [], hostile.left


@pytest.mark.slow
@needs_sandbox
def test_course_kit_and_gradebook_change_only_where_grading_writes(hostile):
    changed = [k for k in hostile.before if hostile.before[k] != hostile.after[k]]
    assert not changed, f"changed by grading the hostile bank: {changed}"
    canaries = [str(p) for p in hostile.course.root.rglob("*hostile-canary*")]
    canaries += [str(p) for p in VENV_SITE.glob("sitecustomize.py")]
    assert not canaries, canaries
    with hostile.course.gradebook() as gb:
        extra = [(g.name, g.extra_credit) for sub in gb.assignment_submissions(ASSIGNMENT)
                 for nb in sub.notebooks for g in nb.grades if g.extra_credit]
    assert extra == []


@pytest.mark.slow
@needs_sandbox
def test_no_connection_reaches_the_grading_machine(hostile):
    assert hostile.listener.connections == []


def test_sandbox_in_use_under_ci():
    """CI installs bubblewrap (.ci/run): there the sandbox must actually be in use."""
    if os.environ.get("CI") != "true":
        pytest.skip("not under CI (CI=true)")
    assert MODE == "bwrap", sandbox.describe(MODE) if MODE in sandbox.MODES else MODE


def test_unsandboxed_grading_is_refused_without_the_flag(tmp_path):
    course = Course(ROOT).scratch_copy(notebooks=[Q3])
    try:
        out = kit(course.root, "autograde", ASSIGNMENT, env={**FAST, sandbox.ENV_MODE: "none"}, timeout=1500)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "refusing to grade submissions unsandboxed" in out.stderr
        assert "--unsandboxed-i-accept-the-risk" in out.stderr
        assert "sandbox: NONE" in out.stderr
    finally:
        import shutil
        shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.slow
def test_a_dead_grading_process_costs_only_its_student():
    """Unsandboxed (forced), a notebook kills its grading process: that student is retried once, then
    recorded as could-not-be-graded; the other student is graded; table, report, exit 1."""
    fixtures = [q3("plain-right", why="graded beside a killer"),
                right("killer", KILL_PARENT, "kills its grading process")]
    course = course_with(fixtures)
    try:
        out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "2", "--unsandboxed-i-accept-the-risk",
                  env={**FAST, sandbox.ENV_MODE: "none"}, timeout=1500)
        assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
        assert "WARNING: grading submissions WITHOUT a sandbox" in out.stderr
        report = {r["student"]: r for r in json.loads(course.path("reports", f"{ASSIGNMENT}-autograde.json").read_text())}
        killed = report["killer"]["notebooks"][0]
        assert killed["status"] == "failed"
        assert killed["message"].startswith("could not be graded: the grading process died (killed by signal SIGKILL)")
        assert "tried 2 times" in killed["message"]
        assert report["plain-right"]["notebooks"][0]["status"] == "graded"
        data = scores(course, ASSIGNMENT)["students"]
        assert data["plain-right"][Q3]["score"] == Q3_AUTO and data["killer"][Q3]["score"] == 0
        assert "killer" in out.stdout and "plain-right" in out.stdout
    finally:
        import shutil
        shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(sandbox.probe("setpriv") is not None,
                    reason=f"the setpriv fallback cannot run here: {sandbox.probe('setpriv')}")
def test_setpriv_fallback_keeps_answers_out_of_reach():
    """Forced fallback (as where bwrap cannot run): unprivileged uid, course unreadable to it."""
    fixtures = [q3("fb-plain-right", why="right"),
                wrong("fb-proc-cwd", PROC_CWD, "solution through /proc/<pid>/cwd"),
                wrong("fb-proc-root", PROC_ROOT, "solution through /proc/<pid>/root"),
                wrong("fb-gradebook-write", GRADEBOOK_WRITE, "extra credit into the gradebook"),
                right("fb-daemon", DAEMON, "daemon left running"),
                right("fb-kill-all", KILL_ALL, "kill -9 -1")]
    course = course_with(fixtures)
    try:
        out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "2", env={**FAST, sandbox.ENV_MODE: "setpriv"}, timeout=1500)
        assert "sandbox: FALLBACK setpriv" in out.stderr
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        time.sleep(2)
        assert survivors(course.root) == []
        graded = graded_from(course)
        for fx in fixtures:
            assert_fixture(graded, fx)
        with course.gradebook() as gb:
            assert not [g for sub in gb.assignment_submissions(ASSIGNMENT) for nb in sub.notebooks
                        for g in nb.grades if g.extra_credit]
    finally:
        import shutil
        shutil.rmtree(course.root, ignore_errors=True)


def _default_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _signal_masks(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return " ".join(l.strip() for l in f if l.startswith(("SigBlk", "SigIgn", "SigCgt")))
    except OSError as exc:
        return f"(no status: {exc})"


def _wait_for(predicate, seconds):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
@needs_sandbox
def test_a_killed_or_interrupted_grader_loses_nothing_and_a_rerun_finishes():
    """SIGKILL to ./kit autograde mid-batch: no sandbox survives, the gradebook opens, and the
    same command finishes the job. Ctrl-C (SIGINT): exit 130, a clear line, grades kept."""
    # one slow (right) answer keeps the batch under way when the signal comes: warm kernels grade
    # the others in about a second each
    slow = right("stop-slow", "import time\ntime.sleep(12)", "a slow answer")
    fixtures = [q3(f"stop-{i}", why="right") for i in range(3)] + [right("stop-daemon", DAEMON, "a daemon"), slow]
    course = course_with(fixtures)
    import shutil
    cmd = [sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde", ASSIGNMENT, "--workers", "2"]
    env = {**os.environ, "ATTNKIT_CELL_TIMEOUT": "20"}
    try:
        for sig in (9, 2):
            shutil.rmtree(course.path("autograded"), ignore_errors=True)  # wait below for grading under way
            # as from a terminal: SIGINT with its default disposition, whatever this test process inherited
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=_default_sigint)
            assert _wait_for(lambda: course.path("autograded").is_dir() and any(course.path("autograded").iterdir()), 120)
            time.sleep(3)  # kernels running
            masks = _signal_masks(proc.pid)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
            if sig == 2:
                assert proc.returncode == 130, f"{masks}\n" + out[-2000:] + err[-2000:]
                assert "interrupted:" in err and "run the same command again" in err and "Traceback" not in err
            assert _wait_for(lambda: survivors(course.root) == [], 30), survivors(course.root)
            with course.gradebook() as gb:  # still a consistent database
                gb.assignment_submissions(ASSIGNMENT)
        out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "2", env=FAST, timeout=1500)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        data = scores(course, ASSIGNMENT)["students"]
        assert {sid: data[sid][Q3]["score"] for sid in data} == {fx.student: Q3_AUTO for fx in fixtures}
        assert survivors(course.root) == []
    finally:
        shutil.rmtree(course.root, ignore_errors=True)
