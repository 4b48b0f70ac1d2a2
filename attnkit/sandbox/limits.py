"""Memory cgroups, their meters and small tmpfs mounts: what bounds a kernel beyond its rlimits."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from functools import lru_cache


@dataclass(frozen=True)
class KernelLimits:
    """A kernel's resource limits, declared once: the defaults of CourseKernelManager's traits of the same names
    (c.CourseKernelManager.memory_limit_mb = ... in the course config), and what the limits line reports."""
    memory_limit_mb: int = 4096   # RLIMIT_DATA of every kernel process, MiB; 0 = none
    cgroup_memory_mb: int = 0     # each kernel's memory cgroup, MiB; 0 = memory_limit_mb + 1024
    max_processes: int = 256      # RLIMIT_NPROC of the sandbox uid; pids.max of each kernel's cgroup
    max_file_mb: int = 256        # RLIMIT_FSIZE, MiB
    scratch_mb: int = 256         # the kernel's writable working folder (tmpfs), MiB
    cpu_seconds: int = 900        # RLIMIT_CPU of each kernel process, on top of the per-cell timeout

    @classmethod
    def configured(cls, config) -> KernelLimits:
        """The limits a course config sets (c.CourseKernelManager.*), these defaults for the rest."""
        kernels = config.CourseKernelManager if "CourseKernelManager" in config else {}
        return cls(**{f.name: kernels.get(f.name, f.default) for f in fields(cls)})


LIMITS = KernelLimits()

# Where no memory cgroup bounds a kernel (Gradescope's container, an ordinary user's host), the whole machine's
# out-of-memory killer decides who dies: always a kernel process, never the grader of this or another student.
OOM_SCORE_ADJ = 1000


def killed_first(argv: list[str]) -> list[str]:
    """``argv`` started as the out-of-memory killer's first choice, it and every process it starts. A notebook
    can lower its own value back to the graders' 0 (where the killer picks the largest process, as before),
    never below it (that needs CAP_SYS_RESOURCE): it can never make a grader the first choice."""
    return ["/bin/sh", "-c", f'{{ echo {OOM_SCORE_ADJ} > /proc/self/oom_score_adj; }} 2>/dev/null; exec "$@"',
            "sh", *argv]


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


def memory_limit_mb(cgroup_root: str = CGROUP_V2, proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """The memory limit this process lives under, in MB: the least of its cgroup's and every ancestor's (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``; a container sees its own cgroup at the root). None where none is set
    or none can be read."""
    try:
        with open(proc_cgroup, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        if line.count(":") < 2:  # (not a cgroup line: read past, as a caller must go on whatever it finds)
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(cgroup_root, os.path.basename(CGROUP_V1)), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts) + 1):
            try:
                with open(os.path.join(base, *parts[:depth], name), errors="replace") as f:
                    text = f.read(64).strip()
            except (OSError, ValueError):  # (ValueError: a path with a NUL)
                continue
            if text.isdigit() and int(text) < 1 << 60:  # (v1 says "no limit" with a number near 2^63)
                limits.append(int(text))
    return min(limits) >> 20 if limits else None


def memory_mb() -> tuple[int | None, str]:
    """(MB, where from): the least of the memory limit this process lives under (``memory_limit_mb``: a container's)
    and the machine's memory; (None, "") where neither can be read."""
    found = []
    limit = memory_limit_mb()
    if limit is not None:
        found.append((limit, "the memory limit of the cgroup this runs in"))
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        total = next(int(l.split()[1]) >> 10 for l in f if l.startswith("MemTotal:"))
        found.append((total, "this machine's memory"))
    return min(found) if found else (None, "")


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


# scratch in the temp dir, each named attnkit-<kind>-<pid of the process that made it>-...: removed with it, or,
# where that process was killed, by the next sweep
SCRATCH = ("attnkit-run-", "attnkit-runs-", "attnkit-kernel-", "attnkit-warm-", "attnkit-worker-")


def _maker_gone(name: str) -> bool:
    parts = name.split("-")  # attnkit, kind, pid, mkdtemp's suffix (which has no "-")
    return name.startswith(SCRATCH) and len(parts) >= 4 and parts[2].isdigit() and not os.path.exists(f"/proc/{parts[2]}")


def sweep() -> None:
    """What grading processes that were killed (a time limit, a crash) left: their kernels' cgroups, the tmpfs
    mounts of their run folders, and their scratch in the temp dir (named after the process that made it; only
    this user's)."""
    kind, parent = memory_cgroups()
    if kind is not None:
        _sweep(parent)
    tmp = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in points:
            if os.path.dirname(point) == tmp and _maker_gone(os.path.basename(point)):
                remove_dir(point)
    with contextlib.suppress(OSError):
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            with contextlib.suppress(OSError):
                if not _maker_gone(name) or os.lstat(path).st_uid != os.geteuid() or os.path.ismount(path):
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)


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


def describe_limits(mode: str, memory_mb: int = LIMITS.memory_limit_mb, cgroup_mb: int = LIMITS.cgroup_memory_mb,
                    pids: int = LIMITS.max_processes) -> str:
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
