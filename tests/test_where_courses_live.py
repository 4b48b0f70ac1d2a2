"""Setting up and grading where courses live: the interpreter ./kit chooses, a cgroup v2 subtree systemd delegates
to an ordinary user (over a fake cgroup tree: this machine kind has cgroup v1), and the README's first command run
by an ordinary user with the distribution's python3 in a course folder reached through a symlink."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import early
from attnkit import sandbox

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


# ---------------------------------------------------------------------------- the interpreter
def _pythons() -> dict[str, str]:
    """version -> one interpreter of that version found on this machine (PATH, pyenv's versions)."""
    found = {}
    cands = [*glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python3")), "/usr/bin/python3", sys.executable]
    for exe in cands:
        try:
            out = subprocess.run([exe, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                                 text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0:
            found.setdefault(out.stdout.strip(), exe)
    return found


PYTHONS = _pythons()


def _bare_kit(tmp_path: Path) -> Path:
    """The kit's entry point and pins alone, without a venv: what ./kit reads before it installs anything."""
    for name in ("kit", "pyproject.toml", "requirements.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


TOOLS = ("cat", "sha1sum", "cut", "dirname", "sed", "sort", "tail", "head", "timeout", "id", "rm", "touch")


def _path_of(tmp_path: Path, links: dict[str, str]) -> str:
    """A PATH of exactly these Pythons (name -> interpreter) and the tools ./kit uses."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, exe in {**{t: shutil.which(t) for t in TOOLS}, **links}.items():
        (bindir / name).symlink_to(exe)
    return str(bindir)


BASH = shutil.which("bash")


def test_no_fitting_python_is_one_line_and_nothing_runs(tmp_path):
    """With only Pythons the pins do not support on PATH, does ./kit say in one line which versions work and which
    it found, exit non-zero and make no venv?"""
    others = {v: exe for v, exe in PYTHONS.items() if not v.startswith("3.11.")}
    if not others:
        pytest.skip("no Python other than 3.11 on this machine")
    kit = _bare_kit(tmp_path)
    links = {f"python{v.rsplit('.', 1)[0]}": exe for v, exe in others.items()}
    out = subprocess.run([BASH, str(kit / "kit"), "help"], capture_output=True, text=True, timeout=120,
                         env={"PATH": _path_of(tmp_path, links), "HOME": str(tmp_path)})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 3 and len(lines) == 1, out.stderr
    assert lines[0].startswith("kit: needs Python >=3.11,<3.12; found "), lines[0]
    for v in others:
        assert f"{v} (" in lines[0], lines[0]
    assert not (kit / ".venv").exists()


def test_kit_python_that_does_not_fit_is_refused(tmp_path):
    """Is KIT_PYTHON naming an unsupported version refused in one line, even with a fitting python3 on PATH?"""
    other = next((exe for v, exe in PYTHONS.items() if not v.startswith("3.11.")), None)
    if other is None:
        pytest.skip("no Python other than 3.11 on this machine")
    kit = _bare_kit(tmp_path)
    out = subprocess.run([BASH, str(kit / "kit"), "help"], capture_output=True, text=True, timeout=120,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KIT_PYTHON": other})
    assert out.returncode == 3 and out.stderr.count("\n") == 1, out.stderr
    assert f"(KIT_PYTHON={other}); found " in out.stderr and not (kit / ".venv").exists()


def test_the_newest_fitting_python_is_chosen(tmp_path):
    """Among several python3.X on PATH, does ./kit choose the newest the pins support (not the first, not a newer
    unsupported one) and say which, before it makes the venv?"""
    fit = sorted((v for v in PYTHONS if v.startswith("3.11.")), key=lambda v: tuple(map(int, v.split("."))))
    other = [v for v in PYTHONS if not v.startswith("3.11.")]
    if len(fit) < 2:
        pytest.skip(f"needs two Python 3.11 releases here (found {', '.join(PYTHONS)})")
    kit = _bare_kit(tmp_path)
    (kit / ".venv").write_text("")  # no venv can be made here: the kit stops right after choosing
    links = {"python3": PYTHONS[fit[0]], "python3.11": PYTHONS[fit[-1]]}
    links.update({f"python{v.rsplit('.', 1)[0]}": PYTHONS[v] for v in other if not v.startswith("3.11")})
    out = subprocess.run([BASH, str(kit / "kit"), "help"], capture_output=True, text=True, timeout=120,
                         env={"PATH": _path_of(tmp_path, links), "HOME": str(tmp_path)})
    assert out.returncode == 3, out.stderr
    assert out.stderr.splitlines()[0] == f"kit: Python {fit[-1]} ({tmp_path}/bin/python3.11)", out.stderr


# ---------------------------------------------------------------------------- a delegated cgroup v2 subtree
def _tree(root: Path, own: str, delegated: str, uid: int, controllers: str = "cpu memory pids",
          procs: str = "") -> Path:
    """A fake /sys/fs/cgroup: cgroup v2, ``own`` this process's cgroup, ``delegated`` and below owned by ``uid``,
    everything above owned by another uid (as systemd leaves it)."""
    (root / "cgroup.controllers").write_text(controllers + "\n")
    folder = root
    for part in own.strip("/").split("/"):
        folder = folder / part
        folder.mkdir()
        for name, text in (("cgroup.controllers", controllers), ("cgroup.subtree_control", ""),
                           ("cgroup.procs", "")):
            (folder / name).write_text(text + "\n" if text else "")
    (folder / "cgroup.procs").write_text(procs)
    top = root / delegated.strip("/")
    for path in [p for p in root.rglob("*")] + [root]:
        inside = path == top or top in path.parents
        os.chown(path, uid if inside else NOBODY, -1)
    return top


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a fake cgroup tree of two owners needs root (chown)")


@needs_root
def test_delegated_subtree_is_found_from_a_user_service(tmp_path):
    """A process in user@1000.service/app.slice/x.scope, the subtree systemd delegates to uid 1000: is the top of
    that subtree (not user-1000.slice, which root owns) where kernel cgroups go?"""
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope"
    top = _tree(tmp_path, own, "/user.slice/user-1000.slice/user@1000.service", 1000)
    assert sandbox.delegated_subtree(str(tmp_path), own, 1000) == (str(top), "")


@needs_root
def test_a_login_session_has_no_delegated_subtree(tmp_path):
    """A process in a login session's scope (root's): is there no subtree, and does the reason name the cgroup and
    how to get one?"""
    own = "/user.slice/user-1000.slice/session-3.scope"
    _tree(tmp_path, own, "/nowhere", 1000)
    top, why = sandbox.delegated_subtree(str(tmp_path), own, 1000)
    assert top is None and own in why and "systemd-run --user --scope -p Delegate=yes" in why


@needs_root
def test_a_subtree_without_the_memory_controller_is_not_used(tmp_path):
    """A delegated subtree without the memory controller: refused, the controllers it has named?"""
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope"
    _tree(tmp_path, own, "/user.slice/user-1000.slice/user@1000.service", 1000, controllers="cpu pids")
    top, why = sandbox.delegated_subtree(str(tmp_path), own, 1000)
    assert top is None and "no memory controller (cgroup.controllers: cpu pids)" in why


def test_cgroup_v1_has_no_delegated_subtree(tmp_path):
    """On a cgroup v1 host (no cgroup.controllers at the top), does the reason say so?"""
    (tmp_path / "memory").mkdir()
    top, why = sandbox.delegated_subtree(str(tmp_path), "/", os.geteuid())
    assert top is None and "cgroup v1" in why


@needs_root
def test_kernels_go_below_a_leaf_for_the_processes_already_there(tmp_path):
    """A Delegate=yes scope holding the kit's own processes: do they move to a leaf, and do kernel cgroups go in
    a folder whose children get memory and pids (cgroup v2 gives controllers only to children of a cgroup
    without processes), each with memory.max and pids.max?"""
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"
    top = _tree(tmp_path, own, own, os.geteuid(), procs="4242\n4243\n")
    assert sandbox.delegated_subtree(str(tmp_path), own, os.geteuid())[0] == str(top)
    (top / "attnkit").mkdir()  # what the kernel shows in a new child: its parent's subtree_control
    (top / "attnkit" / "cgroup.controllers").write_text("memory pids\n")
    (top / "attnkit" / "cgroup.subtree_control").write_text("")
    parent = sandbox.delegated_parent(str(top))
    assert parent == str(top / "attnkit")
    assert (top / "attnkit-grader" / "cgroup.procs").read_text() == "4243"  # each pid written in turn
    assert (top / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (top / "attnkit" / "cgroup.subtree_control").read_text() == "+memory +pids"
    cg = sandbox.KernelCgroup(5120, "v2", parent, pids=256)
    try:
        assert Path(cg.path, "memory.max").read_text() == str(5120 << 20)
        assert Path(cg.path, "pids.max").read_text() == "256"
    finally:
        os.rmdir(cg.path) if not os.listdir(cg.path) else shutil.rmtree(cg.path)


def test_the_memory_line_says_what_an_ordinary_user_lacks(monkeypatch):
    """For an ordinary user without a delegated subtree, does the line below the sandbox line say there is no
    cgroup limit, and why?"""
    monkeypatch.setattr(sandbox.limits, "memory_cgroups", lambda: (None, "not root, and this host has cgroup v1, and only "
                                                            "cgroup v2 delegates a subtree to an ordinary user"))
    line = sandbox.describe_limits("bwrap", 4096)
    assert line.startswith("memory: NO cgroup limit, only RLIMIT_DATA 4096 MiB") and "not root, and this host has " \
           "cgroup v1" in line


def test_the_memory_line_names_the_delegated_subtree(monkeypatch, tmp_path):
    """For an ordinary user with a delegated subtree, does the line name memory.max, pids.max and the subtree?"""
    parent = tmp_path / "run-r1.scope" / "attnkit"
    parent.mkdir(parents=True)
    (parent / "cgroup.subtree_control").write_text("memory pids\n")
    monkeypatch.setattr(sandbox.limits, "memory_cgroups", lambda: ("v2", str(parent)))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    line = sandbox.describe_limits("bwrap", 4096, pids=256)
    assert line.startswith("memory: cgroup v2 memory.max = 5120 MiB per kernel, pids.max = 256 (in the subtree "
                           f"delegated to uid 1000: {tmp_path / 'run-r1.scope'})"), line


def test_the_kernel_is_started_by_the_path_the_sandbox_binds(tmp_path):
    """Reached through a symlinked folder, is the kernel's interpreter named by its resolved folder (the one bound
    into the sandbox), so that it exists there?"""
    link = tmp_path / "a clône's venv"
    link.symlink_to(sys.prefix)
    out = subprocess.run([str(link / "bin" / os.path.basename(sys.executable)), "-c",
                          "from attnkit import sandbox; print(sandbox.python_exe())"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    exe = out.stdout.strip()
    assert exe == os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))
    assert any(exe.startswith(r + "/") for r in sandbox._python_roots())


# ---------------------------------------------------------------------------- an ordinary user, Debian's python3
def _table(stdout: str) -> str:
    """The demo's grade table: its header line and one row per sample (the legend below it left out)."""
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("student "))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("(* ="))
    return "\n".join(lines[start:end])


def readme_table() -> str:
    """The grade table the README shows for ./kit demo (tests/test_export.py proves the root run gives it)."""
    return _table((ROOT / "README.md").read_text())


def _parts_said(course: Path, student: str) -> str:
    """What the student's autograded notebooks of the demo say: every test cell that lost its points (grade id and
    message) and every cost measurement that passed (its figures), so that a row unlike the README's names the part
    and the numbers."""
    import nbformat

    from attnkit.reports import failures

    said = []
    for path in sorted((course / "demo" / "autograded" / student / "hw9").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        said += [f"{path.stem} {gid} LOST: {msg}" for gid, msg in failures(nb).items()]
        said += [f"{path.stem}: {line}" for cell in nb.cells for out in cell.get("outputs", [])
                 if out.get("output_type") == "stream" for line in out.get("text", "").splitlines()
                 if line.startswith("ok ") and ("grows like" in line or "the memory one call takes" in line)]
    return "\n".join(said)


def _sh(*argv, **kw):
    """(in "/" unless told: the early job's commands must not inherit a test's working folder, which may go)"""
    return subprocess.run(list(argv), capture_output=True, text=True, **{"cwd": "/", **kw})


def _ordinary_user():
    """An ordinary user made for the test (useradd, home under /home), removed with its home when the session
    ends; None where that cannot be done here."""
    import pwd

    if os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("useradd"):
        return None
    name = f"attnkit-ci{os.getpid()}"
    made = _sh("useradd", "--create-home", "--shell", "/bin/bash", name, timeout=60)
    assert made.returncode == 0, made.stderr
    early.on_finish(lambda: _sh("userdel", "--remove", name, timeout=120))
    return pwd.getpwnam(name)


def _debian_python() -> str:
    """/usr/bin/python3 able to make a venv: python3 and python3-venv from Debian's packages where missing
    (RuntimeError, saying why, where they cannot be installed)."""
    py = "/usr/bin/python3"
    ok = os.path.exists(py) and _sh(py, "-c", "import ensurepip, venv", timeout=60).returncode == 0 \
        and _sh("dpkg", "-s", "python3-venv", timeout=60).returncode == 0
    if not ok:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = "-o DPkg::Lock::Timeout=600"  # another apt-get on the machine (the Slurm tests'): wait for it
        got = _sh("bash", "-c", f"apt-get {lock} update -qq && apt-get {lock} install -y -qq python3 python3-venv",
                  env=env, timeout=900)
        if got.returncode != 0:
            raise RuntimeError(f"could not install Debian's python3-venv: {got.stderr.strip()[-300:]}")
    return py


# as the ordinary user, in its clone: the cost meter of a course kernel it starts (which keeps that user's uid)
METER_PROBE = """
import asyncio, json, os, tempfile, types
from attnkit import sandbox
from attnkit.grader import channel

async def main():
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o755)
    km = sandbox.CourseKernelManager()
    await km.start_kernel(cwd=folder)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)  # (before it, the provisioner's process may still be a shell in front)
        meter = channel.kernel_meter(types.SimpleNamespace(km=km))
        pids = sorted(meter.pids())
        print(json.dumps({"meter": type(meter).__name__, "uid": getattr(meter, "uid", None), "pids": pids,
                          "names": [open(f"/proc/{p}/comm").read().strip() for p in pids], "me": os.getpid(),
                          "launchers": sorted(meter.launchers), "sealed": meter.sealed()}))
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)

asyncio.run(main())
"""


@early.job
def ordinary_user_demo():
    """The README's first command as an ordinary user (started with the session: minutes of pip, then the demo).
    Returns (user, its course path, the Python it should choose, its version, the demo's process, seconds, what the
    solved sample's notebooks said, the regrade's process, what they said then: _parts_said, METER_PROBE's process),
    or a
    string saying why it cannot run here."""
    import time

    user = _ordinary_user()
    if user is None:
        return "needs root, apt-get and useradd (CI) to make an ordinary user and install Debian's python3-venv"
    try:
        py = _debian_python()
    except RuntimeError as exc:
        return str(exc)
    version = _sh(py, "-c", "import platform; print(platform.python_version())", timeout=60).stdout.strip()
    home = Path(user.pw_dir)
    # the clone: tracked and new files as they are here, at a real path reached only through the symlink
    real = home / "données" / "attnkit"
    real.mkdir(parents=True)
    files = _sh("git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                timeout=60).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (real / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, real / rel)
    (home / "My Courses").symlink_to(home / "données")
    course = home / "My Courses" / "attnkit"
    # the same pinned wheels, from this venv's pip cache into a folder the user may read: no network, no rebuilds
    wheels = Path(early.scratch("wheels"))
    got = _sh(sys.executable, "-m", "pip", "wheel", "-q", "-r", str(ROOT / "requirements.txt"), "-w",
              str(wheels), timeout=900)
    assert got.returncode == 0, got.stderr[-2000:]
    os.chmod(wheels, 0o755)
    _sh("chown", "-R", f"{user.pw_name}:{user.pw_name}", str(home / "données"), timeout=120)
    # (PIP_COMPILE=0: byte-compiling every installed file (torch's thousands) costs set-up time and tests nothing)
    env = ["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PIP_NO_INDEX=1",
           f"PIP_FIND_LINKS={wheels}", "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_COMPILE=0"]
    t0 = time.perf_counter()
    theirs = _sh("runuser", "-u", user.pw_name, "--", *env, "bash", "-c", 'cd "$1" && ./kit demo --workers 2',
                 "kit-demo", str(course), timeout=1800)
    took = time.perf_counter() - t0
    said = _parts_said(course, "sample-solution")  # before the regrade below writes its own
    # ./kit autograde (the demo grades in its own process): its grading process is a fork of the command
    again = _sh("runuser", "-u", user.pw_name, "--", *env, "bash", "-c",
                'cd "$1" && ./kit --root demo autograde hw9 --student sample-solution --workers 1 --quiet',
                "kit-autograde", str(course), timeout=900) if theirs.returncode == 0 else None
    probe = _sh("runuser", "-u", user.pw_name, "--", *env, "bash", "-c", 'cd "$1" && exec .venv/bin/python -c "$2"',
                "kit-meter", str(course), METER_PROBE, timeout=300) if theirs.returncode == 0 else None
    return user, course, py, version, theirs, took, said, again, _parts_said(course, "sample-solution"), probe


@pytest.mark.slow
@pytest.mark.early("ordinary_user_demo")
def test_an_ordinary_user_runs_the_demo_with_debians_python_through_a_symlink():
    """As an ordinary user, with Debian's python3 and a clone reached through a symlink whose path has a space
    (its real path a non-ASCII name), does the README's first command (./kit demo) choose that Python, set up,
    name the sandbox in force, and give the very table of the root run (the README's)?"""
    found = early.result("ordinary_user_demo")
    if isinstance(found, str):
        pytest.skip(found)
    user, course, py, version, theirs, took, said, again, said_again, probe = found
    print(f"\n--- as {user.pw_name}, in {course} ({took:.0f} s with set-up)\n{theirs.stderr[-3000:]}\n"
          f"{theirs.stdout[-1500:]}")
    assert theirs.returncode == 0, theirs.stdout[-3000:] + theirs.stderr[-3000:]
    assert f"kit: Python {version} ({py})" in theirs.stderr
    # the sandbox in force for that user here: what bwrap and the cgroup tree allow
    userns = _sh("runuser", "-u", user.pw_name, "--", sandbox.BWRAP, "--unshare-user", "--ro-bind", "/", "/", "true",
                 timeout=60).returncode == 0
    assert ("sandbox: bubblewrap in an unprivileged user namespace" if userns else "sandbox: NONE") in theirs.stderr
    v1 = not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    memory = next((l for l in theirs.stderr.splitlines() if l.startswith("memory: ")), "")
    assert memory.startswith("memory: NO cgroup limit") and (
        "this host has cgroup v1" if v1 else f"in no subtree delegated to uid {user.pw_uid}") in memory, memory
    # the table of the root run: the README's, which tests/test_export.py checks against a root demo
    assert _table(theirs.stdout) == readme_table(), f"sample-solution's notebooks said:\n{said}"
    # the same submission regraded by ./kit autograde as that user: the same row
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    row = next(l for l in readme_table().splitlines() if l.startswith("sample-solution "))
    assert [l.split() for l in _table(again.stdout).splitlines()[1:]] == [row.split()], \
        f"{again.stdout[-2000:]}\nits notebooks said:\n{said_again}"
    # that user's kernel keeps the user's uid: its cost meter reads the kernel's own processes (bubblewrap's two, then
    # the kernel), not every process of the user (the grader, the batch, the other workers, the user's shell)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-3000:]
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["meter"] == "KernelMeter" and got["uid"] is None, got
    assert got["me"] not in got["pids"] and len(got["pids"]) == 3, got
    bwraps = sorted(p for p, name in zip(got["pids"], got["names"]) if name == "bwrap")
    assert len(bwraps) == 2 and got["launchers"] == bwraps, got
    assert got["sealed"], got  # the kernel, under the filter that refuses new processes, is in that tree


def test_a_new_gradebook_records_the_migration_head_alembic_names(tmp_path, monkeypatch):
    """Does a gradebook the kit creates record the revision `alembic heads` prints (read from nbgrader's migration
    files, without starting alembic)?"""
    import sqlite3
    import types

    import nbgrader.api
    from nbgrader.dbutil import _temp_alembic_ini

    from attnkit.course import Course

    with _temp_alembic_ini(f"sqlite:///{tmp_path / 'unused.db'}") as ini:
        said = subprocess.run([str(Path(sys.executable).with_name("alembic")), "-c", ini, "heads"],
                              capture_output=True, text=True, check=True).stdout.split()[0]

    def no_process(*args, **kwargs):
        raise AssertionError(f"started {args}")

    monkeypatch.setattr(nbgrader.api, "sp", types.SimpleNamespace(check_output=no_process))
    (tmp_path / "course").mkdir()
    shutil.copy2(Path(__file__).resolve().parents[1] / "course_config.py", tmp_path / "course" / "course_config.py")
    with Course(tmp_path / "course").gradebook():
        pass
    with sqlite3.connect(tmp_path / "course" / "gradebook.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(said,)]


def test_a_process_keeps_one_engine_per_gradebook_file_and_thread(tmp_path):
    """Do the gradebooks one process opens on one file share one SQLAlchemy engine (its compiled queries), while
    another thread, a forked child, another file and an in-memory gradebook each get their own, and does a closed
    gradebook hold no connection?"""
    import threading

    from nbgrader.api import Gradebook

    from attnkit.course import Course

    (tmp_path / "course").mkdir()
    shutil.copy2(Path(__file__).resolve().parents[1] / "course_config.py", tmp_path / "course" / "course_config.py")
    course = Course(tmp_path / "course")

    def engine(url=None):
        with (course.gradebook() if url is None else Gradebook(url)) as gb:
            gb.add_student(f"s{len(gb.students)}")
            gb.db.commit()
            return gb.engine

    first = engine()
    assert engine() is first, "a second gradebook on the same file made a new engine"
    assert first.pool.checkedout() == 0 and first.pool.checkedin() == 0, "a closed gradebook kept a connection"
    other = []
    thread = threading.Thread(target=lambda: other.append(engine()))
    thread.start()
    thread.join()
    assert other[0] is not first
    assert engine(f"sqlite:///{tmp_path / 'other.db'}") is not first
    memory = engine("sqlite:///:memory:")
    assert engine("sqlite:///:memory:") is not memory
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's engine is its own: an engine's pool must never cross a fork
        os.close(read)
        os.write(write, b"same" if engine() is first else b"own")
        os._exit(0)
    os.close(write)
    said = os.read(read, 10)
    os.close(read)
    os.waitpid(pid, 0)
    assert said == b"own"
    with course.gradebook() as gb:
        assert len(gb.students) == 4  # every write landed: the two here, the thread's and the child's
