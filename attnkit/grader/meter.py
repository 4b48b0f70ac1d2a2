"""What the student's kernel costs, read from outside it (/proc): CPU time and peak memory.

Grader process only. Timing and memory verdicts must not rest on numbers the student's process
reports about itself, so the grader reads the kernel's processes from /proc:

* which processes: every process of the kernel's uid where it has one of its own (root's sandbox slot uid,
  which only this notebook's kernel and its children hold; attnkit/sandbox/slots.py), else the kernel's process
  tree (an unprivileged grader's kernel keeps the grader's uid, which all that user's processes share);
* CPU: each process's CPU-time clock, read from outside (clock_gettime on the process's clock id:
  every thread, ended ones too, to the nanosecond; /proc/<pid>/schedstat lags a running thread by up
  to a scheduler tick), plus the CPU time of children they reaped (/proc/<pid>/stat cutime + cstime,
  in clock ticks);
* memory: the sum of their peak resident sets (VmHWM), which ``reset_peak`` sets back to the current
  resident set (writing 5 to /proc/<pid>/clear_refs), so a peak is that of one call.

Where the kernel has a cgroup of its own (attnkit/sandbox/limits.py: KernelCgroup), ``CgroupMeter`` reads it
instead: the cgroup's CPU time (v1 cpuacct.usage, v2 cpu.stat usage_usec) and peak memory (v1
memory.max_usage_in_bytes, v2 memory.peak), reset before each measured call. A cgroup counts every process
that was ever in it, so a child that exits, stays unreaped or is reparented still counts.

Without one, ``KernelMeter`` reads /proc; it cannot see a child process that ended unreaped or left the
uid, nor an ended child's peak memory. So on this path the kernel starts no process at all: it loads a
second syscall filter before any cell runs (attnkit.sandbox.seccomp.NO_PROCESSES; threads stay, and a thread's CPU
time and memory are its process's), and the meter checks from outside that it is in force (``sealed``).
Where it is not (no libseccomp), the meter counts the processes and threads started during a measured
call (``forks``: the host's fork count, which every process on the host moves) and a measurement during
which one started is a failed one (grader/growth.py retries it, then fails the test saying why): on this
path a fork is never free, and on a busy host a measurement may fail for another process's fork.
"""
from __future__ import annotations

import contextlib
import os
import time

from attnkit.procs import children

_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _started(pids) -> dict[int, int]:
    """pid -> when it started (clock ticks since boot), for those of ``pids`` still running."""
    out = {}
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            with contextlib.suppress(IndexError, ValueError):
                out[pid] = int(stat.rsplit(")", 1)[1].split()[19])
    return out


