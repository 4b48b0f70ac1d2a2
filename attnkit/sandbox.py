"""The grading sandbox, host side: where, as whom and with what a notebook's kernel runs.

Modes (``detect()`` picks one at start; ``ATTNKIT_SANDBOX=bwrap|setpriv|none`` forces one):

* ``bwrap`` - each kernel runs under bubblewrap in its own PID, mount, network, IPC and UTS
  namespaces, as an unprivileged uid (one per worker slot, so RLIMIT_NPROC budgets are not
  shared), with read-only binds of the Python environment and of the kernel-side kit modules,
  a size-limited tmpfs as its working folder (the grader's helper files bound read-only into
  it), its IPC sockets in a folder bound in, and nothing else: no course, no gradebook, no
  other submission, no network. The PID namespace ends with the kernel, and with it every
  process the notebook started.
* ``setpriv`` - fallback where bwrap cannot run (Docker without user namespaces), as root:
  the kernel runs as the slot's unprivileged uid (setpriv --no-new-privs); the course's
  secret folders are made unreadable to other uids; after the kernel stops, every process
  of that uid is killed. No network or process isolation.
* ``none`` - the kernel runs as the grader (students' own machines: ./kit validate).

The kernel side (rlimits, the zygote) is attnkit/kernel/__main__.py; the agent hidden tests reach it through is
attnkit/kernel/agent.py.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from queue import Empty

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import run_sync
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Dict, DottedObjectName, Integer, List, Unicode, default

from attnkit import markup, seccomp
from attnkit.notebooks import is_test_cell

ENV_MODE = "ATTNKIT_SANDBOX"
ENV_WARM = "ATTNKIT_WARM_START"          # 1: fork kernels from a per-student zygote; else each starts cold
MODES = ("bwrap", "setpriv", "none")
BWRAP, SETPRIV = shutil.which("bwrap") or "/usr/bin/bwrap", shutil.which("setpriv") or "/usr/bin/setpriv"
KIT_DIR = os.path.dirname(os.path.abspath(__file__))
# Only these kit modules are visible to a kernel: the package will hold fixture banks with right answers.
# The kit's files a kernel can see: its start-up, the agent hidden tests reach it through, their data format.
# Nothing of the grader (hidden tests, references, attnkit/grader/) is ever bound in.
KERNEL_MODULES = ("__init__.py", "kernel/__init__.py", "kernel/__main__.py", "kernel/agent.py", "kernel/wire.py",
                  "kernel/seal.py")
SANDBOX_KIT = "/opt/attnkit"          # the kernel's PYTHONPATH entry holding attnkit/<KERNEL_MODULES>
SANDBOX_HOME = "/home/student"        # the kernel's working folder (tmpfs)
UID_BASE = 2_000_000                  # far above real users and the usual subuid ranges
UID_SLOTS = 256
# what the notebooks and their tests import (matplotlib alone is 0.5 s, and its font list more)
PRELOAD = ("numpy", "matplotlib.pyplot", "torch.testing", "torch.utils.flop_counter")
TIMEOUT_NAMES = {"CellTimeoutError", "KeyboardInterrupt"}
# The largest message the grader takes from a kernel: an agent's reply (grader/remote.py MAX_REPLY, 64 MiB)
# and its envelope. Outputs are capped far below this as they arrive (CourseExecute.output).
MAX_MESSAGE = 66 << 20
RCV_QUEUE = 2  # messages waiting in the grader per socket: with MAX_MESSAGE, what a flood can hold here
KERNEL_DIED = "KernelDied"


class SandboxUnavailable(RuntimeError):
    pass


# ---------------------------------------------------------------------------- detection
def _run(argv, timeout=20) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, f"{type(exc).__name__}: {exc}"
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


@lru_cache(maxsize=None)
def probe(mode: str) -> str | None:
    """Actually try ``mode`` once (bwrap ... true). None when it works, else why not."""
    if mode == "none":
        return None
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if mode == "setpriv":
        if os.geteuid() != 0:
            return "needs root (to switch the kernel to an unprivileged uid)"
        rc, err = _run([SETPRIV, *_setpriv_args(UID_BASE), "--", "/bin/true"])
        if rc != 0:
            return f"setpriv failed: {err or rc}"
        if seccomp.program_path():
            rc, err = _run(seccomp.launcher([SETPRIV, *_setpriv_args(UID_BASE), "--", "/bin/true"]))
            if rc != 0:  # graded without it, and the sandbox line says so
                seccomp.disable(f"its launcher failed: {err or rc}")
        # the kernel runs this Python as that uid, straight from the host's folders: each must be
        # readable by it (a venv under a 0700 folder such as mktemp -d's is not)
        rc, err = _run([SETPRIV, *_setpriv_args(UID_BASE), "--", python_exe(), "-c", "import ipykernel"], timeout=60)
        return None if rc == 0 else (f"the Python environment ({sys.prefix}) cannot be run by an unprivileged uid: "
                                     f"{err or rc}")
    if not os.path.exists(BWRAP):
        return "bubblewrap (bwrap) is not installed"
    argv = bwrap_argv(["/bin/true"], uid=UID_BASE, workfiles={}, run_dir=None, env={})
    rc, err = _run(argv)
    if rc != 0 and seccomp.program_path():  # is it the filter? Then graded without it, and the line says so
        seccomp.disable(f"bwrap refused it: {err or rc}")
        if _run(bwrap_argv(["/bin/true"], uid=UID_BASE, workfiles={}, run_dir=None, env={}))[0] == 0:
            return None
        seccomp.disable("")
    return None if rc == 0 else f"bwrap failed: {err or rc}"


def detect() -> str:
    """The sandbox mode this grader uses: forced by ATTNKIT_SANDBOX, else the best that works."""
    forced = os.environ.get(ENV_MODE, "").strip()
    if forced:
        if forced not in MODES:
            raise SandboxUnavailable(f"{ENV_MODE}={forced!r}: expected one of {', '.join(MODES)}")
        why = probe(forced)
        if why:
            raise SandboxUnavailable(f"{ENV_MODE}={forced} but it does not work here: {why}")
        return forced
    for mode in ("bwrap", "setpriv"):
        if probe(mode) is None:
            return mode
    return "none"


def describe(mode: str) -> str:
    """One line for the instructor's terminal."""
    why = (f"forced by {ENV_MODE}={mode}" if os.environ.get(ENV_MODE, "").strip() == mode
           else f"bwrap: {probe('bwrap')}" + ("" if mode == "setpriv" else f"; setpriv: {probe('setpriv')}"))
    if mode == "bwrap":
        if os.geteuid() != 0:  # no uid of its own: the kernel is the grader's uid inside a user namespace
            return ("sandbox: bubblewrap in an unprivileged user namespace (own PID/mount/network namespaces, "
                    f"no view of the course; the kernel runs as the grader's own uid, not a uid of its own; "
                    f"{seccomp.describe()})")
        return (f"sandbox: bubblewrap (own PID/mount/network namespaces, unprivileged uid, no view of the course; "
                f"{seccomp.describe()})")
    if mode == "setpriv":
        return (f"sandbox: FALLBACK setpriv (unprivileged uid, course folders unreadable to it; NO network or "
                f"process isolation; {seccomp.describe()}; {why})")
    return f"sandbox: NONE - submissions run with the grader's rights ({seccomp.describe(False, 'unsandboxed')}; {why})"


# ---------------------------------------------------------------------------- memory cgroups, small tmpfs
# RLIMIT_DATA does not count memfd_create or other shared memory: a cgroup counts everything a
# kernel's processes hold (tmpfs pages they write included). One cgroup per kernel, removed with it.
CGROUP_V1 = "/sys/fs/cgroup/memory"
CGROUP_V2 = "/sys/fs/cgroup"
CGROUP_V1_CPU = "/sys/fs/cgroup/cpuacct"
RUN_DIR_MB = 16  # the tmpfs holding a kernel's connection file, IPC sockets and log (host disk otherwise)
_cgroups_made = 0


def _cgroup_v2_parent() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            own = next(l.split("::", 1)[1].strip() for l in f if l.startswith("0::"))
    except (OSError, StopIteration):
        return None
    for parent in (os.path.join(CGROUP_V2, own.lstrip("/")), CGROUP_V2):
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                if "memory" in f.read().split() and os.access(parent, os.W_OK):
                    return parent
        except OSError:
            continue
    return None


def _own_cgroup_v2() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            return next(l.split("::", 1)[1].strip() for l in f if l.startswith("0::"))
    except (OSError, StopIteration):
        return None


