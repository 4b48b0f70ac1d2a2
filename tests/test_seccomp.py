"""The syscall filter on every process of a student's kernel (attnkit/sandbox/seccomp.py): the deny list as
compiled, the sandbox line that names it, and, in the real sandbox, every denied call refused from a
child of a graded kernel while honest work still runs."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from attnkit import sandbox
from attnkit.sandbox import seccomp
from banks.attacks.hostile import HONEST, SYSCALL_ARGS, SYSCALLS, right
from banks.attacks.tamper import q3
from harness import ASSIGNMENT, assert_fixture, kit
from test_sandbox import MODE, SANDBOXED, answer_output, course_with, graded_from

FAST = {"ATTNKIT_CELL_TIMEOUT": "60"}
EXPECTED = {call: err for call, err, _ in seccomp.DENIED}  # what each denied call must fail with


def test_every_denied_call_has_one_errno_one_reason_and_a_probe():
    """Is the deny list well formed (each call once, a real errno, a reason) and does the sandbox probe
    try every call on it (so a call added to the list is tested too)?"""
    import errno

    calls = [c for c, _, _ in seccomp.DENIED]
    assert len(calls) == len(set(calls))
    assert all(hasattr(errno, err) and reason for _, err, reason in seccomp.DENIED)
    assert set(SYSCALL_ARGS) == set(calls)
    assert {c for c, err, _ in seccomp.DENIED if err != "EPERM"} == {"clone3"}  # glibc's fallback to clone


def test_the_filter_compiles_and_the_sandbox_line_names_it(monkeypatch):
    """Does the list compile to a BPF program (whole 8-byte instructions), and does the line printed at the
    start of grading say 'on, N calls denied', or 'off' and why when it is turned off?"""
    program = seccomp.compile_filter()
    assert len(program) > 8 * len(seccomp.DENIED) and len(program) % 8 == 0
    assert seccomp.describe() == f"syscall filter: on, {len(seccomp.DENIED)} calls denied"
    assert "syscall filter: on" in sandbox.describe("bwrap") and "syscall filter: on" in sandbox.describe("setpriv")
    assert "syscall filter: off: unsandboxed" in sandbox.describe("none")
    monkeypatch.setenv(seccomp.ENV_OFF, "1")
    assert seccomp.program_path() is None
    assert f"syscall filter: off: turned off by {seccomp.ENV_OFF}=1" in sandbox.describe("bwrap")
    argv = sandbox.bwrap_argv(["/bin/true"], uid=sandbox.UID_BASE, workfiles={}, run_dir=None, env={})
    assert "--seccomp" not in argv


def test_bwrap_reads_the_program_on_an_fd_the_caller_does_not_pass_on():
    """Is the program handed to bwrap on an fd opened for it alone (not one a zygote's socket uses)?"""
    argv = sandbox.bwrap_argv(["/bin/true"], uid=sandbox.UID_BASE, workfiles={}, run_dir=None, env={},
                              keep_fds=(3, 4))
    fd = argv[argv.index("--seccomp") + 1]
    prefix = sandbox.killed_first([])  # the out-of-memory killer's first choice, then the filter's shell
    assert argv[:len(prefix)] == prefix
    argv = argv[len(prefix):]
    assert fd == "5" and argv[:3] == ["/bin/sh", "-c", 'exec "$@" 5<"$0"'] and argv[3] == seccomp.program_path()


def test_unprivileged_bwrap_refuses_nested_user_namespaces_even_without_the_filter(monkeypatch):
    """Where bwrap runs without root (its own user namespace), is --disable-userns passed, so that a
    nested user namespace fails even with the filter off?"""
    if not sandbox.bwrap_has("--disable-userns") or sandbox.probe("bwrap"):
        pytest.skip("this bwrap has no --disable-userns, or does not run here")
    monkeypatch.setenv(seccomp.ENV_OFF, "1")
    monkeypatch.setattr(sandbox.bwrap.os, "geteuid", lambda: 1000)  # the argv of the unprivileged path
    argv = sandbox.bwrap_argv(["/bin/sh", "-c", "unshare --user true; echo rc=$?"], uid=0, workfiles={},
                              run_dir=None, env={})
    assert "--disable-userns" in argv and "--seccomp" not in argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "rc=1", (out.stdout, out.stderr)


CHILD_PROBE = """
import ctypes, errno, os, pyseccomp as sc
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
r, w = os.pipe()
if os.fork() == 0:  # a child of the kernel (forked: the fallback's uid may not exec the venv's Python here)
    with open("/proc/self/status") as f:
        lines = ["Seccomp " + next(l.split()[1] for l in f if l.startswith("Seccomp:"))]
    for name, args in (("unshare", (0x10000000,)), ("io_uring_setup", (1, ctypes.addressof(buf))), ("keyctl", (0, -3, 0))):
        ret = libc.syscall(sc.resolve_syscall(sc.Arch.NATIVE, name), *map(ctypes.c_long, args))
        lines.append(f"{name} {ret} {errno.errorcode.get(ctypes.get_errno()) if ret < 0 else 'ok'}")
    os.write(w, "\\n".join(lines).encode())
    os._exit(0)
os.close(w)
print(os.read(r, 4096).decode())
os.wait()
"""


def _cold_kernel_folder(tmp_path, mode):
    """A working folder a cold kernel of ``mode``'s uid may read; skips where ``mode`` or the filter cannot run."""
    why = sandbox.probe(mode)
    if why:
        pytest.skip(f"{mode} cannot run here: {why}")
    if seccomp.unavailable():
        pytest.skip(seccomp.unavailable())
    workdir = tmp_path / "work"
    workdir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(workdir, 0o755)
    return workdir


@pytest.mark.parametrize("mode", ["bwrap", "setpriv"])
def test_a_cold_kernel_s_children_run_under_the_filter(tmp_path, mode):
    """A kernel started cold (no warm-start interpreter) in bwrap and in the setpriv fallback: does its
    child process run under the filter, and get EPERM for a user namespace, io_uring and the keyring?"""
    workdir = _cold_kernel_folder(tmp_path, mode)
    out, _ = asyncio.run(sandbox.run_source(str(workdir), CHILD_PROBE, timeout=120, sandbox=mode))
    assert "Seccomp 2" in out, out
    for name in ("unshare", "io_uring_setup", "keyctl"):
        assert f"{name} -1 EPERM" in out, out


@pytest.fixture(scope="module")
def graded():
    if not SANDBOXED:
        pytest.skip(f"no grading sandbox here ({MODE})")
    fixtures = [right("seccomp-probe", SYSCALLS, "every denied call from a child of the kernel"),
                right("seccomp-honest", HONEST, "torch threads, numpy, matplotlib, a forked process, subprocess"),
                q3("seccomp-plain-right", why="graded beside them")]
    course = course_with(fixtures)
    out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "1", env=FAST, timeout=900)
    yield course, out, fixtures
    shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.slow