class KernelMeter:
    """Reads one kernel's processes: by ``uid`` (sandboxed) or as the tree under ``root_pid``."""

    def __init__(self, uid: int | None = None, root_pid: int | None = None, watch_forks: bool = True,
                 sealed_filters: int = 0, launchers: frozenset = frozenset()):
        """``launchers``: as CgroupMeter's (the tree under ``root_pid`` starts with bubblewrap's two processes)."""
        if uid is None and root_pid is None:
            raise ValueError("a uid or a process to measure")
        self.uid, self.root_pid, self.watch_forks = uid, root_pid, watch_forks
        self.sealed_filters, self._sealed, self.launchers = sealed_filters, False, frozenset(launchers)

    def pids(self) -> list[int]:
        if self.uid is not None:
            found = []
            for name in os.listdir("/proc"):
                if name.isdigit():
                    status = _read(f"/proc/{name}/status")
                    line = next((ln for ln in (status or "").splitlines() if ln.startswith("Uid:")), "")
                    if line.split()[1:2] == [str(self.uid)]:
                        found.append(int(name))
            return found
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):  # gone
                todo += children(pid)
        return found

    def procs(self) -> dict[int, int]:
        """The kernel's processes now: pid -> when it started."""
        return _started(self.pids())

    def cpu_ns(self, pids=None) -> float:
        """CPU time of the kernel's processes so far, in nanoseconds."""
        total = 0.0
        for pid in self.pids() if pids is None else pids:
            try:  # the process's CPU clock, read from outside: every thread, also ended ones, to the ns
                total += time.clock_gettime_ns(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
            except OSError:
                continue
            stat = _read(f"/proc/{pid}/stat")
            if stat:
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[13]) + int(fields[14])) * _TICK_NS  # children it reaped: cutime + cstime
        return total

    def _status(self, pid: int, key: str) -> int:
        for line in (_read(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak(self) -> int:
        """Peaks back to the current resident sets; returns their sum (bytes)."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            total += self._status(pid, "VmRSS")
        return total

    def peak_bytes(self) -> int:
        """The sum of the processes' peak resident sets since the last ``reset_peak``."""
        return sum(self._status(pid, "VmHWM") for pid in self.pids())

    # -- processes started during a measured call (this meter cannot count what they do)
    counts_children = False

    def forks(self) -> int | None:
        """A number that grows with every process or thread the kernel starts: the host's fork count (which
        other processes move too: a false alarm fails a measurement, never passes one; a PID namespace's own
        last PID cannot be read from outside it, /proc/sys answers for the reader's namespace). None: not
        watched: the kernel can start no process (``sealed``), or a meter of the grader's own process (unit
        tests and benchmarks: no student code forks there)."""
        if not self.watch_forks or self.sealed():
            return None
        for line in (_read("/proc/stat") or "").splitlines():
            if line.startswith("processes "):
                return int(line.split()[1])
        return None

    def sealed(self) -> bool:
        """Does the kernel run under the filter that refuses new processes (attnkit.sandbox.seccomp.NO_PROCESSES)?
        Then it can start threads only, whose CPU time and memory are its own process's: nothing to watch.
        Read from /proc (the kernel's own count of a process's filters, which no process can lower): a
        process of the kernel under ``sealed_filters`` filters or more, loaded before any cell ran."""
        if self.sealed_filters and not self._sealed:
            for pid in self.pids():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        line = next((ln for ln in f if ln.startswith("Seccomp_filters:")), "")
                except OSError:
                    continue
                if line.split()[1:2] and int(line.split()[1]) >= self.sealed_filters:
                    self._sealed = True
                    break
        return self._sealed


class CgroupMeter:
    """Reads one kernel's cgroup (sandbox.KernelCgroup): every process that was ever in it counts.

    ``cpu`` is the folder with cpuacct.usage (v1) or cpu.stat (v2); ``memory`` the one with
    memory.max_usage_in_bytes (v1) or memory.peak (v2), or None where the peak cannot be reset."""

    counts_children = True

    def __init__(self, kind: str, cpu: str | None, memory: str | None, launchers: frozenset = frozenset()):
        """``launchers``: pids of the kit's own processes in the cgroup that started the kernel and live as long
        as it (a cold kernel's bubblewrap: CourseKernelManager.launchers); a memory reading need not wait for
        them to exit (growth.Measured._settle)."""
        self.kind, self.cpu, self.memory, self.launchers = kind, cpu, memory, frozenset(launchers)

    @classmethod
    def of(cls, cgroup, launchers: frozenset = frozenset()) -> "CgroupMeter | None":
        """The meter of a KernelCgroup, or None where its CPU time or its peak cannot be read and reset."""
        if cgroup is None:
            return None
        if cgroup.kind == "v1":
            cpu = cgroup.cpu_path if cgroup.cpu_path and _read(os.path.join(cgroup.cpu_path, "cpuacct.usage")) else None
            memory = cgroup.path if _read(os.path.join(cgroup.path, "memory.max_usage_in_bytes")) else None
        else:
            cpu = cgroup.path if _read(os.path.join(cgroup.path, "cpu.stat")) else None
            memory = cgroup.path
            try:  # a reset peak needs Linux 6.12 or later: a write resets the peak read through that open file
                fd = os.open(os.path.join(cgroup.path, "memory.peak"), os.O_RDWR)
                os.write(fd, b"reset")
            except OSError:
                memory = None
        if cpu is None or memory is None:
            return None
        self = cls(cgroup.kind, cpu, memory, launchers)
        if cgroup.kind == "v2":
            self._peak_fd = fd
        return self

    _peak_fd = None

    def __del__(self):
        if self._peak_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._peak_fd)

    def pids(self) -> list[int]:
        return []  # (growth.Timer's lookups: a cgroup needs none)

    def procs(self) -> dict[int, int]:
        """The processes in the kernel's cgroup now (exited ones have left it): pid -> when it started."""
        return _started(int(p) for p in (_read(os.path.join(self.memory, "cgroup.procs")) or "").split())

    def cpu_ns(self, pids=None) -> float:
        """CPU time of every process that was ever in the cgroup, in nanoseconds."""
        if self.kind == "v1":
            return float(int(_read(os.path.join(self.cpu, "cpuacct.usage")) or 0))
        for line in (_read(os.path.join(self.cpu, "cpu.stat")) or "").splitlines():
            if line.startswith("usage_usec "):
                return float(int(line.split()[1]) * 1000)
        return 0.0

    def _usage(self) -> int:
        name = "memory.usage_in_bytes" if self.kind == "v1" else "memory.current"
        return int((_read(os.path.join(self.memory, name)) or "0").strip() or 0)

    def reset_peak(self) -> int:
        """The cgroup's peak back to its current usage; returns that usage (bytes)."""
        if self.kind == "v1":
            with open(os.path.join(self.memory, "memory.max_usage_in_bytes"), "w") as f:
                f.write("0")
        else:
            os.write(self._peak_fd, b"reset")
        return self._usage()

    def peak_bytes(self) -> int:
        """The cgroup's peak memory since the last ``reset_peak`` (every process, exited ones too)."""
        if self.kind == "v1":
            return int((_read(os.path.join(self.memory, "memory.max_usage_in_bytes")) or "0").strip() or 0)
        text = os.pread(self._peak_fd, 64, 0).decode(errors="replace").split()
        return int(text[0]) if text and text[0].isdigit() else 0

    def forks(self) -> None:
        return None  # everything is counted: nothing to watch