def _owned(folder: str, uid: int) -> bool:
    """Was ``folder`` delegated to ``uid`` (systemd chowns the folder and the files that let it manage its subtree)?"""
    try:
        return all(os.stat(os.path.join(folder, n)).st_uid == uid for n in ("", "cgroup.procs", "cgroup.subtree_control"))
    except OSError:
        return False


def delegated_subtree(root: str = CGROUP_V2, own: str | None = None, uid: int | None = None) -> tuple[str | None, str]:
    """(top, "") of the cgroup v2 subtree delegated to ``uid`` that holds this process (``own``: its cgroup), where
    systemd gives an ordinary user one (user@UID.service; ``systemd-run --user --scope -p Delegate=yes``) with
    the memory controller; else (None, why not)."""
    uid = os.geteuid() if uid is None else uid
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return None, "this host has cgroup v1, and only cgroup v2 delegates a subtree to an ordinary user"
    own = _own_cgroup_v2() if own is None else own
    if own is None:
        return None, "this process is in no cgroup v2"
    parts, top = [p for p in own.split("/") if p], None
    for i in range(len(parts), 0, -1):  # up from its own cgroup while the user owns the folder: the subtree's top
        if not _owned(os.path.join(root, *parts[:i]), uid):
            break
        top = os.path.join(root, *parts[:i])
    if top is None:
        return None, (f"its cgroup ({own}) is in no subtree delegated to uid {uid} (run the kit under "
                      f"systemd-run --user --scope -p Delegate=yes)")
    try:
        with open(os.path.join(top, "cgroup.controllers")) as f:
            controllers = f.read().split()
    except OSError as exc:
        return None, f"the delegated subtree {top}: {exc.strerror or exc}"
    if "memory" not in controllers:
        return None, (f"the subtree delegated to uid {uid} ({top}) has no memory controller "
                      f"(cgroup.controllers: {' '.join(controllers) or 'none'})")
    return top, ""