def test_every_denied_call_fails_with_its_errno_and_the_grade_survives(graded):
    """Through ./kit autograde in the real sandbox: does the sandbox line name the filter, does a child of
    the kernel get its errno for every denied call (ENOSYS for clone3), does personality's standard value
    still work, and does every submission keep its full marks?"""
    course, out, fixtures = graded
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sandbox.describe(MODE) in out.stderr and seccomp.describe() in out.stderr
    text = answer_output(course, "seccomp-probe")
    assert "Seccomp: 2" in text and "syscall probe done, exit 0" in text, text[-3000:]
    got = {line.split()[1]: line.split()[2:] for line in text.splitlines() if line.startswith("SYSCALL ")}
    for call, err in EXPECTED.items():
        assert call in got, f"{call} was not tried:\n{text[-3000:]}"
        assert got[call] == ["-1", err] or got[call] == ["absent"], (call, got[call])
    assert got["personality-standard"] == ["0"], got
    results = graded_from(course)
    for fx in fixtures:
        assert_fixture(results, fx)


@pytest.mark.slow
def test_honest_work_runs_under_the_filter(graded):
    """Do torch on four threads, numpy, matplotlib, a multiprocessing process forked and subprocess run in the
    graded kernel?"""
    course, out, _ = graded
    text = answer_output(course, "seccomp-honest")
    for line in ("torch threads 4 True", "numpy 3.0", "matplotlib saved", "fork process 42", "subprocess 42",
                 "Seccomp: 2", "honest work done"):
        assert line in text, f"{line!r} missing:\n{text[-3000:]}"


SEALED_PROBE = """
import os, subprocess, threading, torch
print("filters", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp_filters:")))
for name, start in (("fork", lambda: os.waitpid(os.fork() or os._exit(0), 0)),
                    ("subprocess", lambda: subprocess.run(["/bin/true"]))):
    try:
        start()
        print(name, "started")
    except OSError as exc:
        print(name, type(exc).__name__)
t = threading.Thread(target=lambda: print("thread ran"))
t.start()
t.join()
torch.set_num_threads(2)
print("torch", float(torch.ones(256, 256).matmul(torch.ones(256, 256)).sum()))
"""


@pytest.mark.parametrize("mode", ["bwrap", "setpriv"])
def test_where_no_cgroup_counts_its_processes_a_kernel_starts_threads_but_no_process(tmp_path, monkeypatch, mode):
    """Where the cost meters read /proc (no cgroup of the kernel's own: ATTNKIT_COST_METER=proc stands in for such a
    host), is a new process refused with EPERM (fork, subprocess) while threads and torch's own threads run, under
    the filter count the grader checks from outside; and where a cgroup counts them, may the kernel still fork?"""
    workdir = _cold_kernel_folder(tmp_path, mode)
    monkeypatch.setenv("ATTNKIT_COST_METER", "proc")
    out, _ = asyncio.run(sandbox.run_source(str(workdir), SEALED_PROBE, timeout=120, sandbox=mode))
    want = sandbox.CourseKernelManager().sealed_filters()
    for line in (f"filters {want}", "fork PermissionError", "subprocess PermissionError", "thread ran", "torch 16777216.0"):
        assert line in out, f"{line!r} missing: {out}"
    assert "cost meters: /proc only" in sandbox.describe_meters() and "no process" in sandbox.describe_meters()
    if sandbox.meter_cgroups():
        monkeypatch.setenv("ATTNKIT_COST_METER", "auto")
        out, _ = asyncio.run(sandbox.run_source(str(workdir), SEALED_PROBE, timeout=120, sandbox=mode))
        assert f"filters {want - 1}" in out and "fork started" in out and "subprocess started" in out, out