def delegated_parent(top: str) -> str:
    """The folder in a delegated subtree under which kernel cgroups go, with memory (and pids) enabled for its
    children. cgroup v2 gives controllers only to children of a cgroup without processes of its own, so the
    processes in ``top`` (the kit's own scope) first move to a leaf beside it, as container runtimes do."""
    def enable(folder):
        with open(os.path.join(folder, "cgroup.controllers")) as f:
            have = f.read().split()
        with open(os.path.join(folder, "cgroup.subtree_control")) as f:
            on = f.read().split()
        want = [f"+{c}" for c in ("memory", "pids") if c in have and c not in on]
        if want:
            with open(os.path.join(folder, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(want))

    with open(os.path.join(top, "cgroup.procs")) as f:
        pids = f.read().split()
    if pids:
        leaf = os.path.join(top, "attnkit-grader")
        os.makedirs(leaf, exist_ok=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError), open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write(pid)
    enable(top)
    parent = os.path.join(top, "attnkit")
    os.makedirs(parent, exist_ok=True)
    enable(parent)
    return parent


@lru_cache(maxsize=None)
def memory_cgroups() -> tuple[str | None, str]:
    """(kind, parent folder) where per-kernel memory cgroups can be made: kind "v2" (memory.max) or
    "v1" (memory.limit_in_bytes); (None, why not) where the host offers neither writable. An ordinary
    user gets them only in a cgroup v2 subtree delegated to them."""
    if not sys.platform.startswith("linux"):
        return None, "needs Linux"
    if os.geteuid() != 0:
        top, why = delegated_subtree()
        if top is None:
            return None, f"not root, and {why}"
        try:
            parent = delegated_parent(top)
            KernelCgroup(64, "v2", parent).remove()
            _sweep(parent)
            return "v2", parent
        except OSError as exc:
            return None, f"not root, and the subtree delegated to uid {os.geteuid()} ({top}): {exc.strerror or exc}"
    tried = []
    parent = _cgroup_v2_parent() if os.path.exists(os.path.join(CGROUP_V2, "cgroup.controllers")) else None
    if parent:
        tried.append(("v2", parent))
    if os.path.exists(os.path.join(CGROUP_V1, "memory.limit_in_bytes")):
        tried.append(("v1", os.path.join(CGROUP_V1, "attnkit")))
    why = "no writable cgroup memory controller (neither v2 memory.max nor v1 memory.limit_in_bytes)"
    for kind, parent in tried:
        try:
            os.makedirs(parent, exist_ok=True)
            probe_cg = KernelCgroup(64, kind, parent)
            probe_cg.remove()
            _sweep(parent)
            return kind, parent
        except OSError as exc:
            why = f"cgroup {kind} at {parent}: {exc.strerror or exc}"
    return None, why


def sweep() -> None:
    """What grading processes that were killed (a time limit, a crash) left: their kernels' cgroups and
    the tmpfs mounts of their run folders (named after the process that made them)."""
    kind, parent = memory_cgroups()
    if kind is not None:
        _sweep(parent)
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in points:
            name = os.path.basename(point)
            pid = name.split("-")[2] if name.startswith(("attnkit-run-", "attnkit-runs-")) else ""
            if os.path.dirname(point) == tempfile.gettempdir() and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                remove_dir(point)


def _sweep(parent: str) -> None:
    """Remove the kernel cgroups of grading processes that are gone (killed before cleaning up)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            pid = name[1:].split("-")[0] if name.startswith("k") else ""
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                KernelCgroup.adopt(os.path.join(parent, name)).remove()


class KernelCgroup:
    """One kernel's memory cgroup: ``limit_mb`` for everything its processes hold."""

    def __init__(self, limit_mb: int, kind: str, parent: str, pids: int = 0):
        global _cgroups_made
        _cgroups_made += 1
        self.kind = kind
        self.path = os.path.join(parent, f"k{os.getpid()}-{_cgroups_made}-{time.monotonic_ns() % 10**9}")
        os.mkdir(self.path)
        self.cpu_path = self._cpu_sibling(self.path)
        if self.cpu_path is not None:
            try:  # v1: CPU time in a cpuacct cgroup of the same name (the meters read it; grader/meter.py)
                os.makedirs(self.cpu_path)
            except OSError:
                self.cpu_path = None
        try:
            limit = str(limit_mb * 1024 * 1024)
            if kind == "v2":
                self._write("memory.max", limit)
                self._write("memory.swap.max", "0", optional=True)
                if pids:  # processes and threads of the whole kernel, whatever its uid (RLIMIT_NPROC is per uid)
                    self._write("pids.max", str(pids), optional=True)
            else:
                self._write("memory.limit_in_bytes", limit)
                self._write("memory.memsw.limit_in_bytes", limit, optional=True)  # no swapping past it
        except OSError:
            self.remove()
            raise

    @classmethod
    def adopt(cls, path: str) -> "KernelCgroup":
        self = cls.__new__(cls)
        self.path = path
        self.kind = "v1" if path.startswith(CGROUP_V1 + "/") else "v2"
        self.cpu_path = cls._cpu_sibling(path)
        return self

    @staticmethod
    def _cpu_sibling(path: str) -> str | None:
        """v1: the cpuacct cgroup beside the memory one (v2: the same cgroup has cpu.stat)."""
        if not path.startswith(CGROUP_V1 + "/") or not os.path.exists(os.path.join(CGROUP_V1_CPU, "cpuacct.usage")):
            return None
        return os.path.join(CGROUP_V1_CPU, os.path.relpath(path, CGROUP_V1))

    def _write(self, name: str, value: str, optional: bool = False) -> None:
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(value)
        except OSError:
            if not optional:
                raise

    @property
    def procs(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))
        if self.cpu_path is not None:
            with open(os.path.join(self.cpu_path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this cgroup (it joins before exec, so every child is counted)."""
        if self.cpu_path is not None:
            return ["/bin/sh", "-c", 'echo $$ > "$0" && echo $$ > "$1" && shift && exec "$@"', self.procs,
                    os.path.join(self.cpu_path, "cgroup.procs"), *argv]
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs, *argv]

    def oom_killed(self) -> bool:
        """Did the limit kill a process of this cgroup?"""
        try:
            if self.kind == "v2":
                with open(os.path.join(self.path, "memory.events")) as f:
                    return any(l.startswith("oom_kill ") and l.split()[1] != "0" for l in f)
            with open(os.path.join(self.path, "memory.oom_control")) as f:
                return any(l.startswith("oom_kill ") and l.split()[1] != "0" for l in f)
        except (OSError, IndexError):
            return False

    def remove(self) -> None:
        """Kill what is left in it, then remove it (retried while its processes exit)."""
        self._remove()
        if getattr(self, "cpu_path", None) is not None:
            for _ in range(100):
                try:
                    os.rmdir(self.cpu_path)  # its processes were killed above (they were in both)
                    return
                except FileNotFoundError:
                    return
                except OSError:
                    time.sleep(0.02)

    def _remove(self) -> None:
        for _ in range(100):
            try:
                with open(self.procs) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def describe_limits(mode: str, memory_mb: int = 4096, cgroup_mb: int = 0, pids: int = 256) -> str:
    """One line: which memory limit is in force for a kernel, and where its IPC folder lives
    (``cgroup_mb``: the cgroup's limit, 0 = CourseKernelManager's default for ``memory_mb``; ``pids``: its
    max_processes, also each kernel cgroup's pids.max where the cgroup has the pids controller)."""
    cgroup_mb = cgroup_mb or (memory_mb + 1024 if memory_mb > 0 else 0)
    if mode == "none":
        return f"memory: RLIMIT_DATA {memory_mb} MiB only (no cgroup: unsandboxed)"
    kind, where = memory_cgroups()
    ipc = (f"IPC folder on a {RUN_DIR_MB} MiB tmpfs" if small_tmpfs_works()
           else "IPC folder on host disk (no tmpfs could be mounted)")
    if kind is None:
        return (f"memory: NO cgroup limit, only RLIMIT_DATA {memory_mb} MiB (memfd_create and shared memory are not "
                f"counted): {where}; {ipc}; {describe_meters()}")
    knob = "memory.max" if kind == "v2" else "memory.limit_in_bytes"
    extra = ""
    if kind == "v2":
        with contextlib.suppress(OSError), open(os.path.join(where, "cgroup.subtree_control")) as f:
            if "pids" in f.read().split():
                extra += f", pids.max = {pids}"
        if os.geteuid() != 0:
            extra += f" (in the subtree delegated to uid {os.geteuid()}: {os.path.dirname(where)})"
    return (f"memory: cgroup {kind} {knob} = {cgroup_mb} MiB per kernel{extra}, all its processes (memfd and shared "
            f"memory counted), RLIMIT_DATA {memory_mb} MiB per process; {ipc}; {describe_meters()}")


@lru_cache(maxsize=None)
def meter_cgroups() -> bool:
    """Can a kernel's cgroup give the cost meters its CPU time and a resettable peak (grader/meter.py)?"""
    from attnkit.grader.meter import CgroupMeter
    kind, parent = memory_cgroups()
    if kind is None:
        return False
    try:
        probe_cg = KernelCgroup(64, kind, parent)
    except OSError:
        return False
    try:
        return CgroupMeter.of(probe_cg) is not None
    finally:
        probe_cg.remove()


def describe_meters() -> str:
    """Which meter the time and memory verdicts read (a per-kernel cgroup counts every process)."""
    if meter_cgroups() and os.environ.get("ATTNKIT_COST_METER", "auto") != "proc":
        return "cost meters: the kernel's cgroup (CPU time and peak memory of all its processes, exited ones too)"
    if _no_processes_loads():
        return ("cost meters: /proc only (no per-kernel cgroup), and the kernel may start threads but no process "
                "(a second syscall filter refuses fork): nothing it runs escapes them")
    return ("cost meters: /proc only (no per-kernel cgroup, no syscall filter to refuse new processes: a process or "
            "thread started anywhere on the host during a measured call makes that measurement fail)")


@lru_cache(maxsize=None)
def _no_processes_loads() -> bool:
    """Can a process load the filter that refuses new processes (libseccomp present)?"""
    try:
        import pyseccomp  # noqa: F401
        return True
    except (ImportError, OSError):
        return False


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def mount_small_tmpfs(path: str, mb: int = RUN_DIR_MB, mode: int = 0o755) -> bool:
    """A size-limited tmpfs on ``path`` (root only): what a kernel writes there is bounded."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    opts = f"size={mb}m,mode={mode:o},nr_inodes=4096".encode()
    return _libc().mount(b"tmpfs", path.encode(), b"tmpfs", 0x2 | 0x4 | 0x8, opts) == 0  # nosuid, nodev, noexec


def remove_dir(path: str) -> None:
    """rmtree, after unmounting a tmpfs on it (lazily: a dying kernel may still hold a socket)."""
    if os.path.ismount(path):
        _libc().umount2(path.encode(), 2)  # MNT_DETACH
    shutil.rmtree(path, ignore_errors=True)


@lru_cache(maxsize=None)
def small_tmpfs_works() -> bool:
    folder = tempfile.mkdtemp(prefix="attnkit-probe-")
    try:
        return mount_small_tmpfs(folder, 1)
    finally:
        remove_dir(folder)


# ---------------------------------------------------------------------------- uid slots
_held_slot: tuple[int, object] | None = None


def uid_slot() -> int:
    """This process's sandbox uid: one per concurrent grading process, held (flock) until it exits,
    so each worker's kernels have their own RLIMIT_NPROC budget and their own kill -9 -1."""
    global _held_slot
    if os.geteuid() != 0:  # unprivileged bwrap: the kernel keeps the grader's uid (in its own user namespace)
        return os.getuid()
    if _held_slot is not None:
        return _held_slot[0]
    handed = os.environ.pop(ENV_SLOT_FD, "")
    if handed:  # locked for this process by the batch process (with the sandbox it started for it)
        fd, _, uid = handed.partition(" ")
        _held_slot = (int(uid), os.fdopen(int(fd), "w"))
        return _held_slot[0]
    _held_slot = claim_slot(int(os.environ.get("ATTNKIT_SANDBOX_SLOT", "0") or 0))
    return _held_slot[0]


ENV_SLOT_FD = "ATTNKIT_SANDBOX_SLOT_FD"  # "fd uid": a slot lock handed to a grading process


def claim_slot(start: int) -> tuple[int, object]:
    """(uid, open lock file) of the first free slot from ``start`` on; held while the file is open
    in any process (a grading process may inherit it)."""
    folder = os.path.join(tempfile.gettempdir(), ".attnkit-sandbox-uids")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for i in range(UID_SLOTS):
        slot = (start + i) % UID_SLOTS
        f = open(os.path.join(folder, str(slot)), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return UID_BASE + slot, f
    raise SandboxUnavailable(f"all {UID_SLOTS} sandbox uids are in use")


def _setpriv_args(uid: int) -> list[str]:
    return [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--inh-caps=-all"]


# ---------------------------------------------------------------------------- the bwrap command
def python_exe() -> str:
    """This venv's interpreter with its folder resolved: the path the sandbox binds (``_python_roots``), whatever
    symlinks the kit was reached through (the last link, venv/bin/python -> base, stays: it finds the venv)."""
    return os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))


def _python_roots() -> list[str]:
    """The venv and the base interpreter it links to (read-only in the sandbox)."""
    roots = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    out = []
    for r in map(os.path.realpath, roots):
        if not any(r == o or r.startswith(o + "/") for o in out):
            out = [o for o in out if not o.startswith(r + "/")] + [r]
    return out


@lru_cache(maxsize=None)
def bwrap_has(option: str) -> bool:
    """Does the installed bwrap know ``option`` (--disable-userns came with 0.8.0)?"""
    try:
        out = subprocess.run([BWRAP, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out.split()


def bwrap_argv(inner: list[str], *, uid: int, workfiles: dict, run_dir: str | None, env: dict,
               scratch_mb: int = 256, zygote: bool = False, keep_fds: tuple = ()) -> list[str]:
    """The full command: bwrap (as root: no user namespace, so the uid below is a real host uid)
    then setpriv to the slot's uid, then ``inner``. ``workfiles``: name -> host file bound
    read-only into the working folder; ``run_dir``: the host folder with the connection file
    and the IPC sockets, bound at the same path. With the syscall filter (attnkit.seccomp), a
    shell in front opens its compiled program on an fd bwrap reads (``--seccomp``), one not in
    ``keep_fds`` (fds the caller passes on)."""
    a = [BWRAP, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--die-with-parent", "--new-session", "--hostname", "grader", "--clearenv"]
    if os.geteuid() != 0:  # unprivileged bwrap needs a user namespace; the uid stays the grader's
        a += ["--unshare-user"]
        if bwrap_has("--disable-userns"):  # and none nested in it (the filter refuses them as well)
            a += ["--disable-userns"]
    program = seccomp.program_path()
    if program:
        fd = next(n for n in range(3, 10) if n not in keep_fds)  # dash redirects single-digit fds only
        a = ["/bin/sh", "-c", f'exec "$@" {fd}<"$0"', program, *a, "--seccomp", str(fd)]
    mounted = ["/usr"]
    a += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev"]
    # a GPU node: the kernel runs the CUDA cases (--dev alone hides the GPU's device files)
    for gpu in sorted(f"/dev/{n}" for n in os.listdir("/dev") if n.startswith("nvidia")):
        a += ["--dev-bind-try", gpu, gpu]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            a += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            a += ["--ro-bind", top, top]
            mounted.append(top)
    made = set()

    def parents(path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made and not any(d == m or d.startswith(m + "/") for m in mounted):
                made.add(d)
                a.extend(["--perms", "0755", "--dir", d])  # bwrap would make them 0700: unreadable to the uid

    for root in _python_roots():
        if any(root == m or root.startswith(m + "/") for m in mounted):
            continue
        parents(root)
        a += ["--ro-bind", root, root]
        mounted.append(root)
    a += ["--perms", "0755", "--dir", SANDBOX_KIT, "--perms", "0755", "--dir", f"{SANDBOX_KIT}/attnkit"]
    for sub in sorted({os.path.dirname(n) for n in KERNEL_MODULES if os.path.dirname(n)}):
        a += ["--perms", "0755", "--dir", f"{SANDBOX_KIT}/attnkit/{sub}"]
    for name in KERNEL_MODULES:
        path = os.path.join(KIT_DIR, name)
        if os.path.isfile(path):
            a += ["--ro-bind", path, f"{SANDBOX_KIT}/attnkit/{name}"]
    if run_dir:  # at its host path: the connection file names the sockets by absolute path
        parents(run_dir)
        a += ["--bind", run_dir, run_dir]
    # the one writable folder (TMPDIR too); /tmp, where the run folder is bound, is not writable
    a += ["--size", str(scratch_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", SANDBOX_HOME,
          "--perms", "1777", "--dir", f"{SANDBOX_HOME}/.tmp"]
    for name, path in sorted(workfiles.items()):
        a += ["--ro-bind", path, f"{SANDBOX_HOME}/{name}"]
    a += ["--chdir", SANDBOX_HOME]
    base = {"PATH": f"{os.path.dirname(python_exe())}:/usr/bin:/bin", "HOME": SANDBOX_HOME,
            "TMPDIR": f"{SANDBOX_HOME}/.tmp", "LANG": "C.UTF-8", "PYTHONPATH": SANDBOX_KIT,
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "MPLCONFIGDIR": f"{SANDBOX_HOME}/.tmp"}
    for k, v in {**base, **env}.items():
        a += ["--setenv", k, str(v)]
    if zygote:  # root in the sandbox with only these two capabilities; every fork drops to ``uid`` at once
        return a + ["--setenv", "ATTNKIT_KERNEL_UID", str(uid), "--cap-add", "CAP_SETUID", "--cap-add",
                    "CAP_SETGID", *inner]
    if os.geteuid() == 0:
        a += [SETPRIV, *_setpriv_args(uid), "--"]
    return a + list(inner)


def _host_pid(root: int, ns_pid: int) -> int | None:
    """The host pid of the process that is ``ns_pid`` in the PID namespace under host process ``root``."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                nspid = next((l.split()[1:] for l in f if l.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == str(ns_pid):
                return pid
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return None


def workdir_files(folder: str) -> dict:
    """name -> path of the plain files in ``folder`` (the grader's copies), as bound into the sandbox."""
    return {n: os.path.join(folder, n) for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n))}


# ---------------------------------------------------------------------------- the setpriv fallback
SECRET_NAMES = ("source", "submitted", "autograded", "feedback", "reports", "gradebook.db", "exchange",
                "tests", "attnkit", "course_config.py", "nbgrader_config.py", ".git", "graders", "banks")


def protect(*roots) -> list[str]:
    """setpriv fallback: take other users' rights off the course's and the kit's secret files
    (the kernel's uid is an 'other'); the venv stays readable. Returns what was changed."""
    changed = []
    for root in roots:
        if not root or not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if name in SECRET_NAMES or name.startswith("gradebook.db") or name.startswith("grades"):
                mode = os.stat(path, follow_symlinks=False).st_mode & 0o7777
                if mode & 0o007:
                    os.chmod(path, mode & ~0o007)
                    changed.append(path)
    return changed


def kill_uid(uid: int) -> None:
    """setpriv fallback: no process of the slot's uid outlives its notebook (kill -9 -1 as that uid)."""
    _run([SETPRIV, *_setpriv_args(uid), "--", "/bin/kill", "-9", "-1"], timeout=10)


def reap_free_slots() -> list[int]:
    """After a grading process was killed (a stall): kill every process of a sandbox uid whose slot no
    grading process holds. Kernels run in sessions of their own, out of reach of the worker's killpg;
    bwrap's --die-with-parent ends them, setpriv's do not, and the next student could get that uid.
    Each slot is locked while its uid is cleared, so no grading process claims it meanwhile."""
    if os.geteuid() != 0:
        return []
    uids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if UID_BASE <= uid < UID_BASE + UID_SLOTS:
                uids.add(uid)
    folder = os.path.join(tempfile.gettempdir(), ".attnkit-sandbox-uids")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    reaped = []
    for uid in sorted(uids):
        with open(os.path.join(folder, str(uid - UID_BASE)), "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue   # held: a live grading process's kernels
            kill_uid(uid)
            reaped.append(uid)
    return reaped


# ---------------------------------------------------------------------------- the kernel
# nbgrader's record of when a submission was made: not the kernel's business, and it differs per
# student (the interpreter started ahead for the next student is only used if the files are the same)
NOT_FOR_KERNELS = ("timestamp.txt",)


def isolated_copy(folder: str) -> str:
    """A fresh folder in the system temp dir with copies of ``folder``'s files (not notebooks)."""
    workdir = tempfile.mkdtemp(prefix="attnkit-kernel-")
    for name in os.listdir(folder):
        src = os.path.join(folder, name)
        # regular files only: a symlink (to the instructor's notebook, to /dev/zero) is never followed
        if os.path.isfile(src) and not os.path.islink(src) and not name.endswith(".ipynb") \
                and name not in NOT_FOR_KERNELS:
            shutil.copy(src, os.path.join(workdir, name))
    os.chmod(workdir, 0o755)  # read by the sandbox's uid; only the unsandboxed kernel writes here
    for name in os.listdir(workdir):
        os.chmod(os.path.join(workdir, name), 0o644)
    return workdir


# ---------------------------------------------------------------------------- warm start
class ZygoteError(RuntimeError):
    pass


class Zygote:
    """Host side of one pre-imported interpreter (attnkit.kernel's zygote) in its own bwrap
    sandbox, from which the kernels of one student's notebooks are forked."""

    def __init__(self, key, uid: int, workfiles: dict, env: dict, scratch_mb: int, runs: str,
                 preload: tuple = (), wait: bool = True):
        self.key, self.proc, self.sock, self.runs, self.ready = key, None, None, runs, False
        self.home = tempfile.mkdtemp(prefix="attnkit-warm-")
        os.chmod(self.home, 0o755)
        files = {}
        for name, path in workfiles.items():  # its own copies: the notebook's scratch copy is deleted after it
            files[name] = os.path.join(self.home, name)
            shutil.copy(path, files[name])
            os.chmod(files[name], 0o644)
        ours, theirs = socket.socketpair()
        try:
            # the control channel is an inherited socket: nothing in the sandbox's files a notebook could replace
            argv = bwrap_argv([python_exe(), "-m", "attnkit.kernel", "--zygote", str(theirs.fileno()),
                               ",".join(preload)], uid=uid,
                              workfiles=files, run_dir=runs, env=env, scratch_mb=scratch_mb, zygote=True,
                              keep_fds=(theirs.fileno(),))
            with open(os.path.join(self.home, "zygote.log"), "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             pass_fds=(theirs.fileno(),), start_new_session=True,
                                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        finally:
            theirs.close()
        self.sock = ours
        self.reader = ours.makefile("r")
        if wait:
            self.wait_ready()

    # -- handing a zygote started by the batch process over to a grading process -------------
    slot_lock = None  # the lock of the slot uid it runs kernels as, when started for another process

    def handover(self) -> tuple[dict, list[int]]:
        """(environment for the grading process, fds it must inherit). The caller then calls
        ``released()`` once that process has started."""
        info = {"pid": self.proc.pid, "key": self.key, "runs": self.runs, "home": self.home}
        env, fds = {ENV_HANDED: f"{self.sock.fileno()} {json.dumps(info)}"}, [self.sock.fileno()]
        if self.slot_lock is not None:
            env[ENV_SLOT_FD] = f"{self.slot_lock.fileno()} {self.key[0]}"
            fds.append(self.slot_lock.fileno())
        return env, fds

    def released(self) -> None:
        """In the batch process, after the handover: forget the zygote, but reap it when it ends."""
        import threading

        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()
            if self.slot_lock is not None:
                self.slot_lock.close()  # the grading process's inherited copy holds the lock now
        self.sock = None
        proc, self.proc = self.proc, None
        threading.Thread(target=proc.wait, daemon=True).start()

    @classmethod
    def adopt(cls, fd: int, info: str) -> "Zygote":
        """In the grading process: the zygote handed over (``handover``) through inherited fd ``fd``."""
        data = json.loads(info)
        self = cls.__new__(cls)
        uid, digest, env, scratch_mb, preload = data["key"]
        self.key = (uid, digest, tuple(tuple(kv) for kv in env), scratch_mb, tuple(preload))
        self.runs, self.home, self.ready = data["runs"], data["home"], False
        self.proc = _Handed(int(data["pid"]))
        self.sock = socket.socket(fileno=fd)
        self.reader = self.sock.makefile("r")
        return self

    def wait_ready(self) -> None:
        if not self.ready:
            self._reply(timeout=180)  # {"ready": true} once torch, ipykernel and the preloads are imported
            self.ready = True

    def _reply(self, timeout: float) -> dict:
        try:
            self.sock.settimeout(timeout)
            line = self.reader.readline()
        except OSError as exc:
            self.stop()
            raise ZygoteError(f"the warm-start interpreter did not answer ({type(exc).__name__}){self._log()}")
        if not line:
            self.stop()
            raise ZygoteError(f"the warm-start interpreter is gone{self._log()}")
        return json.loads(line)

    def call(self, timeout: float = 30, **request) -> dict:
        if self.sock is None:
            raise ZygoteError("the warm-start interpreter was stopped")
        self.wait_ready()
        try:
            self.sock.sendall((json.dumps(request) + "\n").encode())
        except OSError as exc:
            self.stop()
            raise ZygoteError(f"the warm-start interpreter is gone ({exc})")
        reply = self._reply(timeout)
        if not reply.get("ok"):
            self.stop()  # never reuse a sandbox that could not be cleaned
            raise ZygoteError(f"warm start refused: {reply.get('error')}")
        return reply

    def _log(self) -> str:
        try:
            with open(os.path.join(self.home, "zygote.log"), errors="replace") as f:
                tail = f.read()[-300:].strip()
            return f": {tail}" if tail else ""
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.sock is not None and self.proc is not None and self.proc.poll() is None

    def discard(self) -> None:
        """Stop it and remove its runs folder: for one no warm_start() scope took over."""
        self.stop()
        remove_dir(self.runs)

    def stop(self) -> None:
        """Kill the sandbox (bwrap's PID namespace ends with it, and every process in it)."""
        if self.slot_lock is not None:
            with contextlib.suppress(OSError):
                self.slot_lock.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.reader.close()
                self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)


class _Handed:
    """What a grading process holds of a zygote's bwrap process that the batch process started (and reaps)."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return -signal.SIGKILL if f.read().rsplit(")", 1)[1].split()[0] == "Z" else None
        except OSError:
            return -signal.SIGKILL

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout or 0)
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.poll()


class ForkedKernel:
    """What the kernel manager's provisioner holds in place of a Popen: a kernel the zygote forked."""

    stdin = stdout = stderr = None

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self):
        if self.returncode is None:
            try:
                self.returncode = self.zygote.call(op="poll", pid=self.pid)["rc"]
            except ZygoteError:
                self.returncode = -signal.SIGKILL  # the sandbox is gone, and the kernel with it
        return self.returncode

    def wait(self, timeout=None):
        return self.poll()

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            return
        try:
            if signum in (signal.SIGKILL, signal.SIGTERM):
                # kills every process of the notebook and wipes its files; a sandbox it cannot clean is dropped
                if not self.zygote.call(op="kill", pid=self.pid).get("clean"):
                    self.zygote.stop()
                self.returncode = -signal.SIGKILL  # dead and reaped either way: no need to poll for it
            else:
                self.zygote.call(op="signal", pid=self.pid, sig=int(signum))
        except ZygoteError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


_warm: dict | None = None   # the open warm_start() scope: {"runs", "zygote", "spare", "next", "prestart", "reuse"}
_next: "Zygote | None" = None  # for the next student of this grading process: kept, or started ahead


def warm_enabled() -> bool:
    # as root only: the zygote must be another uid than the notebooks (as bwrap's init is), or a
    # notebook's kill -9 -1 would take the zygote, and with it the whole sandbox, down
    return os.geteuid() == 0 and os.environ.get(ENV_WARM, "1").strip().lower() not in ("0", "false", "no", "off")


def _new_runs() -> str:
    """The folder a zygote's kernels keep their connection files, sockets and logs in: a small tmpfs."""
    runs = tempfile.mkdtemp(prefix=f"attnkit-runs-{os.getpid()}-")
    mount_small_tmpfs(runs)
    os.chmod(runs, 0o755)
    return runs




@atexit.register
def _drop_next() -> None:
    global _next
    if _next is not None:
        _next.discard()
    _next = None


@contextlib.contextmanager
def warm_start(prestart: bool = False):
    """Within: the kernels fork from one pre-imported interpreter (one sandbox), not started cold.
    grading.py opens one per student; outside, every kernel is cold.

    ``prestart``: more students follow in this process. By default the sandbox then outlives the
    scope and the next student's kernels fork from it too: it is emptied before every kernel,
    whoever's it is, exactly as between two notebooks of one student. With
    ``CourseKernelManager.sandbox_per_student``, the sandbox ends with the student instead, and the
    next student's is started as soon as this one's is up (its imports overlap this grading)."""
    global _warm, _next
    if not warm_enabled() or _warm is not None:
        yield
        return
    spare, _next = _next, None
    if spare is not None and not spare.alive:
        spare.discard()
        spare = None
    runs = spare.runs if spare is not None else _new_runs()
    _warm = {"runs": runs, "zygote": None, "spare": spare, "next": None, "prestart": prestart, "reuse": False}
    try:
        yield
    finally:
        scope, _warm = _warm, None
        keep = scope["zygote"] if scope["reuse"] and scope["prestart"] and scope["next"] is None else None
        if keep is not None and keep.alive:
            _next = keep  # with its runs folder, which it binds
            if scope["spare"] is not None:
                scope["spare"].stop()
        else:
            for zyg in (scope["zygote"], scope["spare"]):
                if zyg is not None:
                    zyg.stop()
            remove_dir(runs)
            _next = scope["next"]


def _digest(workfiles: dict) -> str:
    h = hashlib.sha256()
    for name, path in sorted(workfiles.items()):
        with open(path, "rb") as f:
            h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _zygote_key(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple) -> tuple:
    return (uid, _digest(workfiles), tuple(sorted(env.items())), scratch_mb, tuple(preload))


def launch_ahead(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple = ()) -> Zygote:
    """An interpreter for kernels with these grader files and limits, started now, not waited for."""
    key = _zygote_key(uid, workfiles, env, scratch_mb, preload)
    return Zygote(key, uid, workfiles, env, scratch_mb, _new_runs(), preload, wait=False)


def start_ahead(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple = ()) -> Zygote | None:
    """Start, now, the interpreter the next warm_start() scope will take if its first kernel has
    these grader files and limits (a grading process calls it as it starts, before its first student)."""
    global _next
    if _next is None and _warm is None and warm_enabled():
        _next = launch_ahead(uid, workfiles, env, scratch_mb, preload)
    return _next


ENV_HANDED = "ATTNKIT_ZYGOTE"  # fd and JSON of a zygote the batch process started for a grading process


def adopt_handed() -> bool:
    """In a grading process: take the zygote the batch process started for it, if any."""
    global _next
    value = os.environ.pop(ENV_HANDED, "")
    if not value or _next is not None:
        return False
    fd, _, info = value.partition(" ")
    _next = Zygote.adopt(int(fd), info)
    return True


def _zygote_for(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple = (),
                per_student: bool = False) -> Zygote:
    """The scope's zygote for these grader files and limits (the one kept or started ahead if it
    matches, else a new one; a new one too if it died)."""
    key = _zygote_key(uid, workfiles, env, scratch_mb, preload)
    _warm["reuse"] = not per_student
    zyg = _warm["zygote"]
    if zyg is not None and (zyg.key != key or not zyg.alive):
        zyg.stop()
        zyg = _warm["zygote"] = None
    if zyg is None:
        spare, _warm["spare"] = _warm["spare"], None
        if spare is not None and spare.key == key and spare.alive:
            zyg = spare
        else:
            if spare is not None:
                spare.stop()
            zyg = Zygote(key, uid, workfiles, env, scratch_mb, _warm["runs"], preload)
        _warm["zygote"] = zyg
        zyg.wait_ready()
        if _warm["prestart"] and per_student and _warm["next"] is None:
            _warm["next"] = Zygote(key, uid, workfiles, env, scratch_mb, _new_runs(), preload, wait=False)
    return zyg


class CourseKernelClient(AsyncKernelClient):
    """jupyter_client's client, ready as soon as the kernel has answered kernel_info and IOPub has
    delivered that request's messages: jupyter_client then also waits for 0.2 s of silence on
    IOPub (0.2 s or more per notebook). Nothing is lost by not waiting: nbclient reads only the
    messages whose parent is the cell it runs."""

    @default("context")
    def _context_default(self):
        # the client connects before the forked kernel has bound its sockets; zmq retries a
        # failed connect every 100 ms by default, a tenth of a second lost on every notebook
        self._created_context = True
        ctx = zmq.asyncio.Context()
        ctx.setsockopt(zmq.RECONNECT_IVL, 5)
        # A flood must not pile up in the grader: no message over MAX_MESSAGE is taken in (zmq drops the
        # connection instead, see iopub_lost), and at most RCV_QUEUE wait here (the rest waits in the kernel).
        ctx.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        ctx.setsockopt(zmq.RCVHWM, RCV_QUEUE)
        return ctx

    _iopub_monitor = None
    _iopub_gone = False

    def start_channels(self, *args, **kwargs):
        super().start_channels(*args, **kwargs)
        self._watch_iopub()

    def _watch_iopub(self) -> None:
        # an oversized message ends the IOPub connection for good (zmq does not reconnect): watch for it
        addr = f"inproc://attnkit-iopub-{id(self)}-{time.monotonic_ns()}"
        self.iopub_channel.socket.monitor(addr, zmq.EVENT_DISCONNECTED)
        pair = self.context.socket(zmq.PAIR)  # the context's own: destroyed with it whatever happens
        pair.connect(addr)
        self._iopub_monitor = (pair, zmq.Socket.shadow(pair.underlying))  # read without the event loop
        self._iopub_gone = False

    def reconnect_iopub(self) -> None:
        """A new IOPub connection in place of one an oversized message ended (the kernel's state is kept)."""
        self._unwatch_iopub()
        with contextlib.suppress(Exception):
            self._iopub_channel.close()
        self._iopub_channel = None
        self._watch_iopub()

    def _unwatch_iopub(self) -> None:
        if self._iopub_monitor is not None:
            with contextlib.suppress(Exception):
                if self._iopub_channel is not None:
                    self._iopub_channel.socket.disable_monitor()
            self._iopub_monitor[0].close(linger=0)
            self._iopub_monitor = None

    def iopub_lost(self) -> bool:
        """Has the IOPub connection dropped (a message over MAX_MESSAGE, or the kernel gone)?"""
        while self._iopub_monitor is not None and not self._iopub_gone:
            try:
                self._iopub_monitor[1].recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._iopub_gone = True
        return self._iopub_gone

    def stop_channels(self):
        self._unwatch_iopub()
        super().stop_channels()

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                # IOPub is connected once it delivers this request's "idle" (else ask again)
                parent = reply["parent_header"].get("msg_id")
                try:
                    while True:
                        msg = await self.iopub_channel.get_msg(timeout=0.5)
                        if (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == parent
                                and msg["content"].get("execution_state") == "idle"):
                            self._handle_kernel_info_reply(reply)
                            return
                except Empty:
                    pass
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")

    wait_for_ready = _async_wait_for_ready


class CourseKernelManager(AsyncKernelManager):
    """Always start the course's Python kernel, whatever kernelspec the notebook names, in the sandbox."""

    sandbox = Unicode("auto", help="bwrap, setpriv, none, or auto (ATTNKIT_SANDBOX, else the best that works).").tag(config=True)
    memory_limit_mb = Integer(4096, help="RLIMIT_DATA of every kernel process, MiB; 0 = none.").tag(config=True)
    cgroup_memory_mb = Integer(0, help="Where the host offers a writable memory cgroup: the limit of each kernel's "
                               "cgroup (all its processes together, memfd, shared memory and tmpfs included), "
                               "MiB; 0 = memory_limit_mb + 1024 (an ordinary allocation then fails with "
                               "MemoryError in its cell first; near a cgroup limit a kernel slows down as it "
                               "reclaims before it is killed).").tag(config=True)
    max_processes = Integer(256, help="RLIMIT_NPROC of the sandbox uid (processes and threads).").tag(config=True)
    max_file_mb = Integer(256, help="RLIMIT_FSIZE: the largest file a kernel may write, MiB.").tag(config=True)
    scratch_mb = Integer(256, help="Size of the kernel's writable working folder (tmpfs), MiB.").tag(config=True)
    cpu_seconds = Integer(900, help="RLIMIT_CPU of each kernel process (on top of the per-cell timeout).").tag(config=True)
    threads = Integer(1, help="Torch/BLAS threads in a grading kernel (0 = library default).").tag(config=True)
    cost_meter = Unicode("auto", help="What the time and memory verdicts read: auto (the kernel's cgroup where "
                         "the host gives one, else /proc, and then the kernel may start no process) or proc "
                         "(/proc and no processes even where a cgroup could count them: to test that path). "
                         "Default: ATTNKIT_COST_METER, else auto."
                         ).tag(config=True)
    display_name = Unicode("Python 3 (attention kit)").tag(config=True)

    @default("cost_meter")
    def _cost_meter_default(self):
        return os.environ.get("ATTNKIT_COST_METER", "auto")  # (worker processes inherit it)
    warm_start = Bool(True, help="Inside a warm_start() scope (bwrap as root), fork kernels from a pre-imported "
                                 "interpreter (ATTNKIT_WARM_START=0 turns it off).").tag(config=True)
    sandbox_per_student = Bool(False, help="Warm start: a new sandbox for every student (started ahead) instead "
                               "of one per grading process, emptied before every kernel.").tag(config=True)
    preload = List(Unicode(), list(PRELOAD), help="Modules the warm-start interpreter imports once for all of a "
                   "student's kernels: what the notebooks and their tests import.").tag(config=True)

    client_class = DottedObjectName("attnkit.sandbox.CourseKernelClient")

    @default("client_factory")
    def _client_factory_default(self):
        return CourseKernelClient

    _run_dir = None
    _uid = None
    _warm_args = None   # (workfiles, env) when this kernel may be forked by the scope's zygote

    def mode(self) -> str:
        if self.sandbox != "auto":
            why = probe(self.sandbox)
            if why:
                raise SandboxUnavailable(f"sandbox {self.sandbox!r} does not work here: {why}")
            return self.sandbox
        return detect()

    @property
    def kernel_spec(self):  # type: ignore[override]
        mode = self.mode()
        env = {"ATTNKIT_KERNEL_MEMORY_MB": str(self.memory_limit_mb), "PYTHONWARNINGS": "default"}
        if mode != "none":  # never on a student's own machine: NPROC counts all their processes
            env.update(ATTNKIT_KERNEL_NPROC=str(self.max_processes), ATTNKIT_KERNEL_FSIZE_MB=str(self.max_file_mb),
                       ATTNKIT_KERNEL_CPU_S=str(self.cpu_seconds))
        if mode != "none" and self.meters_proc():  # nothing a process did would be counted once it ended
            env[seccomp.ENV_NO_PROCESSES] = "1"
        if self.threads:
            env.update({k: str(self.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        if os.environ.get("NBGRADER_EXECUTION"):
            env["NBGRADER_EXECUTION"] = os.environ["NBGRADER_EXECUTION"]
        # the visible checks' hints follow the course's setting, as the grader's diagnoses do (a course helper's DIAGNOSES)
        env["ATTNKIT_DIAGNOSES"] = "1" if diagnoses_setting(self.config) else "0"
        # interrupts go over the control channel: a signal to bwrap would not reach the kernel
        return KernelSpec(argv=[python_exe(), "-m", "attnkit.kernel", "-f", "{connection_file}"],
                          display_name=self.display_name, language="python", env=env,
                          interrupt_mode="message" if mode == "bwrap" else "signal")

    def meters_proc(self) -> bool:
        """Do this kernel's cost meters read /proc (no cgroup of its own counts its processes)?"""
        return self.cost_meter == "proc" or not meter_cgroups()

    def sealed_filters(self) -> int:
        """How many seccomp filters the kernel runs under once it refuses new processes: the grader's own
        (a container's profile), the sandbox's, that one."""
        return seccomp.filters_of("self") + (1 if seccomp.program_path() else 0) + 1

    async def _async_pre_start_kernel(self, **kw):
        mode = self.mode()
        if mode != "none" and self._run_dir is None:
            self._uid = uid_slot()
            # connection file (root's, 0644) and IPC sockets (the kernel's uid creates them) in a private folder
            warm = mode == "bwrap" and self.warm_start and _warm is not None
            self._run_dir = tempfile.mkdtemp(prefix=f"attnkit-run-{os.getpid()}-", dir=_warm["runs"] if warm else None)
            if not warm:  # a warm kernel's folder is inside its zygote's runs folder, a tmpfs already
                mount_small_tmpfs(self._run_dir)
            os.chmod(self._run_dir, 0o711 if mode == "setpriv" else 0o755)
            ipc = os.path.join(self._run_dir, "ipc")
            os.mkdir(ipc, 0o700)
            if os.geteuid() == 0:
                os.chown(ipc, self._uid, self._uid)
            self.transport = "ipc"
            self.connection_file = os.path.join(self._run_dir, "kernel.json")
            self.ip = os.path.join(ipc, "kernel")
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        if mode != "none":
            os.chmod(self.connection_file, 0o644)
            kw["stdin"] = subprocess.DEVNULL  # nothing of the grader's terminal reaches the kernel
            log = open(os.path.join(self._run_dir, "kernel.log"), "ab")
            kw["stdout"] = kw["stderr"] = log
            kw["cwd"] = self._workdir(kw.get("cwd"))
            if mode == "bwrap":
                if self.warm_start and _warm is not None and self._run_dir.startswith(_warm["runs"] + "/"):
                    # the kernel's own arguments (nbclient's extra ones too, e.g. an in-memory history)
                    args = kernel_cmd[kernel_cmd.index("attnkit.kernel") + 1:]
                    self._warm_args = (workdir_files(kw["cwd"]), dict(self.kernel_spec.env), args)
                    if os.geteuid() == 0:
                        os.chown(log.name, self._uid, self._uid)  # the forked kernel opens it as its uid
                kernel_cmd = bwrap_argv(kernel_cmd, uid=self._uid, workfiles=workdir_files(kw["cwd"]),
                                        run_dir=self._run_dir, env=self.kernel_spec.env, scratch_mb=self.scratch_mb)
                kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            else:  # the syscall filter is loaded by a launcher in front of setpriv
                kernel_cmd = seccomp.launcher([SETPRIV, *_setpriv_args(self._uid), "--"] + kernel_cmd)
                kw["env"] = {**self.kernel_spec.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                             "HOME": kw["cwd"], "TMPDIR": kw["cwd"], "PYTHONPATH": self._fallback_kit(),
                             "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
            self._drop_cgroup()
            kind, parent = memory_cgroups()
            if kind is not None and self.cgroup_limit() > 0:
                self._cgroup = KernelCgroup(self.cgroup_limit(), kind, parent, pids=self.max_processes)
                kernel_cmd = self._cgroup.wrap(kernel_cmd)  # a forked (warm) kernel is moved in at launch
        return kernel_cmd, kw

    pre_start_kernel = _async_pre_start_kernel

    def start_ahead(self, workfiles: dict, env: dict | None = None, slot: int | None = None):
        """Start the warm-start interpreter of a first kernel that will see ``workfiles`` (name ->
        path), before nbgrader asks for that kernel, so that its imports overlap other work.
        ``env``: variables the kernel will also get (nbgrader's NBGRADER_EXECUTION). Without
        ``slot``: for this process; with it, for the grading process of that worker slot, which
        gets it through ``Zygote.handover``. Returns the Zygote, or None where there is no warm start."""
        if not (self.warm_start and warm_enabled() and self.mode() == "bwrap"):
            return None
        env = {**self.kernel_spec.env, **(env or {})}
        if slot is None:
            return start_ahead(uid_slot(), workfiles, env, self.scratch_mb, tuple(self.preload))
        # the slot's uid is locked here and the lock handed over with the sandbox (Zygote.handover)
        if os.geteuid() != 0:
            return launch_ahead(os.getuid(), workfiles, env, self.scratch_mb, tuple(self.preload))
        uid, lock = claim_slot(slot)
        try:
            zyg = launch_ahead(uid, workfiles, env, self.scratch_mb, tuple(self.preload))
        except BaseException:
            lock.close()
            raise
        zyg.slot_lock = lock
        return zyg

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        if self._warm_args is not None and _warm is not None:
            try:
                workfiles, env, args = self._warm_args
                zyg = _zygote_for(self._uid, workfiles, env, self.scratch_mb, tuple(self.preload),
                                  self.sandbox_per_student)
                pid = zyg.call(op="spawn", argv=args, log=os.path.join(self._run_dir, "kernel.log"))["pid"]
                if self._cgroup is not None:  # before the client connects, so before any cell runs
                    host = _host_pid(zyg.proc.pid, pid)
                    if host is None:
                        zyg.call(op="kill", pid=pid)
                        raise ZygoteError("the forked kernel could not be found to put it in its memory cgroup")
                    self._cgroup.add(host)
            except ZygoteError as exc:  # e.g. a notebook killed it: this kernel starts cold
                self.log.warning("warm start failed, starting the kernel cold: %s", exc)
            else:
                prov = self.provisioner
                prov.process, prov.pid, prov.pgid = ForkedKernel(zyg, pid), pid, None
                self._reconcile_connection_info(prov.connection_info)
                return
        await super()._async_launch_kernel(kernel_cmd, **kw)

    _launch_kernel = _async_launch_kernel

    def _workdir(self, cwd):
        """setpriv: the kernel's uid must own its working folder (a copy, not the course's)."""
        if self.mode() == "setpriv" and cwd:
            os.chown(cwd, self._uid, self._uid)
            os.chmod(cwd, 0o700)
        return cwd

    def _fallback_kit(self) -> str:
        dest = os.path.join(self._run_dir, "kit", "attnkit")
        if not os.path.isdir(dest):
            os.makedirs(dest)
            for name in KERNEL_MODULES:
                if os.path.isfile(os.path.join(KIT_DIR, name)):
                    os.makedirs(os.path.dirname(os.path.join(dest, name)), mode=0o755, exist_ok=True)
                    shutil.copy(os.path.join(KIT_DIR, name), os.path.join(dest, name))
            for d in (dest, os.path.dirname(dest), *(os.path.join(dest, os.path.dirname(n)) for n in KERNEL_MODULES)):
                os.chmod(d, 0o755)
        return os.path.dirname(dest)

    def kernel_log(self) -> str:
        try:
            with open(os.path.join(self._run_dir, "kernel.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 2000))
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    _cgroup = None

    def cgroup_limit(self) -> int:
        return self.cgroup_memory_mb or (self.memory_limit_mb + 1024 if self.memory_limit_mb > 0 else 0)

    def _drop_cgroup(self) -> None:
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None

    def oom_killed(self) -> bool:
        """Did the kernel's memory cgroup kill one of its processes?"""
        return self._cgroup is not None and self._cgroup.oom_killed()

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._uid is not None and self.mode() == "setpriv":
            kill_uid(self._uid)
        if not restart:
            self._drop_cgroup()
        if not restart and self._run_dir:
            remove_dir(self._run_dir)
            self._run_dir = None

    cleanup_resources = _async_cleanup_resources


async def run_source(workdir: str, source: str, timeout: float = 300, **traits) -> tuple[str, object]:
    """Run ``source`` in a new course kernel with ``workdir``'s files (sandboxed; forked where a
    warm_start() scope is open): (its stdout, with any error as "ename: evalue"; the provisioner's
    process object, a ForkedKernel when it was forked). For benchmarks and the kit's tests."""
    km = CourseKernelManager(**traits)
    await km.start_kernel(cwd=workdir)
    try:
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        msg_id, out = kc.execute(source), []
        while True:
            msg = await kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        kc.stop_channels()
        return "".join(out), km.provisioner.process
    finally:
        await km.shutdown_kernel(now=True)


def diagnoses_setting(config) -> bool:
    """c.CourseExecute.diagnoses as configured (the trait's default otherwise)."""
    set_to = config.CourseExecute.get("diagnoses") if "CourseExecute" in config else None
    return bool(CourseExecute.diagnoses.default_value if set_to is None else set_to)


class CourseExecute(Execute):
    """nbgrader's Execute, in the course kernel (sandboxed), surviving kernel deaths."""

    max_kernel_restarts = Integer(10, help="Kernel deaths tolerated in one notebook.").tag(config=True)
    student_timeout = Integer(0, help="Wall-clock seconds for all of one student's grading (attnkit.workers stops "
                              "it and scores what is left 0); 0 = the per-cell timeout x the code cells + "
                              "120 s per notebook.").tag(config=True)
    grader_memory_mb = Integer(3072, help="RLIMIT_DATA (soft) of each grading process, MiB: what decoding a kernel's "
                               "replies and running the hidden tests may take; over it the notebook fails as "
                               "could-not-be-graded and the batch goes on. 0 = none.").tag(config=True)
    store_widget_state = Bool(False, help="Grading keeps no widget state (a notebook could flood it).")
    diagnoses = Bool(True, help="A failed part's message names the likely mistake (a known wrong variant its output "
                     "matches); False leaves it out (some staff publish diagnoses after the deadline). Gradescope "
                     "grades with the same configuration.").tag(config=True)
    graders = Dict(help="assignment -> its grader-only helper file (relative to the course folder), whose names "
                   "every hidden region of that assignment starts with (attnkit/grader/hidden.py).").tag(config=True)
    grader_file = None   # this notebook's assignment's (set by preprocess)
    _caps = None   # CapOutputs, applied to each output as it arrives
    _cell_budget = None

    @default("shutdown_kernel")
    def _kill_when_done(self):
        # The outputs are read before the kernel stops and its state is thrown away: a graceful
        # shutdown only waits (~1 s a notebook); SIGKILL to bwrap ends its whole PID namespace.
        return "immediate"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", CourseKernelManager)
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        """Run the notebook in a scratch folder outside the course (a copy of the files beside
        the notebook); in the sandbox those copies are bound read-only into the kernel's tmpfs."""
        self._replayable: list[int] = []
        self._restarts = 0
        resources = resources if resources is not None else {}
        meta = resources.setdefault("metadata", {})
        rel = self.graders.get(resources.get("nbgrader", {}).get("assignment"))
        root = self.config.get("CourseDirectory", {}).get("root") or os.getcwd()
        self.grader_file = os.path.join(root, rel) if rel else None
        if self.grader_file and not os.path.isfile(self.grader_file):  # never graded without its hidden checks
            raise FileNotFoundError(f"CourseExecute.graders names {rel} for this assignment; there is no such file")
        workdir = isolated_copy(meta.get("path") or os.getcwd())
        original, meta["path"] = meta.get("path"), workdir
        from attnkit.transforms import CapOutputs

        self._caps = CapOutputs(config=self.config)
        self._notebook_budget = self._caps.arriving()
        try:
            return super().preprocess(nb, resources, km=km)
        finally:
            meta["path"] = original
            shutil.rmtree(workdir, ignore_errors=True)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        """A test cell whose hidden regions run in the grader (attnkit/grader/): its visible part runs
        here in the kernel, then, if that passed, the hidden regions in this process."""
        from attnkit.grader import channel, hidden  # the grading process only (torch: 150 MB a process)

        graded_here = []
        if is_test_cell(cell) and cell.cell_type == "code":
            visible, regions = markup.split_hidden(cell.source)
            graded_here = [r for r in regions if hidden.runs_in_grader(r)]
        if not graded_here:
            return await self._execute_in_kernel(cell, cell_index, execution_count, store_history)
        full = cell.source
        cell.source = visible
        try:
            result = await self._execute_in_kernel(cell, cell_index, execution_count, store_history)
        finally:
            cell.source = full
        if any(o.output_type == "error" for o in cell.outputs):
            return result
        died = await channel.run_hidden_regions(self, cell, graded_here, self.resources["metadata"]["path"])
        if died:
            self._restarts += 1
            if self._restarts > self.max_kernel_restarts:
                raise DeadKernelError("the kernel kept dying")
            await self._restart_and_replay()
        return result

    # -- outputs capped as they arrive (CapOutputs.admit): a flood never piles up in this process
    def output(self, outs, msg, display_id, cell_index):
        if self._caps is not None and not msg.pop("_attnkit_admitted", False):
            if not self._caps.admit(msg["msg_type"], msg["content"], self._budget()):
                return None
        return super().output(outs, msg, display_id, cell_index)

    def _update_display_id(self, display_id, msg):
        # nbclient copies an update (or a new display with the same id) into earlier outputs: capped first
        if self._caps is not None:
            budget = self._caps.cell_budget(self._notebook_budget) if msg["msg_type"] == "update_display_data" \
                else self._budget()
            if not self._caps.admit(msg["msg_type"], msg["content"], budget):
                return
            msg["_attnkit_admitted"] = True
        super()._update_display_id(display_id, msg)

    def handle_comm_msg(self, outs, msg, cell_index):
        """No widgets in grading: a notebook's comm messages are dropped (their state would pile up here)."""

    def _budget(self) -> dict:
        if self._cell_budget is None:
            self._cell_budget = self._caps.cell_budget(self._notebook_budget)
        return self._cell_budget

    async def _execute_in_kernel(self, cell, cell_index, execution_count=None, store_history=True):
        self._cell_budget = None
        try:
            try:
                result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            finally:
                note = self._caps.cut_note(self._cell_budget) if self._caps and self._cell_budget else None
                if note is not None and cell.cell_type == "code":
                    cell.setdefault("outputs", []).append(note)
        except CellTimeoutError:
            if not (self.kc is not None and self.kc.iopub_lost()):
                raise
            # An output message over MAX_MESSAGE: it and what followed it (this cell's error too, if any) are
            # lost. The cell is marked failed, so a test cell never passes for want of its error output.
            self.kc.reconnect_iopub()
            await self.kc.wait_for_ready(timeout=60)  # the new connection delivers before the next cell runs
            cell.outputs.append(NotebookNode(
                output_type="error", ename="OutputTooLarge", traceback=[],
                evalue=f"one output message of this cell was over {MAX_MESSAGE:,} bytes: it and the rest of the "
                       f"cell's output were dropped (each cell keeps {self._caps.max_cell_bytes:,} bytes of text)"))
            return cell
        except DeadKernelError:
            if self.km.oom_killed():
                ename, why = KERNEL_DIED, (f"the Python kernel was stopped: its processes held more than its "
                                           f"memory limit ({self.km.cgroup_limit()} MiB, all its processes together)")
            else:
                ename, why = KERNEL_DIED, ("the Python kernel died while running this cell (os._exit, a crash, too "
                                           "much memory or CPU time)")
            cell.outputs.append(NotebookNode(
                output_type="error", ename=ename, traceback=[],
                evalue=f"{why}; it was restarted and the earlier cells were run again"))
            self._restarts += 1
            if self._restarts > self.max_kernel_restarts:
                raise
            await self._restart_and_replay()
            return cell
        timed_out = cell.cell_type == "code" and any(
            o.output_type == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs)
        if timed_out:  # one clear message instead of a KeyboardInterrupt traceback
            cell.outputs = [o for o in cell.outputs if o.output_type != "error"] + [NotebookNode(
                output_type="error", ename="CellTimeoutError",
                evalue=f"stopped after {self.timeout} s: the code this cell runs did not finish (an infinite loop?)",
                traceback=[])]
        elif cell.cell_type == "code" and not is_test_cell(cell) and not any(
                o.output_type == "error" and o.get("ename") in TIMEOUT_NAMES for o in cell.outputs):
            self._replayable.append(cell_index)
        return result

    # nbclient binds the sync wrapper to its own coroutine; rebind it to ours.
    execute_cell = run_sync(async_execute_cell)

    async def _restart_and_replay(self):
        self.log.warning("Kernel died; restarting it and replaying %d cells", len(self._replayable))
        try:
            if self.kc is not None:
                self.kc.stop_channels()
        except Exception:  # the channels of a dead kernel may already be gone
            pass
        await self.km.restart_kernel(now=True)
        await self.async_start_new_kernel_client()
        for index in self._replayable:
            source = self.nb.cells[index].source
            msg_id = self.kc.execute(source, store_history=False, stop_on_error=False, silent=True)
            await self.async_wait_for_reply(msg_id, self.nb.cells[index])


